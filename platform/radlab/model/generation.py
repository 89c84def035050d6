"""Greedy generation of findings from (image tensor, prompt) pairs: one place for evaluation and
serving alike."""

from __future__ import annotations

import torch

from radlab.data.dataset import collate
from radlab.data.prompts import encode_prompt, render_prompt


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
    out = model.generate(
        input_ids=batch["input_ids"].to(parameter.device),
        attention_mask=batch["attention_mask"].to(parameter.device),
        pixel_values=batch["pixel_values"].to(parameter.device, dtype=parameter.dtype),
        max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts]
