"""The `data` section: the synthetic set or a mixture of manifests, and the held-out sets."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from radlab.config.base import Section


class SyntheticData(Section):
    root: Path = Path("data/synthetic")
    n_train: int = Field(3000, ge=1)
    n_val: int = Field(100, ge=1)
    n_test: int = Field(200, ge=1)
    image_size: int = Field(64, ge=32, le=1024)
    seed: int = 0


class DataSource(Section):
    name: str
    manifest: Path
    weight: float = Field(1.0, gt=0)
    text: list[Literal["rule", "llm"]] = ["rule", "llm"]
    image_root: Path | None = Field(None, description="where this source's image paths start (default: data.image_root)")


class DataConfig(Section):
    synthetic: SyntheticData | None = None
    mixture: list[DataSource] = []
    eval_manifest: Path | None = Field(None, description="the test set: read only by evaluation on eval.split test")
    val_manifest: Path | None = Field(None, description="the validation set (checkpoint losses, sweep selection); "
                                      "None: a seeded patient-level carve-out of the training manifests")
    val_fraction: float = Field(0.02, gt=0, lt=0.5, description="the share of training patients carved out for "
                                "validation when there is no val_manifest")
    val_seed: int = Field(0, description="the seed of that carve-out")
    image_root: Path | None = None
    views: list[Literal["AP", "PA", "LATERAL", "LL"]] = ["AP", "PA"]
    max_length: int = Field(2048, ge=16)
    stream: bool = Field(False, description="stages 1-2 decode images in a Ray Data pipeline streamed into the "
                         "workers (parallel, bounded memory) instead of a DataLoader inside each worker")
    cache_mb: int = Field(1024, ge=0, description="each training worker keeps the examples it has prepared "
                          "(decoded images, token ids) in memory up to this many MiB, so later epochs skip "
                          "that work; 0: none")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.synthetic is None) == (not self.mixture):
            raise ValueError("give exactly one of data.synthetic or data.mixture")
        if self.mixture and self.eval_manifest is None:
            raise ValueError("data.eval_manifest is required with data.mixture")
        if self.val_manifest is not None and self.eval_manifest is not None and (
                self.val_manifest.resolve() == self.eval_manifest.resolve()):
            raise ValueError(f"data.val_manifest is the test set {self.eval_manifest}: selecting on the test set "
                             "flatters every result; name a validation manifest or leave it empty for a carve-out")
        if self.mixture and self.eval_manifest is not None and any(
                s.manifest.resolve() == self.eval_manifest.resolve() for s in self.mixture):
            raise ValueError(f"data.mixture trains on the test set {self.eval_manifest}")
        return self
