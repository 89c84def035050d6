"""Batched greedy generation of findings for a split, with the model's prompt template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from radlab.config import Experiment
from radlab.data.dataset import DataError, patient_of, read_jsonl, split_examples
from radlab.formats.images import ImageError, ImageTransform, load_image
from radlab.model.generation import generate_texts


def generate_findings(model, tokenizer, experiment: Experiment, transform: ImageTransform, split: str,
                      limit: int | None = None, batch_size: int | None = None, max_new_tokens: int | None = None,
                      progress: Callable[[int], None] | None = None,
                      alter: Callable[[Image.Image], Image.Image] | None = None, *, template: str) -> list[dict]:
    """Predictions `{id, patient, image, indication, reference, candidate}` for the split's examples,
    their prompts in the model's `template` (the one it was trained on: `Loaded.template`) and their
    images by its `transform`; `progress(n)` after each batch of n; `alter` changes each image first
    (the grounding checks mirror or blank it).

    An image that does not decode yields a record with `error` set and no candidate, so it is
    counted rather than silently dropped.
    """
    examples = split_examples(experiment.data, split)[:limit]
    size = batch_size or experiment.eval.batch_size
    model.eval()
    predictions = []
    for start in range(0, len(examples), size):
        chunk, pixels, humans, errors = examples[start:start + size], [], [], {}
        for example in chunk:
            try:
                image = load_image(example.image)
                pixels.append(transform(alter(image) if alter else image))
                humans.append(example.human)
            except ImageError as err:
                errors[example.id] = str(err)
        texts = iter(generate_texts(model, tokenizer, pixels, humans, template,
                                    max_new_tokens or experiment.eval.max_new_tokens) if pixels else [])
        for example in chunk:
            record = {"id": example.id, "patient": example.patient, "image": str(example.image),
                      "indication": example.indication, "reference": example.findings}
            if example.id in errors:
                record["error"] = errors[example.id]
            else:
                record["candidate"] = next(texts)
            predictions.append(record)
        if progress is not None:
            progress(len(chunk))
    return predictions


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def join_predictions(predictions_path: Path, references_path: Path | None = None) -> list[dict]:
    """Predictions `{id, candidate[, reference]}` joined by id with references `{id, reference}`.

    Every prediction needs a reference and every reference a prediction; a missing candidate is
    kept and later counted as a failed judgment. Each gets its `patient` (which the intervals
    resample): the prediction's, else its reference record's (patient, patient_id or MIMIC-CXR image
    path), else its id.
    """
    predictions = read_jsonl(predictions_path)
    for number, p in enumerate(predictions, 1):
        if "id" not in p:
            raise DataError(f"{predictions_path}:{number}: a prediction needs an id")
        p["id"] = str(p["id"])
        if "candidate" in p and not isinstance(p["candidate"], str):
            raise DataError(f"{predictions_path}:{number}: candidate must be text")
    if references_path is not None:
        records = {str(r["id"]): r for r in read_jsonl(references_path)}
        references = {i: r.get("reference", r.get("findings")) for i, r in records.items()}
        missing = [p["id"] for p in predictions if p["id"] not in references]
        extra = sorted(references.keys() - {p["id"] for p in predictions})
        if missing or extra:
            raise DataError(
                f"ids differ between {predictions_path} and {references_path}: {len(missing)} prediction(s) "
                f"without a reference (e.g. {missing[:3]}), {len(extra)} reference(s) without a prediction "
                f"(e.g. {extra[:3]})")
        for p in predictions:
            p["reference"] = references[p["id"]]
            p.setdefault("patient", records[p["id"]].get("patient") or patient_of(records[p["id"]]))
    for p in predictions:
        p.setdefault("patient", patient_of(p))
    lacking = [p["id"] for p in predictions if not isinstance(p.get("reference"), str)]
    if lacking:
        raise DataError(f"{predictions_path}: {len(lacking)} prediction(s) without a reference text "
                         f"(e.g. {lacking[:3]}); pass --references")
    return predictions
