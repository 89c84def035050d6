"""Image-report pairs for stage 0's contrastive training and for retrieval evaluation."""

from __future__ import annotations

import torch

from radlab.data.dataset import Example, ImageDataset
from radlab.formats.images import ImageTransform


def encode_report(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of a report ending in </s> (the text tower pools there), cut to `max_length`."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    truncated = len(ids) + 1 > max_length
    return ids[: max_length - 1] + [tokenizer.eos_token_id], truncated


class PairDataset(ImageDataset):
    """(image, findings) pairs for the contrastive stage and retrieval."""

    def __init__(self, examples: list[Example], tokenizer, transform: ImageTransform, max_length: int):
        super().__init__(examples, transform)
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __getitem__(self, index: int) -> dict | None:
        pixels = self.pixels(index)
        if pixels is None:
            return None
        ids, truncated = encode_report(self.tokenizer, self.examples[index].findings, self.max_length)
        return {"pixel_values": pixels, "input_ids": ids, "truncated": truncated, "index": index}


def collate_pairs(items: list[dict | None], pad_id: int) -> dict:
    kept = [item for item in items if item is not None]
    batch: dict = {"skipped": len(items) - len(kept), "truncated": sum(i["truncated"] for i in kept)}
    if not kept:
        return batch
    batch.update(text_batch([i["input_ids"] for i in kept], pad_id))
    batch["pixel_values"] = torch.stack([i["pixel_values"] for i in kept])
    batch["index"] = torch.tensor([i["index"] for i in kept])
    return batch


def text_batch(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(len(s) for s in sequences)
    return {"input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])}
