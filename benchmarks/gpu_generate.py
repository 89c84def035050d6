"""Report generation on a GPU with the paper-shaped model: a 518 px ViT-B/14 tower (1,369 image
tokens), the mlp2x_gelu projector and a Vicuna-7B-shaped language model, random weights (speed
does not depend on their values), in the dtype radlab picks for the card (fp16 on a V100).

    python benchmarks/gpu_generate.py [--batches 1 8 32] [--new-tokens 100]

Prints, per batch size, reports/s and generated tokens/s for 100-token findings and the peak GPU
memory; at batch 1, the decode time per token against the memory-bandwidth bound (every weight
read once per token). Exits cleanly on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

# Published peak memory bandwidth, GB/s.
BANDWIDTH = {"V100": 900, "T4": 320, "A10": 600, "L4": 300, "A100-SXM4-40GB": 1555, "A100": 2039,
             "H100": 3350, "H200": 4800}


def card_bandwidth(name: str) -> float | None:
    matches = [key for key in BANDWIDTH if key in name]
    return BANDWIDTH[max(matches, key=len)] if matches else None


def build(dtype: torch.dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              image_size=518, patch_size=14)
    text = LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000, vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    config._attn_implementation = "sdpa"
    torch.set_default_dtype(dtype)
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    return model.eval()


@torch.inference_mode()
def timed_generate(model, batch: int, new_tokens: int, dtype: torch.dtype) -> float:
    prompt = [1] + list(range(100, 140)) + [32000] * 1369 + list(range(200, 220))
    ids = torch.tensor([prompt] * batch, device="cuda")
    pixels = torch.randn(batch, 3, 518, 518, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, do_sample=False,
                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU here: gpu_generate.py measures GPU generation; nothing to do")
        sys.exit(0)
    from radlab.model.generation import pick_device_dtype

    _, dtype = pick_device_dtype("cuda", "auto")
    name = torch.cuda.get_device_name()
    model = build(dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{name}: {weight_bytes / 1e9:.1f} GB of {dtype} weights, {args.new_tokens}-token findings")
    timed_generate(model, 1, 4, dtype)  # warm-up: kernels, allocator
    for batch in args.batches:
        torch.cuda.reset_peak_memory_stats()
        try:
            seconds = timed_generate(model, batch, args.new_tokens, dtype)
        except torch.OutOfMemoryError:
            print(f"batch {batch:3d}: out of memory")
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"batch {batch:3d}: {batch / seconds:7.2f} reports/s  {batch * args.new_tokens / seconds:8.1f} tokens/s  "
              f"peak {peak:5.1f} GiB")
    prefill = timed_generate(model, 1, 1, dtype)
    whole = timed_generate(model, 1, args.new_tokens, dtype)
    per_token = (whole - prefill) / (args.new_tokens - 1)
    achieved = weight_bytes / per_token / 1e9
    bandwidth = card_bandwidth(name)
    print(f"batch 1 decode: {per_token * 1000:.1f} ms/token (prefill with 1,369 image tokens {prefill * 1000:.0f} ms), "
          f"{achieved:.0f} GB/s of weights read"
          + (f" = {achieved / bandwidth:.0%} of the {bandwidth} GB/s bound" if bandwidth else " (card bandwidth unknown)"))


if __name__ == "__main__":
    main()
