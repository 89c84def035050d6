"""Sweep overhead: the wall time of N tiny trials as a Ray Tune sweep (2 concurrent trials) against
the same trials run back to back with `run_experiment`, the two alternating over rounds, each
round in fresh folders (nothing reused), after one warm-up trial has paid the driver's imports.

    python benchmarks/sweep_overhead.py [--trials 4] [--steps 12] [--rounds 3]

Both sides run every trial whole (stage 1, stage 2 on Ray Train, evaluation with CheXprompt on
the loopback reference judge, MLflow tracking); the sweep adds Tune, its trial actors, the sweep
run, the comparison table and plots, and registration of the best. Each trial has one Ray Train
worker, so two concurrent trials share this machine's cores. Goal: the sweep takes at most 1.15x
the back-to-back time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from common import alternate, report  # noqa: E402
from rich.console import Console  # noqa: E402

from radlab.config import parse_experiment  # noqa: E402
from radlab.data.synthetic import generate  # noqa: E402
from radlab.pipeline import run_experiment  # noqa: E402
from radlab.runtime import init_ray  # noqa: E402
from radlab.tune.sweep import expand, run_sweep, trial_experiment  # noqa: E402


def experiment(root: Path, work: Path, trials: int, steps: int) -> dict:
    stage = {"max_steps": steps, "lr": 2e-3, "global_batch": 8, "micro_batch": 8, "log_every": steps,
             "checkpoint_every": steps, "val_examples": 0}
    raw = {
        "name": f"sweep-overhead-{work.name}",
        "data": {"synthetic": {"root": str(root), "n_train": 200, "n_val": 16, "n_test": 16}},
        "model": {"preset": "tiny"},
        "stage1": {**stage, "train": ["projector", "language"], "template": "plain"},
        "stage2": {**stage, "train": ["projector", "lora"], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "eval": {"split": "val", "limit": 16, "max_new_tokens": 24, "batch_size": 16, "show": 0,
                 "compare_untrained": False, "judge": {"cache": str(work / "judge.sqlite")}},
        "tracking": {"uri": f"sqlite:///{work}/mlflow.db", "register_as": "sweep-overhead",
                     "artifact_root": str(work / "artifacts")},
        # Ray sized by radlab, and each trial's CPUs left to the sweep (the cores shared among the
        # trials that run at once), as for a YAML a user submits.
        "ray": {"workers": 1, "storage_path": str(work / "ray")},
        "sweep": {"axes": {"stage2.lr": [round(1e-3 * (i + 1), 6) for i in range(trials)]},
                  "max_concurrent_trials": 2},
    }
    parse_experiment(raw, "bench")
    return raw


def back_to_back(raw: dict, quiet: Console) -> float:
    start = time.perf_counter()
    for trial in expand(raw, "bench"):
        one = trial_experiment(raw, trial.overrides)
        run_experiment(one, json.dumps(one.model_dump(mode="json")), quiet, register=False)
    return time.perf_counter() - start


def swept(raw: dict) -> float:
    start = time.perf_counter()
    result = run_sweep(raw, "bench")
    elapsed = time.perf_counter() - start
    assert all(row["status"] == "ok" for row in result["trials"]), result["trials"]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet = Console(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = generate(tmp / "synthetic", 200, 16, 16, 64, 0)
        warm = experiment(root, tmp / "warm", 1, 2)
        init_ray(parse_experiment(warm, "bench").ray)
        os.chdir(tmp)
        back_to_back(warm, quiet)
        rounds = itertools.count()
        times = alternate({
            "back to back": lambda: back_to_back(experiment(root, tmp / f"back{next(rounds)}", args.trials,
                                                            args.steps), quiet),
            "sweep": lambda: swept(experiment(root, tmp / f"sweep{next(rounds)}", args.trials, args.steps)),
        }, args.rounds)
    print(f"{args.trials} tiny trials ({args.steps} steps per stage, 1 worker each, evaluation and tracking on)")
    report("sweep_overhead", f"wall time of {args.trials} trials as a Ray Tune sweep, 2 concurrent", times["sweep"],
           times["back to back"], "back to back with run_experiment", "s", 1.15, higher_is_better=False)


if __name__ == "__main__":
    main()
