"""One experiment end to end: data and tokenizer, stage 1 and stage 2 on Ray Train, evaluation,
the checkpoint logged and registered in MLflow."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from radlab.config import Experiment
from radlab.data.dataset import manifest_digest, training_texts
from radlab.data.tokenizer import load_tokenizer, train_tokenizer
from radlab.evaluation.run import evaluate_checkpoint
from radlab.runtime import init_ray
from radlab.tracking.runs import Tracker
from radlab.train.stages import STAGES, run_stage, storage_path


@dataclass
class RunSummary:
    parent_run_id: str
    checkpoint: Path
    model_version: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def prepare_tokenizer(experiment: Experiment, data_digest: str) -> Path:
    """A tokenizer folder the workers can read: the configured one (with <image> added) or one
    trained on the training reports, cached by the data's digest."""
    source = experiment.model.tokenizer or "local-bpe"
    key = hashlib.sha256(f"{source}:{data_digest}".encode()).hexdigest()[:12]
    folder = Path(storage_path(experiment)) / "tokenizers" / key
    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    if experiment.model.tokenizer:
        load_tokenizer(experiment.model.tokenizer).save_pretrained(folder)
    else:
        train_tokenizer(training_texts(experiment.data), folder)
    return folder


def run_experiment(experiment: Experiment, yaml_text: str, console: Console | None = None,
                   parent_run_id: str | None = None, register: bool = True) -> RunSummary:
    """Train, evaluate, log; register a new model version unless `register` is off (sweep trials)."""
    console = console or Console()
    tracker = Tracker(experiment)
    with console.status("preparing data and tokenizer"):
        data_digest = manifest_digest(experiment.data)
        tokenizer_dir = prepare_tokenizer(experiment, data_digest)
    parent = tracker.open_parent(yaml_text, data_digest, parent_run_id=parent_run_id)
    console.print(f"MLflow run [bold]{parent}[/] in experiment '{experiment.name}' at {tracker.uri}")
    init_ray(experiment.ray)
    checkpoint = None
    try:
        for stage in STAGES:
            if not getattr(experiment, stage).enabled:
                continue
            console.rule(stage)
            child = tracker.open_child(parent, stage)
            checkpoint = run_stage(experiment, stage, checkpoint, tokenizer_dir, tracker.uri, child)
            tracker.finish(child)
        final = Path("radlab_runs/checkpoints") / f"{experiment.name}-{experiment.digest()}"
        if final.exists():
            shutil.rmtree(final)
        checkpoint.to_directory(str(final))
        metrics: dict[str, float] = {}
        if experiment.eval.enabled:
            console.rule("evaluation")
            metrics = evaluate_checkpoint(experiment, final, tracker, parent, console)
        source = tracker.log_checkpoint(parent, final)
        version = tracker.register(parent, source) if register else None
        if version:
            console.print(f"registered [bold]{experiment.tracking.register_as}[/] version {version}")
        tracker.finish(parent)
    except BaseException:
        tracker.finish(parent, ok=False)
        raise
    return RunSummary(parent, final, version, metrics)
