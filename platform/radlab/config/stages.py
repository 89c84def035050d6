"""The stage sections: stage 0 (contrastive tower training), stages 1 and 2 (the report model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from radlab.config.base import Section
from radlab.config.model import LoraConfig

Trainable = Literal["projector", "lora", "embeddings", "language", "vision"]


class StageConfig(Section):
    enabled: bool = True
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(1e-3, gt=0)
    global_batch: int = Field(32, ge=1)
    micro_batch: int = Field(8, ge=1)
    train: list[Trainable] = ["projector"]
    lora: LoraConfig | None = None
    template: Literal["plain", "vicuna_v1", "vicuna_v1_image_last"] = "vicuna_v1"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="checkpoints of the stage kept in ray.storage_path, the newest")
    val_examples: int = Field(64, ge=0, description="validation loss on this many val examples at each checkpoint "
                              "(the metric a sweep's ASHA scheduler reads); 0: none")
    gradient_checkpointing: bool = False
    log_every: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _lora_consistent(self) -> StageConfig:
        if "lora" in self.train and self.lora is None:
            raise ValueError("train lists 'lora' but the stage has no lora: {r, alpha, dropout} block")
        if self.lora is not None and "lora" not in self.train:
            raise ValueError("a lora block is given but 'lora' is not in train")
        if "lora" in self.train and "language" in self.train:
            raise ValueError("train lists both 'lora' and 'language': choose LoRA or full fine-tuning")
        return self


def default_stage1() -> StageConfig:
    return StageConfig(lr=1e-3, global_batch=256, train=["projector"], template="plain")


def default_stage2() -> StageConfig:
    return StageConfig(lr=1e-4, epochs=3, global_batch=64, train=["projector", "lora"], lora=LoraConfig())


class TextTowerConfig(Section):
    """Stage 0's text tower: a transformer over the report, pooled at its last token."""
    path: str | None = Field(None, description="a CLIP model folder whose text tower to start from")
    hidden_size: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_length: int = Field(96, ge=8, description="the tower's context in tokens; longer reports are truncated")


class Stage0Config(Section):
    """Contrastive image-text training of the image tower (the BiomedCLIP-CXR step)."""
    enabled: bool = False
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(5e-4, gt=0)
    batch: int = Field(256, ge=2, description="the contrastive batch, spanning all workers")
    loss: Literal["clip", "siglip"] = Field("clip", description="clip: InfoNCE both ways; siglip: pairwise sigmoid")
    temperature: float = Field(0.07, gt=0, description="initial temperature (siglip: 0.1 is usual)")
    learn_temperature: bool = True
    projection_dim: int = Field(64, ge=4, description="the shared embedding size both towers project to")
    train: list[Literal["vision", "text"]] = ["vision", "text"]
    freeze_vision_layers: int = Field(0, ge=0, description="keep the patch embedding and the first N blocks frozen")
    text: TextTowerConfig = Field(default_factory=TextTowerConfig)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_last: int = Field(2, ge=1, description="checkpoints of the stage kept in ray.storage_path, the newest")
    log_every: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _trains_something(self) -> Stage0Config:
        if not self.train:
            raise ValueError("train is empty: name vision, text or both")
        return self
