"""Report generation with the paper-shaped model as radlab serves it: experiments/llava_rad.yaml's
model built by radlab at its real shapes with random weights (speed does not depend on their
values): the 518 px DINOv2 ViT-B/14 tower (1,369 image tokens), the mlp2x_gelu projector and a
Vicuna-7B-shaped Llama with stage 2's LoRA, folded in and on PyTorch SDPA attention by
`inference_model` as evaluation and serving fold it, in the dtype radlab picks for the card (fp16 on
a V100, bf16 from compute capability 8.0).

    python benchmarks/gpu_generate.py [--batches 1 8 32] [--new-tokens 100]

Prints, per batch size, reports/s and generated tokens/s for 100-token findings and the peak GPU
memory (each the median of three calls after one untimed call); at batch 1, the decode time per token against the memory-bandwidth bound (every weight
read once per token). Exits cleanly on a machine without a GPU; `--tiny` runs the same on the tiny
preset's shapes on the CPU (the tests do).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gpu_check import StandInTokenizer, experiment

ROUNDS = 3  # timed calls per figure, after an untimed one

# Published peak memory bandwidth, GB/s.
BANDWIDTH = {"V100": 900, "T4": 320, "A10": 600, "L4": 300, "A100-SXM4-40GB": 1555, "A100": 2039,
             "H100": 3350, "H200": 4800}


def card_bandwidth(name: str) -> float | None:
    matches = [key for key in BANDWIDTH if key in name]
    return BANDWIDTH[max(matches, key=len)] if matches else None


def build(exp, device: torch.device, dtype: torch.dtype):
    """The model as `radlab serve` holds a stage 2 checkpoint: built by radlab, LoRA applied, then
    folded by `inference_model`."""
    from radlab.model.build import apply_lora, build_model
    from radlab.model.generation import inference_model

    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = build_model(exp.model, StandInTokenizer(exp.model.language.vocab_size), exp.data.max_length)
            model = apply_lora(model, exp.stage2.lora)
    finally:
        torch.set_default_dtype(torch.float32)
    return inference_model(model, device, dtype)


def prompt_ids(exp, instruction: int = 40, after: int = 20) -> list[int]:
    """BOS, an instruction, the image's tokens, the rest of the prompt: the shape of the chat prompt."""
    image_id = exp.model.language.vocab_size
    return [1] + list(range(100, 100 + instruction)) + [image_id] * exp.model.vision.num_image_tokens + \
        list(range(200, 200 + after))


@torch.inference_mode()
def timed_generate(model, exp, batch: int, new_tokens: int, device: torch.device, dtype: torch.dtype) -> float:
    ids = torch.tensor([prompt_ids(exp)] * batch, device=device)
    size = exp.model.vision.image_size
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    synchronize(device)
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--tiny", action="store_true", help="the tiny preset on the CPU, fp32")
    args = parser.parse_args()
    from radlab.model.generation import pick_device_dtype

    if args.tiny:
        device, dtype = pick_device_dtype("cpu", "fp32")
        name, card_gib = "CPU", 0.0
    elif torch.cuda.is_available():
        device, dtype = pick_device_dtype("cuda", "auto")
        name, card_gib = torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory / 1024 ** 3
    else:
        print("no GPU here: gpu_generate.py measures GPU generation; nothing to do (--tiny runs it on the CPU)")
        sys.exit(0)
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    exp = experiment(args.tiny, precision, card_gib)
    model = build(exp, device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    image_tokens = exp.model.vision.num_image_tokens
    lora = "LoRA left unfolded" if any("lora_" in key for key, _ in model.named_parameters()) else "LoRA folded"
    print(f"{name}: {weight_bytes / 1e9:.1f} GB of {dtype} weights ({lora}, {model.config._attn_implementation} "
          f"attention), {image_tokens:,} image tokens, {args.new_tokens}-token findings")
    for batch in args.batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            # The first call pays the allocator's growth of the KV cache, a cost a serving replica
            # pays once: on an H100 it took 11.4 s at batch 1, the next ones 2.6-3.8 s.
            timed_generate(model, exp, batch, args.new_tokens, device, dtype)
            seconds = statistics.median(timed_generate(model, exp, batch, args.new_tokens, device, dtype)
                                        for _ in range(ROUNDS))
        except torch.OutOfMemoryError:
            print(f"batch {batch:3d}: out of memory")
            torch.cuda.empty_cache()
            continue
        peak = f"  peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB" if device.type == "cuda" else ""
        print(f"batch {batch:3d}: {batch / seconds:7.2f} reports/s  {batch * args.new_tokens / seconds:8.1f} tokens/s"
              + peak)
    prefill = statistics.median(timed_generate(model, exp, 1, 1, device, dtype) for _ in range(ROUNDS))
    whole = statistics.median(timed_generate(model, exp, 1, args.new_tokens, device, dtype) for _ in range(ROUNDS))
    per_token = (whole - prefill) / (args.new_tokens - 1)
    achieved = weight_bytes / per_token / 1e9
    bandwidth = card_bandwidth(name)
    print(f"batch 1 decode: {per_token * 1000:.1f} ms/token (prefill with {image_tokens:,} image tokens "
          f"{prefill * 1000:.0f} ms), {achieved:.0f} GB/s of weights read"
          + (f" = {achieved / bandwidth:.0%} of the {bandwidth} GB/s bound" if bandwidth else " (card bandwidth unknown)"))


if __name__ == "__main__":
    main()
