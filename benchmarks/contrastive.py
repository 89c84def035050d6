"""Stage 0 scaling: image-report pairs per second of contrastive training with 1 and 2 Ray Train
workers, and the contrastive batch each reaches, measured side by side in one run.

    python benchmarks/contrastive.py [--steps 40] [--per-worker 128]

Each worker embeds `--per-worker` pairs per step; the embeddings are all-gathered, so with two
workers every image is contrasted against twice as many reports. Goal: 2 workers reach twice
the contrastive batch at >= 1.6x the pairs per second of one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from radlab.config import parse_experiment  # noqa: E402
from radlab.data.dataset import training_texts  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.train.stages import StageJob, train_on_worker  # noqa: E402


def measure(root: Path, tokenizer_dir: Path, workers: int, per_worker: int, steps: int) -> dict:
    """Train stage 0 for `steps` steps on `workers` workers; return the metrics of the second half."""
    experiment = parse_experiment({
        "name": f"bench-contrastive-{workers}",
        "data": {"synthetic": {"root": str(root / "synthetic"), "n_train": 2 * per_worker * 10,
                               "n_val": 50, "n_test": 1}},
        "stage0": {"enabled": True, "max_steps": steps, "batch": per_worker * workers,
                   "log_every": steps // 2, "checkpoint_every": steps},
        "stage1": {"enabled": False}, "stage2": {"enabled": False},
        "ray": {"workers": workers},
    }, "bench")
    trainer = TorchTrainer(
        train_on_worker,
        train_loop_config={"job": StageJob(experiment, "stage0", str(tokenizer_dir))},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"contrastive-{workers}", storage_path=str(root / "ray")),
    )
    return trainer.fit().metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-worker", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment = parse_experiment({"name": "bench", "data": {"synthetic": {
            "root": str(root / "synthetic"), "n_train": 2 * args.per_worker * 10, "n_val": 50, "n_test": 1}}}, "b")
        train_tokenizer(training_texts(experiment.data), root / "tokenizer")
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        rows = {w: measure(root, root / "tokenizer", w, args.per_worker, args.steps) for w in (1, 2)}
        ray.shutdown()
    one, two = rows[1], rows[2]
    for workers, m in rows.items():
        print(f"{workers} worker{'s' if workers > 1 else ' '}: {m['pairs_per_s']:7.1f} pairs/s   "
              f"contrastive batch {m['contrastive_batch']:4d}   loss {m['loss']:.3f}")
    speedup = two["pairs_per_s"] / one["pairs_per_s"]
    batch = two["contrastive_batch"] / one["contrastive_batch"]
    print(f"2 vs 1 worker: {speedup:.2f}x pairs/s, {batch:.1f}x contrastive batch   "
          f"(goal >= 1.6x at 2x: {'met' if speedup >= 1.6 and batch >= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
