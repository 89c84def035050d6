"""Stage 0: contrastive image-report training of the dual encoder on Ray Train.

The contrastive batch spans the workers: each worker embeds its share, the embeddings are
all-gathered with gradients, and each worker scores its own images and reports against the whole
batch. With DDP averaging the gradients, the result equals one big batch on one device.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from transformers import get_cosine_schedule_with_warmup

from radlab.config import Experiment
from radlab.data.dataset import split_examples
from radlab.data.pairs import PairDataset, collate_pairs
from radlab.evaluation.retrieval import evaluate_retrieval
from radlab.formats.tokenizer import load_tokenizer
from radlab.model.checkpoint import load_train_state
from radlab.model.encoder import build_encoder, load_encoder, save_encoder, set_encoder_trainable
from radlab.train.loop import RankCounts, StepLog, report_with_checkpoint, resume_folder, use_worker_cpus


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every worker's rows, with gradients flowing back to their owners; and where ours start."""
    if not _distributed():
        return x, 0
    from torch.distributed._functional_collectives import all_gather_tensor_autograd, wait_tensor

    gathered = wait_tensor(all_gather_tensor_autograd(x.contiguous(), gather_dim=0, group=dist.group.WORLD))
    return gathered, dist.get_rank() * len(x)


def clip_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE both ways (CLIP): this worker's images against all reports, its reports against all images."""
    all_images, offset = gather(images)
    all_texts, _ = gather(texts)
    scale = logit_scale.exp()
    targets = torch.arange(len(images), device=images.device) + offset
    return (F.cross_entropy(scale * images @ all_texts.T, targets)
            + F.cross_entropy(scale * texts @ all_images.T, targets)) / 2


def siglip_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: a binary match / no-match decision for every image-report pair, summed per image."""
    all_texts, offset = gather(texts)
    logits = logit_scale.exp() * images @ all_texts.T + logit_bias
    signs = -torch.ones_like(logits)
    signs[torch.arange(len(images)), torch.arange(len(images)) + offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / len(images)


def _mean_across(value: float) -> float:
    if not _distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


def _min_across(value: int) -> int:
    if not _distributed():
        return value
    tensor = torch.tensor([value])
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor)


def train_encoder(config: dict) -> None:
    """Ray Train entry point of stage 0; `config` as for `radlab.train.loop.train_stage`."""
    experiment = Experiment.model_validate(config["experiment"])
    s0, vision = experiment.stage0, experiment.model.vision
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(experiment.data.synthetic.seed if experiment.data.synthetic else 0)
    use_worker_cpus(experiment)
    device = ray.train.torch.get_device()

    state = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as folder:
            folder = resume_folder(Path(folder))
            loaded = load_encoder(folder)
            encoder, tokenizer, state = loaded.encoder, loaded.tokenizer, load_train_state(folder)
    else:
        tokenizer = load_tokenizer(config["tokenizer"])
        encoder = build_encoder(experiment.model, s0, tokenizer)
    trainable_count = set_encoder_trainable(encoder, s0)
    if rank == 0:
        print(f"[stage0] training {trainable_count:,} parameters; contrastive batch {s0.batch} "
              f"= {world} workers x {s0.batch // world}", flush=True)
    dataset = PairDataset(split_examples(experiment.data, "train"), tokenizer, vision.image_size, s0.text.max_length)
    per_worker = s0.batch // world
    size = _min_across(len(dataset))
    if size < s0.batch:
        raise ValueError(f"stage0.batch {s0.batch} exceeds the {size} training pairs")
    dataset.examples = dataset.examples[:size]
    steps_per_epoch = max(1, size // s0.batch)
    total_steps = s0.max_steps or max(1, math.ceil(s0.epochs * steps_per_epoch))
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=True)
    loader = DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=True,
                        collate_fn=partial(collate_pairs, pad_id=tokenizer.pad_token_id))
    encoder.to(device)
    model = ray.train.torch.prepare_model(encoder, move_to_device=False)
    params = [p for p in encoder.parameters() if p.requires_grad]
    # As CLIP: no weight decay on gains, biases, embeddings' scalars and the temperature.
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": s0.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=s0.lr)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(s0.warmup_ratio * total_steps), total_steps)
    step, pairs, resumed_from = 0, 0, []
    counts = RankCounts(("skipped", "truncated"), state, device)
    totals = counts.start
    if state is not None:
        step, pairs = state["step"], state["pairs"]
        resumed_from = state["resumed_from"] + [step]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if rank == 0:
            print(f"[stage0] resuming at step {step}/{total_steps}", flush=True)
    step_log = StepLog(config, rank)
    if state is not None:  # a restart (or a rerun) is reported, not absorbed: the driver shows it
        step_log.resumed(step, world)
    val = split_examples(experiment.data, "val") if rank == 0 else []

    def save(folder: Path, final: bool) -> None:
        train_state = {"step": step, "pairs": pairs, "resumed_from": resumed_from, **totals,
                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        save_encoder(folder, encoder, tokenizer, experiment.model, s0, {"stage": "stage0", "step": step, "final": final},
                     train_state)

    window_loss, window_batches, window_pairs, window_start = 0.0, 0, 0, time.perf_counter()
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        model.train()
        for index, batch in enumerate(loader):
            if index < done_in_epoch:
                continue  # trained on before the restart
            if index >= steps_per_epoch:
                break
            counts.add(batch)
            # Unreadable images shrink a batch; every worker trims to the smallest so the gather lines up.
            keep = _min_across(len(batch.get("input_ids", [])))
            if keep < 2:
                continue
            inputs = [batch[k][:keep].to(device) for k in ("pixel_values", "input_ids", "attention_mask")]
            images, texts = model(*inputs)
            if s0.loss == "clip":
                loss = clip_loss(images, texts, encoder.clip.logit_scale)
            else:
                loss = siglip_loss(images, texts, encoder.clip.logit_scale, encoder.logit_bias)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
                encoder.clip.logit_scale.clamp_(0, math.log(100))
            step += 1
            pairs += keep * world
            window_loss += loss.item()
            window_batches += 1
            window_pairs += keep * world
            final = step >= total_steps
            epoch_end = step % steps_per_epoch == 0
            if step % s0.log_every == 0 or final or epoch_end or step % s0.checkpoint_every == 0:
                elapsed = time.perf_counter() - window_start
                totals = counts.totals()
                metrics = {"loss": _mean_across(window_loss / max(1, window_batches)),
                           "temperature": encoder.temperature, "lr": optimizer.param_groups[0]["lr"],
                           "pairs_per_s": window_pairs / elapsed, "contrastive_batch": keep * world,
                           "skipped_images": totals["skipped"], "truncated_reports": totals["truncated"], "step": step,
                           "epoch": step / steps_per_epoch}
                if rank == 0 and (epoch_end or final):
                    encoder.eval()
                    metrics |= {f"val/{k}": v for k, v in evaluate_retrieval(
                        encoder, val, tokenizer, vision.image_size, s0.text.max_length).items()}
                    encoder.train()
                step_log.log(metrics, step)
                if rank == 0:
                    recall = metrics.get("val/retrieval/i2t_R1")
                    print(f"[stage0] step {step}/{total_steps} loss {metrics['loss']:.4f} temperature "
                          f"{metrics['temperature']:.4f} {metrics['pairs_per_s']:.0f} pairs/s"
                          + (f" val i2t R1 {recall:.3f}" if recall is not None else ""), flush=True)
                if final or step % s0.checkpoint_every == 0:
                    report_with_checkpoint(rank, metrics, partial(save, final=final))
                window_loss, window_batches, window_pairs, window_start = 0.0, 0, 0, time.perf_counter()
            if final:
                break
    step_log.close()
