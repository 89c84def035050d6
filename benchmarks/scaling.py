"""Data-parallel scaling: samples per second of the tiny model's stage 1 with 1 and 2 Ray Train
workers on this machine, the two alternating over rounds; then an estimate of the paper recipe's steps per second
on 4 and 8 V100s from the per-example FLOPs of the paper-shaped model, counted by PyTorch's
FlopCounterMode on the meta device (no weights are allocated).

    python benchmarks/scaling.py [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

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

V100_FP16_TFLOPS = 125.0     # SXM2 tensor-core peak
ASSUMED_MFU = 0.35           # model FLOPs utilisation typical of 7B fine-tuning with ZeRO-2 on V100s
FINDINGS_TOKENS = 200        # prompt and findings text beside the 1,369 image tokens


def tiny_rate(root: Path, workers: int, steps: int, name: str) -> float:
    experiment = parse_experiment({
        "name": f"bench-scaling-{name}",
        "data": {"synthetic": {"root": str(root / "synthetic"), "n_train": 2048, "n_val": 1, "n_test": 1}},
        "stage1": {"max_steps": steps, "global_batch": 32, "micro_batch": 16,
                   "train": ["projector", "language"], "log_every": steps // 2, "checkpoint_every": steps},
        "stage2": {"enabled": False},
        "ray": {"workers": workers},
    }, "bench")
    trainer = TorchTrainer(
        train_on_worker,
        train_loop_config={"job": StageJob(experiment, "stage1", TokenizerFiles.read(root / "tokenizer"))},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"scaling-{name}", storage_path=str(root / "ray")),
    )
    return trainer.fit().metrics["samples_per_s"]


def paper_forward_flops() -> tuple[float, float]:
    """Forward FLOPs of one example: (the 518 px ViT-B/14 tower, Vicuna-7B over 1,369 + text tokens)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=518, patch_size=14)
    text = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        tower, lm = CLIPVisionModel(vision), LlamaForCausalLM(text)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tower(pixel_values=torch.randn(1, 3, 518, 518, device="meta"))
        tower_flops = counter.get_total_flops()
        lm(inputs_embeds=torch.randn(1, 1369 + FINDINGS_TOKENS, 4096, device="meta"))
        return float(tower_flops), float(counter.get_total_flops() - tower_flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        experiment = parse_experiment({"name": "b", "data": {"synthetic": {
            "root": str(root / "synthetic"), "n_train": 2048, "n_val": 1, "n_test": 1}}}, "b")
        train_tokenizer(training_texts(experiment.data), root / "tokenizer")
        start_embedded_ray(2, log_to_driver=False)  # as radlab starts its own Ray
        runs = itertools.count()  # each measurement its own Ray Train run, so none resumes another
        rates = alternate({f"{w} worker{'s' if w > 1 else ''}": lambda w=w: tiny_rate(root, w, args.steps,
                                                                                     f"{w}-{next(runs)}")
                           for w in (1, 2)}, args.rounds)
        ray.shutdown()
    report("scaling", "tiny model stage 1 samples/s of steps 21-40 (first epoch, decoding included), 2 workers",
           rates["2 workers"], rates["1 worker"], "1 worker", "samples/s", None)
    tower, lm = paper_forward_flops()
    # The frozen tower runs forward only; the LM runs forward, backward for activation gradients
    # (LoRA's own weight gradients are negligible) and the forward again under gradient checkpointing.
    per_example = tower + 3 * lm
    print(f"paper shape, one example: tower {tower / 1e12:.2f} TFLOP forward, LM {lm / 1e12:.1f} TFLOP forward, "
          f"training {per_example / 1e12:.1f} TFLOP")
    per_gpu = V100_FP16_TFLOPS * 1e12 * ASSUMED_MFU
    for gpus in (4, 8):
        examples_per_s = gpus * per_gpu / per_example
        for stage, batch in (("stage 1", 256), ("stage 2", 64)):
            print(f"{gpus} x V100, {stage} (global batch {batch}): {examples_per_s / batch:.3f} steps/s, "
                  f"{examples_per_s:.2f} examples/s, {697_000 / examples_per_s / 3600:.0f} h per epoch of 697K pairs")


if __name__ == "__main__":
    main()
