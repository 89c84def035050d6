"""One experiment end to end: data and tokenizer, stages 0, 1 and 2 on Ray Train, evaluation
(retrieval for the stage 0 encoder, CheXprompt for the report model), the checkpoints logged and
the report model registered in MLflow."""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from rich.console import Console

from radlab.config import ConfigError, Experiment, ModelConfig, missing_inputs, with_absolute_paths
from radlab.data.dataset import manifest_digest, training_texts
from radlab.data.stats import experiment_cards, left_out_lines
from radlab.evaluation.metrics import unavailable
from radlab.evaluation.preflight import evaluation_plan
from radlab.evaluation.run import evaluate_checkpoint, evaluate_encoder
from radlab.formats.tokenizer import TokenizerFiles, load_tokenizer, save_tokenizer, train_tokenizer
from radlab.model.build import check_half_weights_stepped, check_tokenizer_fits, embedding_rows
from radlab.model.checkpoint import atomic_folder
from radlab.model.memory import experiment_plans
from radlab.model.towers import image_transform
from radlab.progress import stage_progress
from radlab.runtime import check_resources, cluster_precision, init_ray
from radlab.tracking.runs import Tracker
from radlab.train.stages import STAGES, StageJob, exclusive_stage, finished_stage, run_stage, stage_key, stage_steps


@dataclass
class RunSummary:
    parent_run_id: str
    checkpoint: Path
    model_version: str | None
    metrics: dict[str, float] = field(default_factory=dict)


def tokenizer_source(model: ModelConfig) -> str | None:
    """Where the tokenizer comes from: the configured one, else a pretrained language model's own;
    None when the language model is built from a config (a BPE is then trained on the reports)."""
    return model.tokenizer or model.language.path


def prepare_tokenizer(experiment: Experiment, data_digest: str) -> Path:
    """The run's tokenizer folder, checked against the language model's embeddings: the configured
    or pretrained one (with <image> added), or one trained on the training reports, cached by the
    data's digest and its vocabulary size beside the finished checkpoints (the workers get its files
    with their job)."""
    source = tokenizer_source(experiment.model)
    trained = f"local-bpe-{experiment.model.language.vocab_size}"
    key = hashlib.sha256(f"{source or trained}:{data_digest}".encode()).hexdigest()[:12]
    folder = outputs_root(experiment) / "tokenizers" / key
    if not (folder / "tokenizer_config.json").is_file():
        if source:
            save_tokenizer(load_tokenizer(source), folder)
        else:
            train_tokenizer(training_texts(experiment.data), folder, experiment.model.language.vocab_size)
    if experiment.model.language.path:
        check_tokenizer_fits(experiment.model, load_tokenizer(folder), embedding_rows(experiment.model.language.path))
    return folder


def describe(experiment: Experiment) -> str:
    """One paragraph for the run's MLflow page: what was trained, on what, judged by whom."""
    model = experiment.model
    stages = ", ".join(f"{name} ({'+'.join(getattr(experiment, name).train)}, {getattr(experiment, name).template})"
                       if name != "stage0" else "stage0 (contrastive encoder)"
                       for name in ("stage0", "stage1", "stage2") if getattr(experiment, name).enabled)
    language = model.language.path or f"a {model.language.layers}-layer language model built from its config"
    data = (f"the synthetic chest X-ray set ({experiment.data.synthetic.n_train} training images)"
            if experiment.data.synthetic else
            ", ".join(f"{s.name} ({'+'.join(s.text)} text, weight {s.weight:g})" for s in experiment.data.mixture))
    judge = experiment.eval.judge
    judged = (f"evaluated on the {experiment.eval.split} split with {', '.join(experiment.eval.metrics)}; CheXprompt "
              f"judge: {judge.endpoint} {judge.model if judge.endpoint != 'synthetic-reference' else '(exact labels)'}"
              if experiment.eval.enabled else "not evaluated")
    return (f"{experiment.name}: {stages} of a {model.vision.kind} {model.vision.name or ''} tower, "
            f"{model.projector} projector and {language}, trained on {data}; {judged}.").replace("  ", " ")


def check_memory(experiment: Experiment) -> None:
    """Refuse, before anything starts, a stage whose memory plan does not fit its GPUs."""
    for plan in experiment_plans(experiment):
        if not plan.fits:
            raise ConfigError(f"{plan.line()}: {plan.fix}")


def outputs_root(experiment: Experiment) -> Path:
    """Where finished checkpoints are kept: beside the Ray Train runs when their storage is a
    folder (shared storage on a cluster), else a local scratch folder (they are logged to MLflow)."""
    path = experiment.ray.storage_path
    return Path(path) if "://" not in path else Path(tempfile.gettempdir()) / "radlab"


def encoder_folder(experiment: Experiment) -> Path:
    """Where a run's trained stage 0 encoder is kept: keyed by the experiment as `run_experiment`
    resolves it (relative paths made absolute), so that `radlab eval` finds what a run wrote."""
    experiment = with_absolute_paths(experiment)
    return outputs_root(experiment) / "encoders" / f"{experiment.name}-{stage_key(experiment, 'stage0')}"


def _materialise(checkpoint, folder: Path) -> Path:
    """Copy a Ray Train checkpoint to a stable local folder, replacing an older copy by a rename:
    trials that share a stage 0 copy its encoder to the same folder and read it at once."""
    with atomic_folder(folder) as tmp:
        checkpoint.to_directory(str(tmp))
    return folder.resolve()


def run_experiment(experiment: Experiment, submitted: str, console: Console | None = None,
                   parent_run_id: str | None = None, register: bool = True, report_to_tune: bool = False,
                   verbose: bool = False) -> RunSummary:
    """Train, evaluate, log; register a new model version unless `register` is off (sweep trials).
    `submitted`: the experiment as the user gave it (the YAML file's text; a sweep trial's resolved
    config), logged to the parent run as experiment.yaml.
    The metrics hold each stage's last validation loss (`stage2/val_loss`) besides the evaluation's.
    `verbose` shows the workers' and Ray's own output; otherwise it stays in Ray's log folder."""
    console = console or Console()
    experiment = with_absolute_paths(experiment)
    # Inputs training cannot do without are checked before anything starts (the scorers' files
    # are not: a metric without them is skipped with its reason).
    missing = [line for line in missing_inputs(experiment) if line.startswith(("data.", "model.", "eval.judge."))]
    if missing:
        raise ConfigError("missing here: " + "; ".join(missing))
    image_transform(experiment.model.vision)  # a tower folder that resizes otherwise stops the run here
    tracker = Tracker(experiment)
    check_memory(experiment)
    check_half_weights_stepped(experiment)
    if experiment.eval.enabled and experiment.trains_report_model:
        with console.status("checking the judge"):
            plan = evaluation_plan(experiment)  # a judge that cannot answer stops the run before training
        for line in plan.lines() if plan else []:
            console.print(line, highlight=False, soft_wrap=True)
        for name in experiment.eval.metrics:  # said before training, not only in the summary after it
            reason = unavailable(name, experiment.eval, experiment.data.synthetic is not None)
            if reason:
                console.print(f"[yellow]will skip[/] {name}: {reason}", highlight=False, soft_wrap=True)
    with console.status("preparing data and tokenizer"):
        data_digest = manifest_digest(experiment.data)
        tokenizer_dir = prepare_tokenizer(experiment, data_digest)
    logs = init_ray(experiment.ray, verbose)
    if logs and not verbose:
        console.print(f"Ray's own logs: {logs} (--verbose shows them here)", highlight=False, soft_wrap=True)
    check_resources(experiment.ray)
    if experiment.ray.precision == "auto":  # a cluster's CPUs: asked now that the run has joined it
        experiment = experiment.model_copy(update={"ray": experiment.ray.model_copy(
            update={"precision": cluster_precision(experiment.ray)})})
        has = "has" if experiment.ray.precision == "bf16" else "has not"
        console.print(f"ray.precision auto: {experiment.ray.precision} (every node of the cluster that can hold a "
                      f"worker {has} avx512_bf16 or AMX)", highlight=False, soft_wrap=True)
        tracker = Tracker(experiment)
    parent = tracker.open_parent(submitted, data_digest, parent_run_id=parent_run_id)
    checkpoint = encoder = child = None
    metrics: dict[str, float] = {}
    version = None
    try:  # from here on, whatever happens ends the parent run: none is left RUNNING
        tracker.describe(parent, describe(experiment))
        cards = experiment_cards(experiment.data, experiment.eval.split)
        tracker.log_datasets(parent, cards)
        for line in left_out_lines(cards):
            console.print(line, highlight=False, soft_wrap=True)
        console.print(f"MLflow run [bold]{parent}[/] in experiment '{experiment.name}' at {tracker.uri}",
                      highlight=False, soft_wrap=True)
        for stage in STAGES:
            if not getattr(experiment, stage).enabled:
                continue
            console.rule(stage)
            with exclusive_stage(experiment, stage, partial(console.print, highlight=False, soft_wrap=True)):
                result = finished_stage(experiment, stage)
                if result is not None:  # an earlier run trained it: reused, with no new stage run
                    trained_in = f" (MLflow run {result.run_id})" if result.run_id else ""
                    console.print(f"{stage} finished earlier{trained_in}: reusing {result.checkpoint.path}",
                                  highlight=False, soft_wrap=True)
                else:
                    child = tracker.open_child(parent, stage)
                    job = StageJob(experiment, stage, TokenizerFiles.read(tokenizer_dir), tracker.uri, child,
                                   init_from=checkpoint if stage != "stage0" else None,
                                   vision_from=encoder if checkpoint is None else None)
                    with stage_progress(console, stage, stage_steps(experiment, stage),
                                        partial(tracker.latest_report, child), partial(tracker.resumes, child),
                                        partial(tracker.failures, child)):
                        result = run_stage(job, report_to_tune=report_to_tune and stage != "stage0")
                    tracker.finish(child)
                    child = None
            if stage == "stage0":
                encoder = result.checkpoint
            else:
                checkpoint = result.checkpoint
            metrics |= tracker.stage_done(parent, stage, result.run_id, result.metrics)
        if encoder is not None:
            final = _materialise(encoder, encoder_folder(experiment))
            console.print(f"encoder [bold]{final}[/]: name it in model.vision.path to build on it")
            if experiment.eval.enabled:
                console.rule("retrieval evaluation")
                metrics |= evaluate_encoder(experiment, final, tracker, parent, console)
            tracker.log_checkpoint(parent, final, "encoder")
        if checkpoint is not None:
            final = _materialise(checkpoint, outputs_root(experiment) / "checkpoints" /
                                 f"{experiment.name}-{experiment.digest()}")
            source = tracker.log_checkpoint(parent, final)  # kept even when the evaluation fails
            if experiment.eval.enabled:
                console.rule("evaluation")
                metrics |= evaluate_checkpoint(experiment, final, tracker, parent, console)
            headline = metrics.get("chexprompt/significant_mean")
            summary = "" if headline is None else (f" CheXprompt significant errors per report: {headline:.3f} on "
                                                   f"the {experiment.eval.split} split.")
            version = tracker.register(parent, source, description=describe(experiment) + summary) if register else None
        tracker.finish(parent)
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
        for run_id in (child, parent) if child else (parent,):
            tracker.finish(run_id, ok=False, interrupted=interrupted, error=f"{type(err).__name__}: {err}")
        raise
    return RunSummary(parent, final, version, metrics)
