"""Stage 0 scaling: image-report pairs per second of contrastive training with 1 and 2 Ray Train
workers, and the contrastive batch each reaches, against the plain loop doing the same work in one
process (`plain_loop.train_contrastive`: the same dual encoder, loss, optimizer and clipping, pairs
decoded in the loop as radlab's stage 0 decodes them), measured side by side in one run.

    python benchmarks/contrastive.py [--steps 40] [--per-worker 128] [--rounds 3]

Each worker embeds `--per-worker` pairs per step; the embeddings are all-gathered, so with two
workers every image is contrasted against twice as many reports. One worker computes on all the
machine's cores (radlab's default without GPUs), two on half each. The plain loop runs on all
threads with each side's contrastive batch, and on one thread: twice its one-thread rate is the most
two single-thread workers could reach here, which bounds what two workers can gain over one on this
machine. The sides alternate over rounds. Goals: 2 workers reach twice the contrastive batch at
>= 1.6x the pairs per second of one; each side >= 0.95x the plain loop on all threads.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import plain_loop as plain  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
from common import alternate, report  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchConfig, TorchTrainer  # noqa: E402

from radlab.config import parse_experiment  # noqa: E402
from radlab.data.dataset import training_texts  # noqa: E402
from radlab.formats.tokenizer import TokenizerFiles, train_tokenizer  # noqa: E402
from radlab.runtime import start_embedded_ray  # noqa: E402
from radlab.train.stages import StageJob, train_on_worker  # noqa: E402


# The plain loop on all threads with each radlab side's contrastive batch.
PLAIN = {"1 worker": "plain, all threads, 1 worker's batch", "2 workers": "plain, all threads, 2 workers' batch"}


def experiment_for(root: Path, workers: int, per_worker: int, steps: int, name: str):
    return parse_experiment({
        "name": f"bench-contrastive-{name}",
        "data": {"synthetic": {"root": str(root / "synthetic"), "n_train": 2 * per_worker * 10,
                               "n_val": 50, "n_test": 1}},
        "stage0": {"enabled": True, "max_steps": steps, "batch": per_worker * workers,
                   "log_every": steps // 2, "checkpoint_every": steps},
        "stage1": {"enabled": False}, "stage2": {"enabled": False},
        "ray": {"workers": workers},
    }, "bench")


def measure(root: Path, tokenizer_dir: Path, workers: int, per_worker: int, steps: int, name: str) -> dict:
    """Train stage 0 for `steps` steps on `workers` workers; return the metrics of the second half."""
    experiment = experiment_for(root, workers, per_worker, steps, name)
    trainer = TorchTrainer(
        train_on_worker,
        train_loop_config={"job": StageJob(experiment, "stage0", TokenizerFiles.read(tokenizer_dir))},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"contrastive-{name}", storage_path=str(root / "ray")),
    )
    return trainer.fit().metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-worker", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment = parse_experiment({"name": "bench", "data": {"synthetic": {
            "root": str(root / "synthetic"), "n_train": 2 * args.per_worker * 10, "n_val": 50, "n_test": 1}}}, "b")
        train_tokenizer(training_texts(experiment.data), root / "tokenizer")
        start_embedded_ray(2, log_to_driver=False)  # as radlab starts its own Ray
        last: dict[int, dict] = {}
        runs = itertools.count()  # each measurement its own Ray Train run, so none resumes another

        def side(workers: int):
            def run() -> float:
                name = f"{workers}-{next(runs)}"
                last[workers] = measure(root, root / "tokenizer", workers, args.per_worker, args.steps, name)
                return last[workers]["pairs_per_s"]
            return run

        def plain_side(threads: int, batch: int):
            def run() -> float:
                torch.set_num_threads(threads)
                experiment = experiment_for(root, 1, args.per_worker, args.steps, "plain")
                return plain.train_contrastive(experiment, tokenizer, batch, args.steps, args.steps // 2)
            return run

        cores = os.cpu_count() or 1
        tokenizer = TokenizerFiles.read(root / "tokenizer").load()
        rates = alternate({"1 worker": side(1), "2 workers": side(2),
                           PLAIN["1 worker"]: plain_side(cores, args.per_worker),
                           PLAIN["2 workers"]: plain_side(cores, 2 * args.per_worker),
                           "plain, one thread": plain_side(1, args.per_worker)}, args.rounds)
        ray.shutdown()
    for workers, m in last.items():
        print(f"{workers} worker{'s' if workers > 1 else ' '}: contrastive batch {m['contrastive_batch']:4d}, "
              f"last round's loss {m['loss']:.3f}")
    batch = last[2]["contrastive_batch"] / last[1]["contrastive_batch"]
    report("contrastive", f"stage 0 image-report pairs/s, 2 workers (contrastive batch {batch:.0f}x one's)",
           rates["2 workers"], rates["1 worker"], "1 worker", "pairs/s", 1.6)
    for name, baseline in PLAIN.items():
        report("contrastive", f"stage 0 image-report pairs/s, radlab {name}", rates[name], rates[baseline],
               "plain loop on all threads, the same contrastive batch", "pairs/s", 0.95)
    report("contrastive", "the most two single-thread workers can reach here: twice the plain loop on one thread",
           [2 * rate for rate in rates["plain, one thread"]], rates[PLAIN["1 worker"]], "plain loop on all threads",
           "pairs/s", None)


if __name__ == "__main__":
    main()
