"""The plain PyTorch loop radlab's training is measured against: one process, the parts radlab
trains (the tower too where the model leaves it unfrozen), AdamW with the stage's cosine schedule
after warmup and gradients clipped to norm 1, and in each step the examples radlab's workers draw
for the experiment's seed, collated as one batch."""

from __future__ import annotations

import time
from itertools import islice

import torch
from torch.utils.data import DistributedSampler
from transformers import get_cosine_schedule_with_warmup

from radlab.data.dataset import stage_dataset
from radlab.formats.batch import collate
from radlab.model.build import set_trainable
from radlab.model.towers import image_transform

INPUTS = ("input_ids", "attention_mask", "pixel_values", "labels")


def step_batches(dataset, global_batch: int, world: int, seed: int, pad_id: int):
    """Each optimizer step's examples as `world` radlab workers draw them (each rank's
    DistributedSampler, epoch after epoch), collated as one batch."""
    per_rank = global_batch // world
    epoch = 0
    while True:
        orders = []
        for rank in range(world):
            sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                         drop_last=True)
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        for start in range(0, len(orders[0]) - per_rank + 1, per_rank):
            yield collate([dataset[i] for order in orders for i in order[start:start + per_rank]], pad_id)
        epoch += 1


def train_stage(model, experiment, stage_name: str, tokenizer, prepared: bool = False, timed_from: int = 1) -> float:
    """Train `model` through the experiment's stage; with `prepared`, every batch is decoded and
    collated before the first step. Returns samples/s over the steps from the `timed_from`-th
    (counted from 0; the steps before warm the loop up)."""
    stage = getattr(experiment, stage_name)
    set_trainable(model, stage.train + ([] if experiment.model.vision.frozen else ["vision"]))
    dataset = stage_dataset(experiment, tokenizer, "train", stage.template, image_transform(experiment.model.vision))
    batches = islice(step_batches(dataset, stage.global_batch, experiment.ray.workers, experiment.seed,
                                  tokenizer.pad_token_id), stage.max_steps)
    if prepared:
        batches = list(batches)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(stage.warmup_ratio * stage.max_steps), stage.max_steps)
    model.train()
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        if index == timed_from:
            started = time.perf_counter()
        model(**{k: batch[k] for k in INPUTS}).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return (stage.max_steps - timed_from) * stage.global_batch / (time.perf_counter() - started)
