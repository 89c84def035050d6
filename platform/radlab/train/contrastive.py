"""Stage 0: contrastive image-report training of the dual encoder, as a kind of stage of the recipe.

The contrastive batch spans the workers: each worker embeds its share, the embeddings are
all-gathered with gradients, and each worker scores its own images and reports against the whole
batch. With DDP averaging the gradients, the result equals one big batch on one device.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from radlab.config import Stage0Config
from radlab.data.dataset import split_examples
from radlab.data.pairs import PairDataset, collate_pairs
from radlab.evaluation.retrieval import evaluate_retrieval
from radlab.model.encoder import build_encoder, load_encoder, save_encoder, set_encoder_trainable
from radlab.model.towers import image_transform
from radlab.train.recipe import Plan, StageKind, Step, Window, distributed, min_across


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every worker's rows, with gradients flowing back to their owners; and where ours start."""
    if not distributed():
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


class ContrastiveStage(StageKind):
    """Stage 0: the image and text towers (or the parts `stage0.train` names) learn to match images
    with their reports. Trains in fp32 with AdamW, whatever the run's precision and DeepSpeed."""

    truncated_metric = "truncated_reports"
    mixed_precision = False

    @staticmethod
    def plan_for(s0: Stage0Config, examples: int) -> Plan:
        return Plan.of(s0.epochs, s0.max_steps, examples // s0.batch, 1)

    @property
    def config(self) -> Stage0Config:
        return self.experiment.stage0

    def setup(self, resume: Path | None) -> None:
        if resume is not None:
            loaded = load_encoder(resume)
            self.model, self.tokenizer = loaded.encoder, loaded.tokenizer
        else:
            self.tokenizer = self.job.tokenizer.load()
            self.model = build_encoder(self.experiment.model, self.config, self.tokenizer)
        trainable = set_encoder_trainable(self.model, self.config)
        if self.rank == 0:
            print(f"[stage0] training {trainable:,} parameters; contrastive batch {self.config.batch} "
                  f"= {self.world} workers x {self.config.batch // self.world}", flush=True)

    def data(self) -> None:
        s0 = self.config
        self.transform = image_transform(self.experiment.model.vision)
        dataset = PairDataset(split_examples(self.experiment.data, "train"), self.tokenizer, self.transform,
                              s0.text.max_length)
        size = min_across(len(dataset), self.device)
        if size < s0.batch:
            raise ValueError(f"stage0.batch {s0.batch} exceeds the {size} training pairs")
        dataset.examples = dataset.examples[:size]
        self.plan = self.plan_for(s0, size)
        self.sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=self.experiment.seed, drop_last=True)
        self.loader = DataLoader(dataset, batch_size=s0.batch // self.world, sampler=self.sampler, drop_last=True,
                                 collate_fn=partial(collate_pairs, pad_id=self.tokenizer.pad_token_id))
        self.val = split_examples(self.experiment.data, "val") if self.rank == 0 else []
        self.contrastive_batch = 0  # the last batch's, after trimming to the smallest worker's share

    def epoch_batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return self.loader

    def parameter_groups(self) -> list[dict]:
        # As CLIP: no weight decay on gains, biases, embeddings' scalars and the temperature.
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": self.config.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]

    def loss(self, module, batch: dict) -> Step | None:
        # Unreadable images shrink a batch; every worker trims to the smallest so the gather lines up.
        keep = min_across(len(batch.get("input_ids", [])), self.device)
        if keep < 2:
            return None
        self.contrastive_batch = keep * self.world
        images, texts = module(*[batch[k][:keep].to(self.device) for k in ("pixel_values", "input_ids",
                                                                           "attention_mask")])
        scale = self.model.clip.logit_scale
        loss = clip_loss(images, texts, scale) if self.config.loss == "clip" else \
            siglip_loss(images, texts, scale, self.model.logit_bias)
        return Step(loss, keep)

    def after_step(self) -> None:
        with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 destabilises training
            self.model.clip.logit_scale.clamp_(0, math.log(100))

    def validates(self, step: int, final: bool, checkpointing: bool) -> bool:
        return final or step % self.plan.steps_per_epoch == 0  # retrieval at each epoch's end

    def validate(self, autocast) -> dict[str, float]:
        self.model.eval()
        found = evaluate_retrieval(self.model, self.val, self.tokenizer, self.transform, self.config.text.max_length)
        return {f"val/{k}": v for k, v in found.items()}

    def metrics(self, window: Window, elapsed: float, wall_rate: float) -> dict[str, float]:
        return {"temperature": self.model.temperature, "pairs_per_s": window.examples / elapsed,
                "contrastive_batch": self.contrastive_batch}

    def line(self, step: int, metrics: dict) -> str:
        recall = metrics.get("val/retrieval/i2t_R1")
        return (f"loss {metrics['loss']:.4f} temperature {metrics['temperature']:.4f} "
                f"{metrics['pairs_per_s']:.0f} pairs/s" + (f" val i2t R1 {recall:.3f}" if recall is not None else ""))

    def save(self, folder: Path, final: bool, step: int, train_state: dict) -> None:
        save_encoder(folder, self.model, self.tokenizer, self.experiment.model, self.config,
                     {"stage": "stage0", "step": step, "final": final}, train_state)
