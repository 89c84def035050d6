"""The paper's 7B path on one GPU, where the CPU tests cannot reach (`make gpu-check` runs this, then
benchmarks/gpu_generate.py).

experiments/llava_rad.yaml's model at its real shapes with random weights (speed and memory do not
depend on their values): the 518 px ViT-B/14 tower, the mlp2x_gelu projector and a Vicuna-7B-shaped
Llama. For fp16 and for bf16, its stage 2 as radlab's trainer runs it: LoRA (r 64) and the projector,
gradient checkpointing, DeepSpeed ZeRO-2 with the config `radlab.train.deepspeed` builds,
micro-batches of `data.max_length` tokens (the longest a padded batch can be). Printed per precision:
- seconds per optimizer step and tokens per second;
- the peak GPU memory against the memory plan `radlab validate` prints for that stage on this card;
- resume: 6 steps straight, against 3 steps, DeepSpeed's state saved as a training checkpoint saves
  it, a fresh model and engine, the state loaded, 3 more steps: the same lr and the same loss (within
  1e-3: GPU kernels are not bitwise reproducible).
Exits 1 if a plan is exceeded or a resume differs, 0 without a GPU. `--tiny` runs the same checks on
the tiny preset's shapes on the CPU in fp32 (the tests do).
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS, RESUME_AT = 6, 3
TARGET_TOKENS = 128  # supervised tokens at the end of each sequence: the findings


class StandInTokenizer:
    """The sizes of Vicuna's tokenizer with <image> added (32,001 ids, pad = unk = 0): the check feeds
    token ids, never text, and no tokenizer can be downloaded where it may run."""

    def __init__(self, vocab: int):
        self.vocab_size, self.pad_token_id, self.bos_token_id, self.eos_token_id = vocab, 0, 1, 2

    def __len__(self) -> int:
        return self.vocab_size + 1

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab_size


@dataclass
class Outcome:
    losses: list[float]
    lrs: list[float]
    seconds: list[float]


def experiment(tiny: bool, precision: str, card_gib: float):
    """experiments/llava_rad.yaml with the weights' paths unset, one local worker, and no dropout (whose
    random draws a resumed stage does not replay) so that a resume can match the straight run."""
    from radlab.config import load_experiment

    common = ["model.vision.path=null", "model.language.path=null", "ray.address=null", "ray.workers=1",
              "ray.accelerator=null", f"ray.precision={precision}",
              "stage2.lora.dropout=0"]  # LoRA's dropout draws from an RNG that a resume does not restore
    if tiny:
        return load_experiment(ROOT / "experiments/llava_rad.yaml", common + [
            "model.preset=tiny", "data.max_length=96", "ray.use_gpu=false", "ray.gpu_memory_gb=null"])
    return load_experiment(ROOT / "experiments/llava_rad.yaml", common + [f"ray.gpu_memory_gb={card_gib}"])


def build_engine(exp, device: torch.device, dtype: torch.dtype, torch_adam: bool):
    """Stage 2's model and DeepSpeed engine, as the trainer builds them, from seed 0."""
    import deepspeed

    from radlab.model.build import apply_lora, build_model, set_trainable
    from radlab.train.deepspeed import deepspeed_config

    stage = exp.stage2
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = build_model(exp.model, StandInTokenizer(exp.model.language.vocab_size), exp.data.max_length)
            model = apply_lora(model, stage.lora)
    finally:
        torch.set_default_dtype(torch.float32)
    set_trainable(model, stage.train)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    config = deepspeed_config(exp.ray, stage, accumulation=1, world=1, warmup_steps=2, total_steps=STEPS)
    config["optimizer"]["params"]["torch_adam"] |= torch_adam
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine


def batches(exp, device: torch.device, dtype: torch.dtype) -> list[dict]:
    """STEPS micro-batches of `data.max_length` tokens: BOS, the image's tokens, text, findings."""
    generator = torch.Generator().manual_seed(1)
    vision, tokens, micro = exp.model.vision, exp.data.max_length, exp.stage2.micro_batch
    image_id = exp.model.language.vocab_size
    out = []
    for _ in range(STEPS):
        ids = torch.randint(3, image_id, (micro, tokens), generator=generator)
        ids[:, 0] = 1
        ids[:, 1:1 + vision.num_image_tokens] = image_id
        target = min(TARGET_TOKENS, (tokens - 1 - vision.num_image_tokens) // 2)
        labels = torch.full_like(ids, -100)
        labels[:, -target:] = ids[:, -target:]
        pixels = torch.randn(micro, 3, vision.image_size, vision.image_size, generator=generator)
        out.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                    "labels": labels.to(device), "pixel_values": pixels.to(device, dtype)})
    return out


def train(engine, data: list[dict], device: torch.device) -> Outcome:
    outcome = Outcome([], [], [])
    engine.train()
    for batch in data:
        start = time.perf_counter()
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        outcome.losses.append(loss.item())
        if device.type == "cuda":
            torch.cuda.synchronize()
        outcome.seconds.append(time.perf_counter() - start)
        outcome.lrs.append(engine.get_lr()[0])
    return outcome


def release(engine) -> None:
    engine.destroy()
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_precision(exp, precision: str, device: torch.device, torch_adam: bool) -> bool:
    from radlab.model.memory import GiB, stage_plan
    from radlab.train.deepspeed import load_engine_state, save_engine_state

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    data = batches(exp, device, dtype)
    on_gpu = device.type == "cuda"
    baseline = torch.cuda.memory_allocated() if on_gpu else 0
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    engine = build_engine(exp, device, dtype, torch_adam)
    straight = train(engine, data, device)
    peak = torch.cuda.max_memory_allocated() - baseline if on_gpu else 0
    release(engine)

    with tempfile.TemporaryDirectory() as folder:
        engine = build_engine(exp, device, dtype, torch_adam)
        first = train(engine, data[:RESUME_AT], device)
        save_engine_state(engine, Path(folder))
        release(engine)
        engine = build_engine(exp, device, dtype, torch_adam)
        load_engine_state(engine, Path(folder))
        rest = train(engine, data[RESUME_AT:], device)
        release(engine)
    resumed = first.losses + rest.losses
    loss_gap = max(abs(a - b) for a, b in zip(straight.losses, resumed, strict=True))
    lr_equal = straight.lrs == first.lrs + rest.lrs
    resume_ok = lr_equal and loss_gap <= 1e-3 * max(1.0, max(abs(v) for v in straight.losses))

    step_s = sorted(straight.seconds[2:])[len(straight.seconds[2:]) // 2]
    tokens = exp.stage2.micro_batch * exp.data.max_length
    print(f"{precision}: {step_s:.2f} s per step of {exp.stage2.micro_batch} x {exp.data.max_length} tokens "
          f"({tokens / step_s:,.0f} tokens/s); losses {' '.join(f'{v:.3f}' for v in straight.losses)}")
    plan_ok = True
    if on_gpu:
        plan = stage_plan(exp, "stage2")
        plan_ok = peak + plan.parts["overhead"] <= plan.total
        print(f"  peak GPU memory {peak / GiB:.1f} GiB (+ {plan.parts['overhead'] / GiB:.0f} GiB context allowed) "
              f"against the plan's {plan.total / GiB:.1f} GiB: {'within' if plan_ok else 'OVER'} the plan "
              f"(measured / planned {(peak + plan.parts['overhead']) / plan.total:.2f}); {plan.line()}")
    print(f"  resume after step {RESUME_AT}: lr {'equal' if lr_equal else 'DIFFERS'} "
          f"({' '.join(f'{v:.2e}' for v in straight.lrs)}), largest loss difference {loss_gap:.1e}: "
          f"{'same run' if resume_ok else 'DIFFERS'}")
    return plan_ok and resume_ok


def fused_adam_problem() -> str | None:
    """Why DeepSpeed's FusedAdam (the optimizer its config asks for on GPUs, compiled on first use)
    cannot be built here, or None."""
    from deepspeed.ops.op_builder import FusedAdamBuilder

    try:
        FusedAdamBuilder().load(verbose=False)
    except Exception as err:  # noqa: BLE001 - any build failure is reported, and the check goes on
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        hint = f"; TORCH_CUDA_ARCH_LIST is {arch!r}, DeepSpeed's builder reads plain versions such as 9.0" if arch else ""
        return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}{hint}"
    return None


def card_precisions(requested: list[str], capability: tuple[int, int]) -> list[str]:
    """The requested precisions this card runs: bf16 needs compute capability 8.0 (A100, H100, L4);
    a V100 (7.0) or T4 (7.5) checks fp16 alone, as radlab trains it there, and says so."""
    if capability >= (8, 0) or "bf16" not in requested:
        return requested
    print(f"bf16 left out: this GPU (compute capability {capability[0]}.{capability[1]}) has no bf16; "
          "radlab trains in fp16 here")
    return [p for p in requested if p != "bf16"]


def start_process_group(device: torch.device) -> None:
    """A one-process group, as DeepSpeed expects one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny preset on the CPU, fp32")
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    args = parser.parse_args()
    if args.tiny:
        device, precisions, card_gib = torch.device("cpu"), ["fp32"], 0.0
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        card_gib = torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
        print(f"{torch.cuda.get_device_name()} ({card_gib:.0f} GiB), torch {torch.__version__}")
        precisions = card_precisions(args.precisions, torch.cuda.get_device_capability())
    else:
        print("no GPU here: gpu_check.py checks the 7B path on a GPU; nothing to do (--tiny runs it on the CPU)")
        sys.exit(0)
    start_process_group(device)
    problem = fused_adam_problem() if device.type == "cuda" else None
    if problem:
        print(f"DeepSpeed's FusedAdam could not be built here ({problem}); the check uses torch's AdamW")
    results = [check_precision(experiment(args.tiny, precision, card_gib), precision, device, bool(problem))
               for precision in precisions]
    torch.distributed.destroy_process_group()
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
