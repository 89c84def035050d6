"""The `sweep` section: the grid, the Optuna search inside each cell, the objective and ASHA."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from radlab.config.base import Section


class SearchRange(Section):
    """One hyperparameter range searched with Optuna inside each grid cell."""
    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SearchRange:
        given = [k for k in ("loguniform", "uniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform: [low, high], uniform: [low, high], choice: [...]")
        bounds = self.loguniform or self.uniform
        if bounds is not None and not (0 < bounds[0] < bounds[1] if self.loguniform else bounds[0] < bounds[1]):
            raise ValueError(f"range {list(bounds)} must have low < high (and low > 0 for loguniform)")
        return self


class SearchConfig(Section):
    params: dict[str, SearchRange]
    samples: int = Field(4, ge=1, description="Optuna trials per grid cell")
    seed: int = 0


class Objective(Section):
    metric: str = "chexprompt/significant_mean"
    mode: Literal["min", "max"] = "min"


class SchedulerConfig(Section):
    """ASHA: trials report the validation loss at each checkpoint; the worse ones stop early."""
    kind: Literal["asha"] = "asha"
    metric: str = Field("val_loss", description="a metric every checkpoint reports")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1, description="checkpoints a trial runs before it can be stopped")
    reduction_factor: int = Field(2, ge=2)
    max_t: int = Field(100, ge=1, description="checkpoints after which no trial is compared any more")


class SweepConfig(Section):
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="config path -> values; the grid")
    search: SearchConfig | None = None
    objective: Objective = Field(default_factory=Objective)
    scheduler: SchedulerConfig | None = Field(None, description="early stopping; with it, searched parameters "
                                              "are sampled at random (Optuna reads only the final objective)")
    max_concurrent_trials: int = Field(1, ge=1)
    max_failures: int = Field(1, ge=0, description="retries of a trial that failed by a fault (a mistake is not retried)")
    alias: str = Field("champion", description="registry alias moved to the best trial when it beats the holder "
                                               "in a paired test on the reports both were evaluated on")

    @model_validator(mode="after")
    def _axes(self) -> SweepConfig:
        for path, values in self.axes.items():
            if not values:
                raise ValueError(f"axes.{path}: an axis needs at least one value")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"axes.{path}: repeated values {values}")
        if self.search:
            both = set(self.axes) & set(self.search.params)
            if both:
                raise ValueError(f"{sorted(both)} is both a grid axis and a searched parameter")
        if not self.axes and not self.search:
            raise ValueError("a sweep needs axes, a search, or both")
        return self
