"""Greedy generation of findings from (image tensor, prompt) pairs: one place for evaluation and
serving alike."""

from __future__ import annotations

import torch

from radlab.formats.batch import collate
from radlab.formats.prompts import PLAIN_END, encode_prompt, ends_with_eos, render_prompt


def pick_device_dtype(device: str, dtype: str,
                      capability: tuple[int, int] | None = None) -> tuple[torch.device, torch.dtype]:
    """fp32 on CPUs; on GPUs bf16 from compute capability 8.0 (A100, H100, L4), fp16 below
    (V100 is 7.0, T4 7.5). `capability` defaults to the current GPU's."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and capability is None:
        capability = torch.cuda.get_device_capability()
    has_bf16 = capability is not None and capability >= (8, 0)
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else "bf16" if has_bf16 else "fp16"
    elif dtype == "bf16" and device == "cuda" and not has_bf16:
        raise ValueError(f"dtype bf16: this GPU (compute capability {capability[0]}.{capability[1]}, e.g. V100 or "
                         "T4) has no bf16; use fp16 or auto")
    return torch.device(device), {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def inference_model(model, device: torch.device, dtype: torch.dtype):
    """The model as generation wants it: LoRA folded in (no adapter work per token), PyTorch's
    SDPA attention (V100s have no FlashAttention-2), on `device` in `dtype`, in eval mode."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.set_attn_implementation("sdpa")
    return model.to(device, dtype).eval()


def num_image_tokens(model) -> int:
    from radlab.model.build import llava_config

    vision = llava_config(model).vision_config
    return (vision.image_size // vision.patch_size) ** 2


@torch.inference_mode()
def generate_texts(model, tokenizer, pixels: list[torch.Tensor], humans: list[str], template: str,
                   max_new_tokens: int) -> list[str]:
    """Findings for each (image, human turn), decoded greedily in one left-padded batch."""
    tokens = num_image_tokens(model)
    items = [{"input_ids": encode_prompt(tokenizer, render_prompt(template, human), tokens), "pixel_values": p}
             for p, human in zip(pixels, humans)]
    batch = collate(items, tokenizer.pad_token_id, left_pad=True)
    parameter = next(model.parameters())
    # A model trained on the plain template ends its findings with PLAIN_END, not EOS.
    stop = {} if ends_with_eos(template) else {"stop_strings": [PLAIN_END], "tokenizer": tokenizer}
    out = model.generate(
        input_ids=batch["input_ids"].to(parameter.device),
        attention_mask=batch["attention_mask"].to(parameter.device),
        pixel_values=batch["pixel_values"].to(parameter.device, dtype=parameter.dtype),
        max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **stop,
    )
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.split(PLAIN_END)[0].strip() if stop else t.strip() for t in texts]
