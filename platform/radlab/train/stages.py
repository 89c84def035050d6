"""Driving one training stage as a Ray Train `TorchTrainer`.

Each stage's Ray Train run is named by the experiment and a hash of everything that determines
its result (data, model, this stage and the stages before it), so running the same experiment
again resumes or reuses it, while changing `stage2.lr` retrains stage 2 only.

Ray Train's controller unpickles what this module hands it (the job, the workers' function, the
failure callback), importing this module to do so: it imports torch, transformers and peft only
inside the functions that need them, which saves the controller seconds of imports per stage.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.v2.api.callback import UserCallback

from radlab.config import Experiment
from radlab.errors import RadlabError
from radlab.formats.tokenizer import TokenizerFiles
from radlab.runtime import own_signal_handlers

STAGES = ("stage0", "stage1", "stage2")


@dataclass(frozen=True)
class StageJob:
    """What one stage's workers are given (Ray Train's `train_loop_config["job"]`): the experiment,
    which stage, the tokenizer's files, the stage's MLflow run, and the checkpoints it starts from:
    `init_from` the previous stage's model, `vision_from` a stage 0 encoder for a fresh model."""
    experiment: Experiment
    stage: str
    tokenizer: TokenizerFiles
    tracking_uri: str = ""
    run_id: str | None = None
    init_from: Checkpoint | None = None
    vision_from: Checkpoint | None = None


def train_on_worker(config: dict) -> None:
    """Ray Train's function on each worker: the one recipe with the stage's kind (stage 0's
    contrastive encoder, or stages 1-2's report model); `config["job"]` is its StageJob."""
    from radlab.train.recipe import run_recipe

    job: StageJob = config["job"]
    if job.stage == "stage0":
        from radlab.train.contrastive import ContrastiveStage as kind
    else:
        from radlab.train.findings import FindingsStage as kind
    run_recipe(kind, job)


def stage_key(experiment: Experiment, stage: str) -> str:
    """What a stage's result depends on: a rerun with the same key reuses the finished stage. The
    training manifests' bytes, the sizes of the images they name and the files of the local model
    folders it builds on are part of it (a manifest edited in place, images exported again to the
    same paths, or a tower imported again into the same folder, is not what the stage saw); settings
    that only change how data is read (data.stream, data.cache_mb), how many checkpoints are kept
    (keep_last) or what later stages do with the tower (model.vision.frozen, for stage 0) are left
    out."""
    from radlab.data.dataset import images_digest, manifest_digest

    dump = experiment.model_dump(mode="json")
    for name in STAGES:  # how many checkpoints are kept does not change what a stage trains
        dump[name].pop("keep_last")
    upto = STAGES[: STAGES.index(stage) + 1]
    data = {k: v for k, v in dump["data"].items() if k not in ("stream", "cache_mb")}
    if stage == "stage0":
        vision = {k: v for k, v in dump["model"]["vision"].items() if k != "frozen"}
        model = {"vision": vision, "tokenizer": dump["model"]["tokenizer"]}
    else:
        model = dump["model"]
    folders = {"model.vision.path": experiment.model.vision.path, "model.tokenizer": experiment.model.tokenizer,
               "stage0.text.path": experiment.stage0.text.path if experiment.stage0.enabled else None}
    if stage != "stage0":
        folders["model.language.path"] = experiment.model.language.path
    # How the optimizer runs (DeepSpeed's ZeRO or DDP's AdamW, and in which precision) is part of
    # what a report-model stage trains (stage 0 trains in fp32 with AdamW whatever they are); how
    # many workers share the global batch is not.
    optimizer = {} if stage == "stage0" else {"precision": dump["ray"]["precision"], "deepspeed": dump["ray"]["deepspeed"]}
    parts = {"data": data, "manifests": manifest_digest(experiment.data), "images": images_digest(experiment.data),
             "model": model, "folders": {name: folder_files(path) for name, path in folders.items() if path},
             **{s: dump[s] for s in upto}, **optimizer, "seed": dump["seed"]}
    parts = {k: v for k, v in parts.items() if not (k in STAGES and not v["enabled"])}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def folder_files(path: str) -> dict | list | None:
    """What a local model folder holds: for one radlab wrote (a stage 0 encoder, a checkpoint), the
    sha256 of each file from its checksums.json, which copying it out again after a rerun keeps;
    otherwise each file's name, size and modification time, which change when it is written again
    in place. None for a hub id (its name is in the key) or a path that is not a folder."""
    from radlab.model.checkpoint import CHECKSUMS

    root = Path(path)
    if not root.is_dir():
        return None
    if (root / CHECKSUMS).is_file():
        return json.loads((root / CHECKSUMS).read_text())
    return sorted([str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns]
                  for f in root.rglob("*") if f.is_file())


def stage_steps(experiment: Experiment, stage: str) -> int:
    """The optimizer steps a stage will run, as its workers will count them."""
    from radlab.data.dataset import split_examples

    examples = len(split_examples(experiment.data, "train"))
    if stage == "stage0":
        from radlab.train.contrastive import ContrastiveStage

        return ContrastiveStage.plan_for(experiment.stage0, examples).total_steps
    from radlab.train.findings import FindingsStage

    return FindingsStage.plan_for(getattr(experiment, stage), examples, experiment.ray.workers).total_steps


class StageFailed(RadlabError, RuntimeError):
    """A stage stopped by an error that a restart does not fix; the message holds the error."""


def is_fault(error: BaseException) -> bool:
    """A worker process that died or stopped answering (a killed worker, a lost node): a fault,
    which restarts are for, rather than an error raised by the training code."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError

    return isinstance(error, (ActorDiedError, ActorUnavailableError, NodeDiedError, WorkerHealthCheckFailedError,
                              WorkerHealthCheckTimeoutError))


def holds_fault(error: BaseException) -> bool:
    """Whether an error that ended a whole run (a sweep trial) came from a fault anywhere in its
    chain: a lost worker, actor or node, a preempted node, a connection or a judge that did not
    answer. Anything else (radlab refusing an input, a bug) would end the next attempt alike: radlab's
    own refusal is a mistake even where it was raised while handling a fault (a judge URL that refuses
    connections), so the chain below it is not searched."""
    from ray.exceptions import RayActorError
    from ray.train.v2.api.exceptions import PreemptionError

    from radlab.evaluation.scoring import EvaluationFailed

    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if is_fault(current) or isinstance(current, (RayActorError, PreemptionError, EvaluationFailed, ConnectionError,
                                                     TimeoutError)):
            return True
        if isinstance(current, RadlabError):
            continue
        pending += [current.__cause__, current.__context__, getattr(current, "controller_failure", None),
                    getattr(current, "cause", None), *getattr(current, "worker_failures", {}).values()]
    return False


def error_signature(worker_errors: dict[int, BaseException]) -> str | None:
    """What identifies an attempt's error across attempts: each raised error's last line ("Type:
    message" or the message), which holds no process ids. None where a worker died: the other
    ranks' errors are then the fallout of a fault, and restarts are what faults are for."""
    if any(is_fault(error) for error in worker_errors.values()):
        return None
    lines = set()
    for error in worker_errors.values():
        text = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        lines.add(text[-1] if text else type(error).__name__)
    return " | ".join(sorted(lines)) or None


def failure_cause(worker_errors: dict[int, BaseException]) -> str:
    """One line saying why a worker group failed: the raised error, or which worker died and how,
    with the reason Ray gives for the process's end ("Worker exit detail"), such as its placement
    group removed or the OOM killer: a failed health check alone does not say it."""
    signature = error_signature(worker_errors)
    if signature is not None:
        return signature
    rank, fault = next((r, e) for r, e in sorted(worker_errors.items()) if is_fault(e))
    first = next((line.strip() for line in str(fault).splitlines() if line.strip()), "")
    detail = re.search(r"Worker exit detail: (.+?)(?:\.\s|\.?$)", str(fault), re.MULTILINE)
    return f"worker {rank}: {type(fault).__name__}: {first}" + (f" ({detail[1]})" if detail else "")


class FailureWatch(UserCallback):
    """Runs in Ray Train's controller. Each failed worker group is recorded in the stage's MLflow run
    (metric worker_group_failures, tag radlab.failure.<n> with its cause), so no restart goes
    unseen. Ray Train restarts up to `ray.max_failures` times; a fault (a lost node, a killed
    worker) seldom strikes twice alike, a mistake always does, so the same error from two attempts
    in a row stops the stage with that error instead of spending the retries on it."""

    def __init__(self, stage: str, tracking_uri: str, run_id: str | None):
        self.stage, self.tracking_uri, self.run_id, self.previous = stage, tracking_uri, run_id, None

    def after_exception(self, run_context, worker_exceptions: dict[int, BaseException]) -> None:
        from radlab.tracking.steps import record_failure

        if self.run_id:
            record_failure(self.tracking_uri, self.run_id, self.stage, failure_cause(worker_exceptions))
        current = error_signature(worker_exceptions)
        if current is not None and current == self.previous:
            raise StageFailed(f"{self.stage} stopped: two attempts in a row failed with {current} (the workers' "
                              "tracebacks are in Ray's logs; --verbose shows them)")
        self.previous = current


def stage_failure(error: BaseException) -> StageFailed | None:
    """The StageFailed inside the error Ray Train's fit() raised, if the stage was stopped by one."""
    while error is not None:
        if isinstance(error, StageFailed):
            return error
        error = getattr(error, "controller_failure", None) or error.__cause__
    return None


def storage_path(experiment: Experiment) -> str:
    path = experiment.ray.storage_path
    return path if "://" in path else str(Path(path).resolve())


def storage(experiment: Experiment):
    """(filesystem, path) of the experiment's Ray Train runs, resolved by pyarrow as Ray Train
    resolves them: a local or NFS folder, or a URL (s3://, gs://, abfss://, file://)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage_path(experiment))


DONE = "radlab_done.json"


def stage_run_name(experiment: Experiment, stage: str) -> str:
    return f"{experiment.name}-{stage}-{stage_key(experiment, stage)}"


@dataclass
class StageResult:
    """A finished stage: its final checkpoint, the MLflow run that trained it, and the metrics of its
    last report (`val_loss` where the stage validates)."""
    checkpoint: Checkpoint
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def finished_stage(experiment: Experiment, stage: str) -> StageResult | None:
    """What an earlier run that finished this stage with the same key left, or None."""
    import pyarrow.fs

    filesystem, root = storage(experiment)
    done = f"{root}/{stage_run_name(experiment, stage)}/{DONE}"
    if filesystem.get_file_info(done).type != pyarrow.fs.FileType.File:
        return None
    with filesystem.open_input_stream(done) as stream:
        record = json.loads(stream.read())
    return StageResult(Checkpoint(record["checkpoint"], filesystem=filesystem), record.get("run_id"),
                       record.get("metrics", {}))


LOCK_NAMESPACE = "radlab-locks"


@contextmanager
def held_alone(experiment: Experiment, name: str, waiting: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock `name` for the block against every other run with the same storage;
    `waiting(where)` is called once where another holds it first. Where the runs are kept in a folder
    (NFS on a cluster) the lock is a file beside them, which the operating system releases when its
    holder exits, however it ends; where they are kept behind a URL, which holds no locks, it is a
    named Ray actor, which every process of the Ray cluster sees and Ray ends with the process that
    made it."""
    if "://" in experiment.ray.storage_path:
        with _held_in_ray(name, waiting):
            yield
        return
    path = Path(storage_path(experiment)) / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waiting(str(path))
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _held_in_ray(name: str, waiting: Callable[[str], None]) -> Iterator[None]:
    import ray

    @ray.remote(num_cpus=0)
    class Holder:
        """Alive while its lock is held: its name is the lock."""

    said = False
    while True:
        try:
            holder = Holder.options(name=name, namespace=LOCK_NAMESPACE).remote()
            break
        except ValueError:  # the name is taken: another process holds the lock
            if not said:
                waiting(f"Ray actor {name} in namespace {LOCK_NAMESPACE}")
                said = True
            time.sleep(1)
    try:
        ray.get(holder.__ray_ready__.remote())
        yield
    finally:
        ray.kill(holder)


@contextmanager
def exclusive_stage(experiment: Experiment, stage: str, waiting: Callable[[str], None]) -> Iterator[None]:
    """Held while a run checks for and trains a stage: another run of the same stage with the same
    key (concurrent sweep trials that differ only downstream of it, or the same experiment started
    twice) waits for it, calling `waiting` once with the reason, and then reuses what it left
    instead of training into the same Ray Train run at the same time."""
    with held_alone(experiment, stage_run_name(experiment, stage),
                    lambda where: waiting(f"{stage}: another run is training it with the same settings; "
                                          f"waiting to reuse what it leaves ({where})")):
        yield


def _streamed_images(experiment: Experiment) -> dict:
    """The training images as a Ray Data pipeline; workers look up each row's text by its index in
    the same example list."""
    from radlab.data.dataset import split_examples
    from radlab.data.image_pipeline import image_dataset
    from radlab.model.towers import image_transform

    examples = split_examples(experiment.data, "train")
    return {"train": image_dataset([str(e.image) for e in examples], image_transform(experiment.model.vision))}


def run_stage(job: StageJob, report_to_tune: bool = False) -> StageResult:
    """Train one stage to completion (resuming a previous attempt) and return what it left.
    `report_to_tune`: inside a sweep trial, pass each checkpoint's metrics (val_loss) on to Tune,
    whose scheduler may stop the trial early."""
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    experiment, stage = job.experiment, job.stage
    finished = finished_stage(experiment, stage)
    if finished is not None:
        return finished
    name = stage_run_name(experiment, stage)
    ray_config = experiment.ray
    # Ray Train hands this to its controller: how long a (re)start waits for the workers' resources.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(ray_config.node_wait_s)
    trainer = TorchTrainer(
        train_on_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=(ray_config.min_workers, ray_config.workers) if ray_config.min_workers else ray_config.workers,
            use_gpu=ray_config.use_gpu,
            resources_per_worker={"CPU": ray_config.cpus_per_worker},
            accelerator_type=ray_config.placement_accelerator,
        ),
        torch_config=TorchConfig(backend="nccl" if ray_config.use_gpu else "gloo"),
        datasets=_streamed_images(experiment) if stage != "stage0" and experiment.data.stream else None,
        # Ordered, so a resumed epoch skips the rows it trained on rather than others.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(experiment),
            failure_config=FailureConfig(max_failures=ray_config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=getattr(experiment, stage).keep_last),
            callbacks=[FailureWatch(stage, job.tracking_uri, job.run_id)]
            + ([TuneReportCallback()] if report_to_tune else []),
        ),
    )
    with own_signal_handlers():
        try:
            result = trainer.fit()
        except Exception as err:
            stopped = stage_failure(err)
            if stopped is None:
                raise
            raise StageFailed(str(stopped)) from err
    if result.checkpoint is None:
        raise RuntimeError(f"{stage} finished without a checkpoint (see the Ray Train logs above)")
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if k == "val_loss"}
    filesystem, root = storage(experiment)
    with filesystem.open_output_stream(f"{root}/{name}/{DONE}") as stream:
        stream.write(json.dumps({"checkpoint": result.checkpoint.path, "run_id": job.run_id,
                                 "metrics": metrics}).encode())
    return StageResult(result.checkpoint, job.run_id, metrics)
