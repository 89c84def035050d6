"""The experiment: every section together with the checks across them, its paths made absolute
for the workers, and what this machine lacks to run it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import Field, model_validator

from radlab.config.base import Section
from radlab.config.data import DataConfig
from radlab.config.evaluation import EvalConfig, TrackingConfig
from radlab.config.model import ModelConfig
from radlab.config.ray_config import RayConfig
from radlab.config.stages import Stage0Config, StageConfig, default_stage1, default_stage2
from radlab.config.sweep import SweepConfig


class Experiment(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: DataConfig
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({}))
    stage0: Stage0Config = Field(default_factory=Stage0Config)
    stage1: StageConfig = Field(default_factory=default_stage1)
    stage2: StageConfig = Field(default_factory=default_stage2)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    sweep: SweepConfig | None = None
    seed: int = Field(0, ge=0, description="training's seed: the weights a stage builds and the order of its batches "
                      "(the synthetic set has its own, data.synthetic.seed); a sweep axis for repeated runs")

    @model_validator(mode="after")
    def _cross_checks(self) -> Experiment:
        if not (self.stage0.enabled or self.stage1.enabled or self.stage2.enabled):
            raise ValueError("stage0, stage1 and stage2 are all disabled: nothing to train")
        if self.stage0.enabled:
            self._stage0_checks()
        for name in ("stage1", "stage2"):
            stage = getattr(self, name)
            per_step = stage.micro_batch * self.ray.workers
            if stage.enabled and stage.global_batch % per_step:
                raise ValueError(f"{name}.global_batch {stage.global_batch} is not a multiple of {name}.micro_batch "
                                 f"{stage.micro_batch} x ray.workers {self.ray.workers} = {per_step}: change one of them")
        if self.sweep is not None and self.eval.enabled and self.eval.split == "test":
            raise ValueError("eval.split: a sweep picks its champion on its trials' evaluations, so they must not "
                             "see the test set: set eval.split: val (then `radlab eval` the champion on test)")
        if (self.data.mixture and "chexprompt" in self.eval.metrics
                and self.eval.judge.endpoint == "synthetic-reference"):
            raise ValueError("eval.judge.endpoint: the synthetic-reference judge only knows the synthetic set; "
                             "name an openai, azure or compatible judge for real data")
        if self.data.synthetic and self.model.vision.image_size != self.data.synthetic.image_size:
            raise ValueError(
                f"model.vision.image_size {self.model.vision.image_size} differs from "
                f"data.synthetic.image_size {self.data.synthetic.image_size}"
            )
        return self

    def _stage0_checks(self) -> None:
        s0, vision = self.stage0, self.model.vision
        for world in range(self.ray.min_workers or self.ray.workers, self.ray.workers + 1):
            if s0.batch % world:
                raise ValueError(f"stage0.batch {s0.batch} does not divide across {world} workers "
                                 f"(ray.workers {self.ray.workers}, min_workers {self.ray.min_workers})")
        if vision.kind != "clip":
            raise ValueError(f"stage0 trains a clip image tower; model.vision.kind is {vision.kind}")
        if s0.freeze_vision_layers > vision.layers:
            raise ValueError(f"stage0.freeze_vision_layers {s0.freeze_vision_layers} exceeds "
                             f"model.vision.layers {vision.layers}")
        if "vision" not in s0.train and s0.freeze_vision_layers:
            raise ValueError("stage0.freeze_vision_layers is set but vision is not in stage0.train")

    @property
    def trains_report_model(self) -> bool:
        return self.stage1.enabled or self.stage2.enabled

    @property
    def runs_grounding(self) -> bool:
        return self.eval.grounding if self.eval.grounding is not None else self.data.synthetic is not None

    def digest(self) -> str:
        """A short hash of the resolved config: the key that ties reruns to their runs."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _absolute(section: Section, base: Path) -> None:
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path) and not value.is_absolute():
            setattr(section, name, (base / value).resolve())
        elif isinstance(value, Section):
            _absolute(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Section):
                    _absolute(item, base)


def _home(value: str) -> str:
    return os.path.expanduser(value) if value.startswith("~") else value


def _local_path(value: str | None, base: Path) -> str | None:
    """A folder name that exists relative to `base` (or under `~`), made absolute; hub ids and URLs
    stay as they are."""
    if value is None or "://" in value:
        return value
    value = _home(value)
    if Path(value).is_absolute() or not (base / value).exists():
        return value
    return str((base / value).resolve())


def with_absolute_paths(experiment: Experiment, base: Path | None = None) -> Experiment:
    """A copy whose relative paths are resolved against `base` (the driver's working directory):
    Ray Train workers and Tune trials run in folders of their own, so every path is resolved once,
    on the driver, before any of them starts."""
    base = (base or Path.cwd()).resolve()
    out = experiment.model_copy(deep=True)
    _absolute(out, base)
    model = out.model
    model.tokenizer = _local_path(model.tokenizer, base)
    model.vision.path = _local_path(model.vision.path, base)
    model.language.path = _local_path(model.language.path, base)
    out.stage0.text.path = _local_path(out.stage0.text.path, base)
    if "://" not in out.ray.storage_path:
        out.ray.storage_path = str((base / _home(out.ray.storage_path)).resolve())
    if "://" not in out.tracking.artifact_root:
        out.tracking.artifact_root = str((base / _home(out.tracking.artifact_root)).resolve())
    out.tracking.uri = absolute_store(out.tracking.uri, base)
    return out


def absolute_store(uri: str | None, base: Path) -> str | None:
    """A tracking store on this filesystem (`sqlite:///runs.db`, `sqlite:///~/runs.db`, a bare
    folder) made absolute: the workers log to it from folders of their own, where a relative one
    would be another, empty store. Servers (http://, databricks, ...) stay as they are."""
    servers = ("databricks", "databricks-uc")
    if uri is None:
        return None
    if uri.startswith("sqlite:///"):
        path = _home(uri.removeprefix("sqlite:///"))
        return path if path == ":memory:" else f"sqlite:///{(base / path).resolve()}"
    if "://" not in uri and uri not in servers and ":" not in uri.split("/")[0]:
        return str((base / _home(uri)).resolve())
    return uri


def _looks_local(value: str | None) -> bool:
    return bool(value) and "://" not in value and (value.startswith(("/", ".", "~")) or Path(value).exists())


def missing_inputs(experiment: Experiment) -> list[str]:
    """What this machine lacks to run the experiment: files and folders the YAML names (hub ids
    are not checked) and the judge's API key variable. One line each, naming the field."""
    data, model, cfg = experiment.data, experiment.model, experiment.eval
    paths: list[tuple[str, Path | None]] = [(f"data.mixture.{i}.manifest", source.manifest)
                                            for i, source in enumerate(data.mixture)]
    paths += [(f"data.mixture.{i}.image_root", source.image_root) for i, source in enumerate(data.mixture)]
    paths += [("data.val_manifest", data.val_manifest), ("data.eval_manifest", data.eval_manifest),
              ("data.image_root", data.image_root)]
    paths += [(f"model.{name}", Path(value).expanduser()) for name, value in (
        ("language.path", model.language.path), ("vision.path", model.vision.path), ("tokenizer", model.tokenizer),
        ("stage0.text.path", experiment.stage0.text.path)) if _looks_local(value)]
    if cfg.enabled:
        paths += [(f"eval.{name}", getattr(cfg, name)) for name in (
            "chexbert_weights", "chexbert_bert", "radgraph_python", "radgraph_weights", "radgraph_bert",
            "bertscore_model")]
        paths.append(("eval.judge.prompt_file", cfg.judge.prompt_file))
    problems = [f"{field}: {path} does not exist" for field, path in paths if path is not None and not path.exists()]
    judge = cfg.judge
    if (cfg.enabled and "chexprompt" in cfg.metrics and judge.endpoint in ("openai", "azure")
            and not os.environ.get(judge.api_key_env)):
        problems.append(f"eval.judge.api_key_env: {judge.api_key_env} is not set in this environment")
    return problems
