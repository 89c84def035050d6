import math
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from radlab.config import parse_experiment
from radlab.data.dataset import split_examples
from radlab.evaluation.retrieval import evaluate_retrieval
from radlab.model.checkpoint import load_checkpoint
from radlab.model.encoder import build_encoder, load_encoder
from radlab.train.contrastive import clip_loss, siglip_loss
from radlab.train.stages import StageJob, run_stage

from ..conftest import experiment_dict, free_port


def test_clip_loss_matches_a_hand_computed_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(math.log(2.0))             # logits = 2 x cosine
    # image 0: logits (2, 1.2) target 0; image 1: (0, 1.6) target 1; texts: (2, 0) and (1.2, 1.6).
    ce = lambda logits, target: -logits[target] + math.log(sum(math.exp(v) for v in logits))  # noqa: E731
    expected = (ce([2, 1.2], 0) + ce([0, 1.6], 1) + ce([2, 0], 0) + ce([1.2, 1.6], 1)) / 4
    assert abs(float(clip_loss(images, texts, scale)) - expected) < 1e-6


def test_siglip_loss_matches_a_hand_computed_case():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale, bias = torch.tensor(0.0), torch.tensor(-1.0)        # logits = cosine - 1
    log_sig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    pairs = [(1 - 1, 1), (0.6 - 1, -1), (0 - 1, -1), (0.8 - 1, 1)]
    expected = -sum(log_sig(sign * z) for z, sign in pairs) / 2
    assert abs(float(siglip_loss(images, texts, scale, bias)) - expected) < 1e-6


def _features(weights, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
    w_img, w_txt, scale, bias = weights
    return (torch.nn.functional.normalize(x @ w_img, dim=-1), torch.nn.functional.normalize(y @ w_txt, dim=-1),
            scale, bias)


def _weights():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 4, generator=g).requires_grad_(), torch.randn(5, 4, generator=g).requires_grad_(),
            torch.tensor(2.0, requires_grad=True), torch.tensor(-3.0, requires_grad=True)]


def _loss(kind, images, texts, scale, bias):
    return clip_loss(images, texts, scale) if kind == "clip" else siglip_loss(images, texts, scale, bias)


def _worker(rank, port, kind, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    weights = _weights()
    images, texts, scale, bias = _features(weights, seed=0)
    half = slice(4 * rank, 4 * rank + 4)   # this worker's share of the batch of 8
    loss = _loss(kind, images[half], texts[half], scale, bias)
    loss.backward()
    grads = []
    for w in weights:                      # what DDP does: average the gradients across workers
        grad = w.grad if w.grad is not None else torch.zeros_like(w)
        dist.all_reduce(grad)
        grads.append(grad / 2)
    total = loss.detach().clone()
    dist.all_reduce(total)
    torch.save((float(total) / 2, grads), Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_batches_across_workers_equal_one_big_batch(tmp_path):
    for kind in ("clip", "siglip"):
        weights = _weights()
        loss = _loss(kind, *_features(weights, seed=0))
        loss.backward()
        # Results come back as files: no multiprocessing Manager, which would fork this
        # many-threaded (Ray) process.
        out_dir = tmp_path / kind
        out_dir.mkdir()
        mp.spawn(_worker, args=(free_port(), kind, str(out_dir)), nprocs=2)
        for rank in (0, 1):
            distributed_loss, grads = torch.load(out_dir / f"rank{rank}.pt")
            assert abs(distributed_loss - loss.item()) < 1e-5, kind
            for grad, w in zip(grads, weights):
                expected = w.grad if w.grad is not None else torch.zeros_like(w)
                assert torch.allclose(grad, expected, atol=1e-5), kind


def test_a_tiny_stage0_on_ray_improves_retrieval_and_feeds_stage1(ray_session, synthetic_root, tmp_path,
                                                                  tokenizer_files):
    raw = experiment_dict(synthetic_root, tmp_path, model={"vision": {"frozen": True}},
                          stage0={"enabled": True, "max_steps": 120, "lr": 1e-3, "batch": 32, "checkpoint_every": 60,
                                  "log_every": 20, "warmup_ratio": 0.0, "weight_decay": 0.0})
    experiment = parse_experiment(raw, "t")
    encoder_ckpt = run_stage(StageJob(experiment, "stage0", tokenizer_files)).checkpoint
    with encoder_ckpt.as_directory() as folder:
        trained = load_encoder(folder)
    assert trained.meta["step"] == 120 and trained.meta["final"]
    examples = split_examples(experiment.data, "train")
    torch.manual_seed(0)
    untrained = build_encoder(experiment.model, experiment.stage0, trained.tokenizer)
    before = evaluate_retrieval(untrained, examples, trained.tokenizer, trained.transform, 96)
    after = evaluate_retrieval(trained.encoder, examples, trained.tokenizer, trained.transform, 96)
    for key in ("retrieval/i2t_R1", "retrieval/i2t_R5", "retrieval/label_i2t_R1"):
        assert after[key] > before[key] + 0.1, (key, before[key], after[key])
    # Stage 1 starts from the stage 0 tower; frozen, it comes out of stage 1 unchanged.
    report = run_stage(StageJob(experiment, "stage1", tokenizer_files, vision_from=encoder_ckpt)).checkpoint
    with report.as_directory() as folder:
        tower = load_checkpoint(folder).model.model.vision_tower.state_dict()
    for key, value in trained.encoder.clip.vision_model.state_dict().items():
        assert torch.equal(tower[key], value), key
