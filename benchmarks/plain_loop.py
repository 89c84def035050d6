"""The plain PyTorch loop radlab's training is measured against: one process, the parts radlab
trains (the tower too where the model leaves it unfrozen), AdamW with the stage's cosine schedule
after warmup and gradients clipped to norm 1, the forward under bf16 autocast where the experiment
trains in bf16, and in each step the examples radlab's workers draw
for the experiment's seed, collated as one batch; and stage 0's contrastive loop (`train_contrastive`)."""

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
    bf16 = experiment.ray.precision == "bf16"
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        if index == timed_from:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**{k: batch[k] for k in INPUTS}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return (stage.max_steps - timed_from) * stage.global_batch / (time.perf_counter() - started)


def train_contrastive(experiment, tokenizer, batch: int, steps: int, timed_from: int) -> float:
    """Stage 0's plain loop: the dual encoder radlab builds, the parts stage 0 trains, CLIP's loss on
    one process, AdamW with CLIP's weight decay groups and the stage's cosine schedule, gradients
    clipped to norm 1, the temperature clamped; each step's pairs decoded and collated in the loop,
    as radlab's stage 0 does. Returns pairs/s over the steps from the `timed_from`-th."""
    from functools import partial
    from math import log

    from torch.utils.data import DataLoader

    from radlab.data.dataset import split_examples
    from radlab.data.pairs import PairDataset, collate_pairs
    from radlab.model.encoder import build_encoder, set_encoder_trainable
    from radlab.train.contrastive import clip_loss

    s0 = experiment.stage0
    torch.manual_seed(experiment.seed)
    model = build_encoder(experiment.model, s0, tokenizer)
    set_encoder_trainable(model, s0)
    dataset = PairDataset(split_examples(experiment.data, "train"), tokenizer,
                          image_transform(experiment.model.vision), s0.text.max_length)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=partial(collate_pairs, pad_id=tokenizer.pad_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": s0.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=s0.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(s0.warmup_ratio * steps), steps)
    model.train()
    step, started = 0, time.perf_counter()
    while step < steps:
        for pairs in loader:
            if step == timed_from:
                started = time.perf_counter()
            images, texts = model(pairs["pixel_values"], pairs["input_ids"], pairs["attention_mask"])
            clip_loss(images, texts, model.clip.logit_scale).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, log(100))
            step += 1
            if step == steps:
                break
    return (steps - timed_from) * batch / (time.perf_counter() - started)
