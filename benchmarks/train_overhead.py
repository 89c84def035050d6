"""Training through radlab against the best plain loop: samples per second of `radlab run`'s
stage 1 (Ray Train, 1 worker and 2 workers, the default cpus_per_worker that gives the workers
all the cores) against a plain PyTorch loop doing the same work (`plain_loop.py`: the same tiny
model and trainable parts, template, global batch, schedule, clipping and batches) on batches
decoded and collated before its clock starts, torch on all threads; the sides alternate over
rounds. The same plain loop also runs inside a Ray Train worker given all the cores, which
separates what Ray's worker costs from what radlab's loop costs.

    python benchmarks/train_overhead.py [--steps 120] [--rounds 3]

radlab's in-loop rate (its logged `samples_per_s` over the windows after the first ten steps,
which warm up; the first epoch decodes, the later ones read the examples each worker kept,
`data.cache_mb`), against the plain loop's over the same steps, and its wall-clock rate (start to
end of the stage on the driver: worker start-up, data, checkpoints and reports included) are both
printed, and the wall time the in-loop rate does not account for (the whole `radlab run` of one
stage: Ray Train's worker start-up, data, checkpoints, tracking), beside what Ray Train alone takes
to start and end a worker group as a stage's (the same workers and CPUs, a function that imports
what a stage's workers import, radlab's training code with torch, transformers, peft and MLflow,
and reports one checkpoint): the part of that time radlab's own work could shorten is the rest.
Goals: in-loop >= 0.95x the plain loop with 1 worker and with 2; start-up under 8 s per stage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import plain_loop as plain  # noqa: E402
import ray.train  # noqa: E402
import torch  # noqa: E402
from common import alternate, check, report  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from ray import cloudpickle  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402
from rich.console import Console  # noqa: E402

from radlab.config import parse_experiment  # noqa: E402
from radlab.data.dataset import training_texts  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.model.build import build_model  # noqa: E402
from radlab.pipeline import run_experiment  # noqa: E402
from radlab.runtime import init_ray  # noqa: E402

GLOBAL_BATCH = 32
LOG_EVERY = 10  # radlab's window of steps; the first pays the warm-up and is left out on both sides


def experiment_raw(root: Path, steps: int, workers: int, round_number: int) -> dict:
    return {
        "name": f"bench-{workers}w-{round_number}",
        "data": {"synthetic": {"root": str(root / "synthetic"), "n_train": 1000, "n_val": 16, "n_test": 1}},
        "model": {"preset": "tiny"},
        "stage1": {"max_steps": steps, "lr": 2e-3, "global_batch": GLOBAL_BATCH, "micro_batch": GLOBAL_BATCH // workers,
                   "train": ["projector", "language"], "template": "plain", "checkpoint_every": steps,
                   "log_every": LOG_EVERY},
        "stage2": {"enabled": False},
        "eval": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "artifact_root": str(root / "artifacts"), "register_as": None},
        "ray": {"workers": workers, "storage_path": str(root / f"ray-{workers}-{round_number}")},
    }


def plain_loop(experiment, tokenizer) -> float:
    """Samples/s of the plain loop on prepared batches, torch on all the machine's cores."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(experiment.seed)
    return plain.train_stage(build_model(experiment.model, tokenizer), experiment, "stage1", tokenizer, prepared=True,
                             timed_from=LOG_EVERY)


def plain_loop_in_a_ray_train_worker(experiment, tokenizer) -> float:
    """The same plain loop inside one Ray Train worker holding all the cores."""
    cores = os.cpu_count() or 1

    def train(config: dict) -> None:
        torch.set_num_threads(cores)
        torch.manual_seed(experiment.seed)
        rate = plain.train_stage(build_model(experiment.model, tokenizer), experiment, "stage1", tokenizer,
                                 prepared=True, timed_from=LOG_EVERY)
        with tempfile.TemporaryDirectory() as folder:  # Ray Train V2 keeps the metrics reported with a checkpoint
            ray.train.report({"samples_per_s": rate}, checkpoint=ray.train.Checkpoint.from_directory(folder))

    init_ray(experiment.ray, verbose=False)
    cloudpickle.register_pickle_by_value(plain)  # benchmarks/ is not on the workers' path
    result = TorchTrainer(train, scaling_config=ray.train.ScalingConfig(num_workers=1,
                                                                        resources_per_worker={"CPU": cores}),
                          run_config=ray.train.RunConfig(storage_path=experiment.ray.storage_path)).fit()
    return result.metrics["samples_per_s"]


def ray_train_alone(experiment) -> float:
    """Seconds from `fit()` to its return for a worker group like a stage's whose function imports a
    stage's code and reports one empty checkpoint."""

    def train(config: dict) -> None:
        for module in ("radlab.train.recipe", "radlab.train.findings"):  # what a stage's workers import
            importlib.import_module(module)

        with tempfile.TemporaryDirectory() as folder:
            checkpoint = ray.train.Checkpoint.from_directory(folder) if ray.train.get_context().get_world_rank() == 0 \
                else None
            ray.train.report({}, checkpoint=checkpoint)

    init_ray(experiment.ray, verbose=False)
    started = time.perf_counter()
    TorchTrainer(train, scaling_config=ray.train.ScalingConfig(
        num_workers=experiment.ray.workers, resources_per_worker={"CPU": experiment.ray.cpus_per_worker}),
        run_config=ray.train.RunConfig(storage_path=experiment.ray.storage_path)).fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment = parse_experiment(experiment_raw(root, args.steps, 1, 0), "bench")
        tokenizer = train_tokenizer(training_texts(experiment.data), root / "tokenizer")
        walls: dict[int, list[float]] = {1: [], 2: []}
        startups: dict[int, list[float]] = {1: [], 2: []}
        rounds_done = {1: 0, 2: 0}

        def radlab(workers: int) -> float:
            rounds_done[workers] += 1
            raw = experiment_raw(root, args.steps, workers, rounds_done[workers])
            started = time.perf_counter()
            summary = run_experiment(parse_experiment(raw, "bench"), "", Console(quiet=True))
            wall = time.perf_counter() - started
            client = MlflowClient(raw["tracking"]["uri"])
            child = client.get_run(client.get_run(summary.parent_run_id).data.tags["radlab.stage1.run"])
            history = client.get_metric_history(child.info.run_id, "samples_per_s")
            windows = [m.value for m in sorted(history, key=lambda m: m.step)[1:]]  # the first pays the warm-up
            in_loop = len(windows) / sum(1 / rate for rate in windows)  # windows of equal samples: their whole rate
            walls[workers].append(args.steps * GLOBAL_BATCH / wall)
            startups[workers].append(wall - args.steps * GLOBAL_BATCH / in_loop)
            return in_loop

        def alone(workers: int) -> float:
            return ray_train_alone(parse_experiment(experiment_raw(root, args.steps, workers, 0), "bench"))

        rates = alternate({"plain": lambda: plain_loop(experiment, tokenizer),
                           "plain in a Ray Train worker": lambda: plain_loop_in_a_ray_train_worker(experiment, tokenizer),
                           "radlab 1 worker": lambda: radlab(1), "radlab 2 workers": lambda: radlab(2),
                           "Ray Train alone, 1 worker (s)": lambda: alone(1),
                           "Ray Train alone, 2 workers (s)": lambda: alone(2)}, args.rounds)
    report("train_overhead", "stage 1 samples/s, the plain loop inside a Ray Train worker",
           rates["plain in a Ray Train worker"], rates["plain"], "plain loop on all threads", "samples/s", None)
    for workers in (1, 2):
        name = f"radlab {workers} worker{'s' if workers > 1 else ''}"
        report("train_overhead", f"stage 1 samples/s in the loop, {name}", rates[name], rates["plain"],
               "plain loop on all threads", "samples/s", 0.95)
        report("train_overhead", f"stage 1 samples/s of wall time, {name}", walls[workers], rates["plain"],
               "plain loop on all threads", "samples/s", None)
        check("train_overhead", f"time beyond the training loop (run and worker start-up, checkpoints, tracking), "
              f"{name}", startups[workers], "s", 8, higher_is_better=False)
        report("train_overhead", f"time beyond the training loop, {name}", startups[workers],
               rates[f"Ray Train alone, {name.removeprefix('radlab ')} (s)"],
               "Ray Train alone: its worker group started, importing a stage's code, one checkpoint reported, ended",
               "s", None, higher_is_better=False)


if __name__ == "__main__":
    main()
