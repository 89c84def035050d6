"""Ray Train overhead: training steps per second of one Ray Train worker against a plain PyTorch
loop, on the same tiny model and the same batches, measured side by side in one run.

    python benchmarks/train_overhead.py [--steps 60]

Prints both rates, their ratio (goal: >= 0.9) and the peak memory of each.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch  # noqa: E402

from radlab.config import parse_experiment  # noqa: E402
from radlab.data.dataset import stage_dataset, training_texts  # noqa: E402
from radlab.formats.batch import collate  # noqa: E402
from radlab.formats.tokenizer import train_tokenizer  # noqa: E402
from radlab.model.build import build_model, set_trainable  # noqa: E402


def make_batches(root: Path, count: int, micro_batch: int):
    experiment = parse_experiment({"name": "bench", "data": {"synthetic": {
        "root": str(root / "synthetic"), "n_train": count * micro_batch, "n_val": 1, "n_test": 1}}}, "bench")
    tokenizer = train_tokenizer(training_texts(experiment.data), root / "tokenizer")
    dataset = stage_dataset(experiment, tokenizer, "train", "plain")
    batches = [collate([dataset[i * micro_batch + j] for j in range(micro_batch)], tokenizer.pad_token_id)
               for i in range(count)]
    return experiment, tokenizer, batches


def train_steps(model, batches, report=None, every: int = 50) -> float:
    """Train one step per batch; return steps per second after a warm-up step. `report` is called
    every `every` steps, as radlab's loop reports to Ray Train at each checkpoint."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    start = 0.0
    for index, batch in enumerate(batches):
        if index == 1:
            start = time.perf_counter()
        loss = model(**{k: batch[k] for k in keys}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if report is not None and index % every == every - 1:
            report({"loss": loss.item()})
    return (len(batches) - 1) / (time.perf_counter() - start)


def fresh_model(experiment, tokenizer):
    torch.manual_seed(0)
    model = build_model(experiment.model, tokenizer)
    set_trainable(model, ["projector", "language", "vision"])
    return model


def ray_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    model = ray.train.torch.prepare_model(fresh_model(config["experiment"], config["tokenizer"]))
    rate = train_steps(model, config["batches"], report=ray.train.report, every=config["report_every"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Ray Train V2 keeps the metrics that come with a checkpoint: report the result with one.
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "result.txt").write_text(f"{rate} {peak}")
        ray.train.report({"steps_per_s": rate, "peak_mb": peak}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=101)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--report-every", type=int, default=50, help="radlab's default checkpoint_every")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a Ray Train worker with 1 CPU runs one thread; match it
    with tempfile.TemporaryDirectory() as tmp:
        experiment, tokenizer, batches = make_batches(Path(tmp), args.steps, args.micro_batch)
        plain = train_steps(fresh_model(experiment, tokenizer), batches)
        plain_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        ray.init(address="local", num_cpus=2, include_dashboard=False)
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={"experiment": experiment, "tokenizer": tokenizer, "batches": batches,
                               "report_every": args.report_every},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="overhead", storage_path=str(Path(tmp) / "ray")),
        )
        metrics = trainer.fit().metrics
        ray.shutdown()
    ratio = metrics["steps_per_s"] / plain
    print(f"plain PyTorch loop : {plain:7.2f} steps/s   peak RSS {plain_peak:7.0f} MB")
    print(f"Ray Train worker   : {metrics['steps_per_s']:7.2f} steps/s   peak RSS {metrics['peak_mb']:7.0f} MB")
    print(f"ratio Ray/plain    : {ratio:7.3f}   (goal >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
