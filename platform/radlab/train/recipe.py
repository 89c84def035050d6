"""The one training recipe every stage runs on each Ray Train worker.

Its phases, in the order they run:
1. setup: the model where the stage begins, or where it stopped (Ray Train's last checkpoint);
2. data: the stage's batches and the plan of optimizer steps;
3. optimizer and schedule: AdamW with a cosine schedule after warmup, or DeepSpeed's engine
   (`train/optimizers.py`), restored on a resume;
4. the step loop: gradient accumulation up to the global batch, batches trained on before a restart
   skipped, windowed metrics straight to the stage's MLflow run;
5. validation, then save and report: every `checkpoint_every` steps and at the end, a checkpoint
   reported to Ray Train (a restarted worker group resumes from it, every rank's random generators
   included, so dropout draws what an uninterrupted stage would).

A kind of stage (`StageKind`) supplies only what is its own: its model, its batches and loss, its
validation, its metrics and what its checkpoint holds. Stage 0 (`train/contrastive.py`) and stages
1-2 (`train/findings.py`) are the two kinds.
"""

from __future__ import annotations

import math
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from radlab.config import Experiment
from radlab.model.checkpoint import load_train_state, newest_intact
from radlab.tracking.steps import StepLog
from radlab.train.optimizers import build_optimizer
from radlab.train.stages import StageJob


@dataclass
class Plan:
    """How many micro-batches make an optimizer step, and how many steps the stage runs."""
    accumulation: int
    steps_per_epoch: int
    total_steps: int

    @classmethod
    def of(cls, epochs: float, max_steps: int | None, batches_per_epoch: int, accumulation: int) -> Plan:
        steps_per_epoch = max(1, batches_per_epoch // accumulation)
        return cls(accumulation, steps_per_epoch, max_steps or max(1, math.ceil(epochs * steps_per_epoch)))

    @property
    def batches_per_epoch(self) -> int:
        return self.steps_per_epoch * self.accumulation


def use_worker_cpus(experiment: Experiment) -> None:
    """Without GPUs, torch computes on as many threads as the worker holds CPUs."""
    if not experiment.ray.use_gpu:
        torch.set_num_threads(max(1, int(experiment.ray.cpus_per_worker)))


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def min_across(value: int, device: torch.device) -> int:
    """The smallest of every rank's `value` (a collective; `device` the one the backend reduces on)."""
    if not distributed():
        return value
    tensor = torch.tensor([value], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor)


def mean_across(value: float, device: torch.device) -> float:
    """The mean of every rank's `value` (a collective; `device` the one the backend reduces on)."""
    if not distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor) / torch.distributed.get_world_size()


def generator_states(device: torch.device) -> list[dict]:
    """Every rank's random number generators (dropout's masks), gathered on every rank (a collective,
    called by all ranks at the same step): saved with a checkpoint, so that a resumed stage draws
    what an uninterrupted one would have."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if not distributed():
        return [mine]
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, mine)
    return gathered


def restore_generators(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class RankCounts:
    """Counts each rank adds to (images skipped, texts truncated), summed over all ranks when read.
    `start` holds the totals a resumed attempt begins from. `totals()` is a collective: every rank
    calls it at the same step."""

    def __init__(self, names: tuple[str, ...], start: dict | None, device: torch.device):
        self.names, self.device = names, device
        self.start = {n: (start or {}).get(n, 0) for n in names}
        self.mine = dict.fromkeys(names, 0)

    def add(self, batch: dict) -> None:
        for name in self.names:
            self.mine[name] += batch[name]

    def totals(self) -> dict[str, int]:
        counts = torch.tensor([self.mine[n] for n in self.names], dtype=torch.long, device=self.device)
        if distributed():
            torch.distributed.all_reduce(counts)
        return {n: self.start[n] + int(c) for n, c in zip(self.names, counts.tolist(), strict=True)}


def report_with_checkpoint(rank: int, metrics: dict, save: Callable[[Path], None],
                           save_shard: Callable[[Path], None] | None = None) -> None:
    """Report to Ray Train: rank 0 with the checkpoint `save(folder)` writes, the other ranks without.
    With `save_shard` (DeepSpeed: a collective) every rank adds its own files to the same checkpoint,
    which Ray Train gathers into one folder."""
    if rank != 0 and save_shard is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        if rank == 0:
            save(folder)
        if save_shard is not None:
            folder.mkdir(exist_ok=True)
            save_shard(folder)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resume_folder(folder: Path) -> Path:
    """The newest intact checkpoint at or beside the one Ray Train resumes from, saying (on rank 0)
    which damaged ones were passed over."""
    intact, problems = newest_intact(folder)
    if problems and ray.train.get_context().get_world_rank() == 0:
        print(f"passed over damaged checkpoints ({'; '.join(problems)}); resuming from {intact}", flush=True)
    return intact


@dataclass
class Step:
    """One micro-batch's loss, its examples on this rank and the target tokens among them."""
    loss: torch.Tensor
    examples: int
    tokens: int = 0


@dataclass
class Window:
    """What the steps since the last log line trained on, summed over the workers."""
    started: float
    loss: float = 0.0
    batches: int = 0
    examples: int = 0
    tokens: int = 0

    def add(self, step: Step, world: int) -> None:
        self.loss += step.loss.item()
        self.batches += 1
        self.examples += step.examples * world
        self.tokens += step.tokens * world


class StageKind(ABC):
    """What one kind of stage supplies to the recipe. `model` (the module saved and validated) and
    `tokenizer` are set by `setup`; `plan` by `data`."""

    truncated_metric = "truncated"  # the metric name of the count of texts cut to fit
    mixed_precision = True  # whether the forward runs under the run's precision (autocast, DeepSpeed)

    def __init__(self, job: StageJob, rank: int, world: int, device: torch.device):
        self.job, self.experiment, self.name = job, job.experiment, job.stage
        self.rank, self.world, self.device = rank, world, device
        self.model: torch.nn.Module
        self.tokenizer = None
        self.plan: Plan

    @abstractmethod
    def setup(self, resume: Path | None) -> None:
        """Build `model` and `tokenizer`: where the stage begins, or from the checkpoint at `resume`;
        mark what trains and print what that is (rank 0)."""

    @abstractmethod
    def data(self) -> None:
        """Prepare the training batches and set `plan`; every rank must agree on it."""

    @abstractmethod
    def epoch_batches(self, epoch: int) -> Iterable[dict]:
        """This rank's micro-batches of `epoch`, in an order a resumed attempt replays."""

    @abstractmethod
    def parameter_groups(self) -> list[dict]:
        """The trainable parameters as AdamW's groups (with their weight decay)."""

    @property
    @abstractmethod
    def config(self):
        """The stage's own section of the experiment (lr, warmup_ratio, checkpoint_every, ...)."""

    @abstractmethod
    def loss(self, module, batch: dict) -> Step | None:
        """The micro-batch's loss through `module` (the model as wrapped for training); None where the
        batch holds nothing to train on (all its images unreadable). Every rank must agree on None."""

    def after_step(self) -> None:
        """Anything the stage does after each optimizer step."""

    @abstractmethod
    def validates(self, step: int, final: bool, checkpointing: bool) -> bool:
        """Whether `validate` runs at this step (the same answer on every rank)."""

    @abstractmethod
    def validate(self, autocast) -> dict[str, float]:
        """Validation metrics (rank 0 alone, on the unwrapped model)."""

    @abstractmethod
    def metrics(self, window: Window, elapsed: float, wall_rate: float) -> dict[str, float]:
        """The stage's own metrics of a window (rates, temperature...): `elapsed` its seconds,
        `wall_rate` this attempt's examples per second over its whole time, start-up included."""

    @abstractmethod
    def line(self, step: int, metrics: dict) -> str:
        """The console line of a logged step (after "[stage] step s/total")."""

    @abstractmethod
    def save(self, folder: Path, final: bool, step: int, train_state: dict) -> None:
        """Write the stage's checkpoint: the whole model when `final`, else what resuming needs."""


def run_recipe(kind: type[StageKind], job: StageJob) -> None:
    """Train one stage on this worker with the stage kind's model, data, loss and validation."""
    started = time.perf_counter()
    experiment = job.experiment
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(experiment.seed)
    use_worker_cpus(experiment)
    stage = kind(job, rank, world, ray.train.torch.get_device())

    with ExitStack() as resuming:  # setup: where the stage begins or stopped
        checkpoint = ray.train.get_checkpoint()
        resume = None if checkpoint is None else resume_folder(Path(resuming.enter_context(checkpoint.as_directory())))
        stage.setup(resume)
        stage.data()
        plan, config = stage.plan, stage.config
        optimizer = build_optimizer(stage, int(config.warmup_ratio * plan.total_steps))
        state = None if resume is None else load_train_state(resume)
        step, samples, resumed_from, generators = 0, 0, [], None
        if state is not None:
            step, samples = state["step"], state.get("samples", 0)
            resumed_from = state["resumed_from"] + [step]
            if rank == 0:
                print(f"[{stage.name}] resuming at step {step}/{plan.total_steps}", flush=True)
            optimizer.restore(state, resume)
            saved = state.get("generators") or []
            if len(saved) == world:
                generators = saved[rank]
            elif rank == 0:
                held = f"the random generators of {len(saved)} workers" if saved else "no random generators"
                print(f"[{stage.name}] the checkpoint holds {held}, resuming on {world}: dropout draws afresh",
                      flush=True)
    counts = RankCounts(("skipped", "truncated"), state, stage.device)
    totals = counts.start
    step_log = StepLog(job.tracking_uri, job.run_id if rank == 0 else None)
    if state is not None:  # a restart (or a rerun) is reported, not absorbed: the driver shows it
        step_log.resumed(step, world)

    def save(folder: Path, final: bool, generators: list[dict]) -> None:
        train_state = {"step": step, "samples": samples, "resumed_from": resumed_from, "world": world, **totals,
                       "generators": generators, **optimizer.state()}
        stage.save(folder, final, step, train_state)

    samples_before = samples
    window = Window(time.perf_counter())
    optimizer.module.train()
    while step < plan.total_steps:
        epoch, done_in_epoch = divmod(step, plan.steps_per_epoch)
        micro = 0
        # A resumed stage's generators come back where the uninterrupted stage's stood: before an epoch
        # starts (starting its batches draws from them), or after this one's batches started.
        if generators is not None and done_in_epoch == 0:
            restore_generators(generators, stage.device)
            generators = None
        for index, batch in enumerate(stage.epoch_batches(epoch)):
            if index < done_in_epoch * plan.accumulation:
                continue  # trained on before the restart
            if index >= plan.batches_per_epoch:
                break
            if generators is not None:
                restore_generators(generators, stage.device)
                generators = None
            counts.add(batch)
            with optimizer.autocast():
                trained = stage.loss(optimizer.module, batch)
            if trained is not None:
                optimizer.backward(trained.loss)
                window.add(trained, world)
                samples += trained.examples * world
            micro += 1
            if not optimizer.micro_step(micro):
                continue
            stage.after_step()
            step += 1
            final = step >= plan.total_steps
            checkpointing = final or step % config.checkpoint_every == 0
            validating = stage.validates(step, final, checkpointing)
            if step % config.log_every == 0 or checkpointing or validating:
                elapsed = time.perf_counter() - window.started
                totals = counts.totals()
                metrics = {"loss": mean_across(window.loss / max(1, window.batches), stage.device), "lr": optimizer.lr,
                           **stage.metrics(window, elapsed,
                                           (samples - samples_before) / (time.perf_counter() - started)),
                           "skipped_images": totals["skipped"], stage.truncated_metric: totals["truncated"],
                           "step": step, "epoch": step / plan.steps_per_epoch}
                if rank == 0 and validating:
                    metrics |= stage.validate(optimizer.autocast)
                    optimizer.module.train()
                step_log.log(metrics, step)
                if rank == 0:
                    print(f"[{stage.name}] step {step}/{plan.total_steps} {stage.line(step, metrics)}", flush=True)
                # Ray Train V2's report waits for its controller's next poll of the workers, so
                # it comes with checkpoints only; step metrics go straight to MLflow.
                if checkpointing:
                    report_with_checkpoint(rank, metrics,
                                           partial(save, final=final, generators=generator_states(stage.device)),
                                           optimizer.save_shard)
                window = Window(time.perf_counter())
            if final:
                break
    step_log.close()
