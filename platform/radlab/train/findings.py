"""Stages 1 and 2: the projector (stage 1) and then LoRA or the whole language model (stage 2) learn
to write the findings, as a kind of stage of the recipe.

A stage begins from the previous stage's model, a fresh build, or a fresh build on a stage 0
encoder's image tower. Every checkpoint but the stage's last is a resume point holding only what
trains; a resumed stage rebuilds the frozen rest as the stage began and lays the trained weights
over it. DDP or DeepSpeed, in the run's precision.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import ray.train
import torch
from torch.utils.data import DataLoader, DistributedSampler

from radlab.config import StageConfig
from radlab.data.dataset import stage_dataset
from radlab.data.image_pipeline import streamed_batches
from radlab.formats.batch import collate
from radlab.model.build import apply_lora, build_model, count_parameters, set_trainable
from radlab.model.checkpoint import is_resume_point, load_checkpoint, load_trainable, save_checkpoint
from radlab.model.towers import image_transform
from radlab.train.recipe import Plan, StageKind, Step, Window, min_across

INPUTS = ("input_ids", "attention_mask", "pixel_values", "labels")


class FindingsStage(StageKind):
    """Stage 1 or 2 of the report model."""

    truncated_metric = "truncated_targets"

    @staticmethod
    def plan_for(stage: StageConfig, examples: int, world: int) -> Plan:
        accumulation = max(1, stage.global_batch // (stage.micro_batch * world))
        return Plan.of(stage.epochs, stage.max_steps, math.ceil(math.ceil(examples / world) / stage.micro_batch),
                       accumulation)

    @property
    def config(self) -> StageConfig:
        return getattr(self.experiment, self.name)

    def setup(self, resume: Path | None) -> None:
        if resume is None:
            self.model, self.tokenizer = self._stage_start()
        elif is_resume_point(resume):
            self.model, self.tokenizer = self._stage_start()
            load_trainable(self.model, resume)
        else:  # a stage's final checkpoint
            loaded = load_checkpoint(resume)
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
        set_trainable(self.model, self.config.train + ([] if self.experiment.model.vision.frozen else ["vision"]))
        if self.rank == 0:
            total, trainable = count_parameters(self.model)
            print(f"[{self.name}] training {trainable:,} of {total:,} parameters", flush=True)
        if self.config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            self.model.enable_input_require_grads()

    def _stage_start(self):
        """(model, tokenizer) the stage begins from: the previous stage's model or a fresh build."""
        job, experiment, lora = self.job, self.experiment, self.config.lora
        if job.init_from is not None:
            with job.init_from.as_directory() as folder:
                loaded = load_checkpoint(Path(folder), expect=experiment.model)
            model = apply_lora(loaded.model, lora) if lora and loaded.lora is None else loaded.model
            return model, loaded.tokenizer
        tokenizer = job.tokenizer.load()
        model_config = experiment.model
        if job.vision_from is not None:  # the image tower stage 0 trained
            with job.vision_from.as_directory() as folder:
                model_config = model_config.model_copy(update={"vision": model_config.vision.model_copy(
                    update={"path": folder})})
                model = build_model(model_config, tokenizer, experiment.data.max_length)
        else:
            model = build_model(model_config, tokenizer, experiment.data.max_length)
        return (apply_lora(model, lora) if lora else model), tokenizer

    def data(self) -> None:
        experiment, stage, pad = self.experiment, self.config, self.tokenizer.pad_token_id
        transform = image_transform(experiment.model.vision)
        dataset = stage_dataset(experiment, self.tokenizer, "train", stage.template, transform)
        # Every rank must run the same number of steps (each report is a barrier): agree on the
        # smallest view of the data, should one rank have read a different manifest snapshot.
        size = min_across(len(dataset), self.device)
        self.plan = self.plan_for(stage, size, self.world)
        dataset.examples = dataset.examples[:size]
        self.dataset = dataset
        if experiment.data.stream:  # images decoded by the Ray Data pipeline the trainer was given
            self.shard = ray.train.get_dataset_shard("train")
        else:
            self.sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                              seed=experiment.seed, drop_last=True)
            self.loader = DataLoader(dataset, batch_size=stage.micro_batch, sampler=self.sampler,
                                     collate_fn=partial(collate, pad_id=pad))
        self.val_loader = None
        if self.rank == 0 and stage.val_examples:
            val = stage_dataset(experiment, self.tokenizer, "val", stage.template, transform)
            val.examples = val.examples[: stage.val_examples]
            self.val_loader = DataLoader(val, batch_size=stage.micro_batch, collate_fn=partial(collate, pad_id=pad))

    def epoch_batches(self, epoch: int):
        if self.experiment.data.stream:
            return streamed_batches(self.shard, self.dataset, self.config.micro_batch, self.tokenizer.pad_token_id,
                                    self.experiment.seed, epoch)
        self.sampler.set_epoch(epoch)
        return self.loader

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad],
                 "weight_decay": self.config.weight_decay}]

    def loss(self, module, batch: dict) -> Step | None:
        if "input_ids" not in batch:  # every image of the batch unreadable
            return None
        inputs = {k: batch[k].to(self.device) for k in INPUTS}
        return Step(module(**inputs).loss, len(inputs["input_ids"]), int((inputs["labels"] != -100).sum()))

    def validates(self, step: int, final: bool, checkpointing: bool) -> bool:
        return checkpointing and bool(self.config.val_examples)

    @torch.no_grad()
    def validate(self, autocast) -> dict[str, float]:
        """The mean loss over the validation batches."""
        self.model.eval()
        total, batches = 0.0, 0
        for batch in self.val_loader:
            if "input_ids" in batch:
                with autocast():
                    total += self.model(**{k: batch[k].to(self.device) for k in INPUTS}).loss.item()
                batches += 1
        return {"val_loss": total / max(1, batches)}

    def metrics(self, window: Window, elapsed: float, wall_rate: float) -> dict[str, float]:
        return {"samples_per_s": window.examples / elapsed,
                # this attempt's samples over its whole time so far, start-up and checkpoints included
                "wall_samples_per_s": wall_rate, "tokens_per_s": window.tokens / elapsed}

    def line(self, step: int, metrics: dict) -> str:
        return f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} {metrics['samples_per_s']:.0f} samples/s"

    def save(self, folder: Path, final: bool, step: int, train_state: dict) -> None:
        stage = self.config
        save_checkpoint(folder, self.model, self.tokenizer, self.experiment.model, stage.lora,
                        {"stage": self.name, "step": step, "final": final, "template": stage.template}, train_state,
                        trainable_only=not final)
