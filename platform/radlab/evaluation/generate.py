"""Batched greedy generation of findings for a split, with the model's stage-2 prompt template."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from radlab.config import Experiment
from radlab.data.dataset import ReportDataset, collate, split_examples


@torch.inference_mode()
def generate_findings(model, tokenizer, experiment: Experiment, split: str, limit: int | None = None,
                      batch_size: int | None = None, max_new_tokens: int | None = None,
                      progress=None) -> list[dict]:
    """Predictions `{id, image, indication, reference, candidate}` for the split's examples.

    An image that does not decode yields a record with `error` set and no candidate, so it is
    counted rather than silently dropped.
    """
    examples = split_examples(experiment.data, split)[:limit]
    vision = experiment.model.vision
    template = experiment.stage2.template if experiment.stage2.enabled else experiment.stage1.template
    dataset = ReportDataset(examples, tokenizer, template, vision.num_image_tokens, vision.image_size,
                            experiment.data.max_length, with_target=False)
    loader = DataLoader(dataset, batch_size=batch_size or experiment.eval.batch_size,
                        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id, left_pad=True))
    model.eval()
    device = next(model.parameters()).device
    candidates: dict[int, str] = {}
    for batch in loader:
        if "input_ids" in batch:
            out = model.generate(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                pixel_values=batch["pixel_values"].to(device, dtype=next(model.parameters()).dtype),
                max_new_tokens=max_new_tokens or experiment.eval.max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            candidates.update(zip(batch["index"], (t.strip() for t in texts)))
        if progress is not None:
            progress(len(batch.get("index", [])) + batch["skipped"])
    predictions = []
    for index, example in enumerate(examples):
        record = {"id": example.id, "image": str(example.image), "indication": example.indication,
                  "reference": example.findings}
        if index in candidates:
            record["candidate"] = candidates[index]
        else:
            record["error"] = "image could not be decoded"
        predictions.append(record)
    return predictions


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
