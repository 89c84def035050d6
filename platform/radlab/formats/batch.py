"""Padding a batch of encoded examples: right for training, left for generation."""

from __future__ import annotations

import torch

from radlab.formats.prompts import IGNORE_INDEX


def collate(items: list[dict | None], pad_id: int, left_pad: bool = False) -> dict:
    """Pad a batch (right for training, left for generation); count skipped and truncated items."""
    kept = [item for item in items if item is not None]
    batch: dict = {"skipped": len(items) - len(kept), "truncated": sum(i.get("truncated", False) for i in kept)}
    if not kept:
        return batch
    width = max(len(i["input_ids"]) for i in kept)

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (width - len(seq))
        return fill + seq if left_pad else seq + fill

    batch["input_ids"] = torch.tensor([pad(i["input_ids"], pad_id) for i in kept])
    batch["attention_mask"] = torch.tensor([pad([1] * len(i["input_ids"]), 0) for i in kept])
    batch["pixel_values"] = torch.stack([i["pixel_values"] for i in kept])
    if "labels" in kept[0]:
        batch["labels"] = torch.tensor([pad(i["labels"], IGNORE_INDEX) for i in kept])
    return batch
