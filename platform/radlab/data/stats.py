"""Dataset cards: what a manifest holds (records, views, text sources, positive labels, source
datasets, findings length) and the hash that names its exact bytes. `radlab data stats` prints
them; every run logs them to MLflow as dataset inputs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from radlab.config import DataConfig
from radlab.data.dataset import read_manifest, split_examples, synthetic_root
from radlab.formats.prompts import SPLIT_FILES


@dataclass
class Card:
    name: str
    context: str  # train / eval: the role the manifest plays in a run
    path: Path
    digest: str
    profile: dict


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def profile(records: list[dict]) -> dict:
    views, methods, labels, datasets = Counter(), Counter(), Counter(), Counter()
    words = 0
    for record in records:
        views[record.get("view") or "unknown"] += 1
        methods[record.get("generate_method") or "rule-based"] += 1
        datasets[record.get("dataset") or "unnamed"] += 1
        labels.update(name for name, value in (record.get("chexpert_labels") or {}).items() if value == 1.0)
        words += len(next((t["value"] for t in record.get("conversations", []) if t.get("from") == "gpt"), "").split())
    return {"records": len(records), "views": dict(views), "text": dict(methods), "datasets": dict(datasets),
            "positive_labels": dict(labels.most_common()),
            "findings_words_mean": round(words / len(records), 1) if records else 0.0}


def card(path: Path, context: str, name: str | None = None) -> Card:
    return Card(name or path.stem, context, path, file_digest(path), profile(read_manifest(path)))


def experiment_cards(config: DataConfig) -> list[Card]:
    """The manifests a run reads: each training source and the evaluation manifest."""
    if config.synthetic is not None:
        root = synthetic_root(config)
        return [card(root / SPLIT_FILES[split], context, f"synthetic-{split}")
                for split, context in (("train", "train"), ("val", "validation"), ("test", "eval"))]
    cards = [card(source.manifest, "train", source.name) for source in config.mixture]
    cards.append(card(config.val_manifest, "validation", f"val-{config.val_manifest.stem}") if config.val_manifest
                 else carve_out_card(config))
    return cards + [card(config.eval_manifest, "eval", f"eval-{config.eval_manifest.stem}")]


def carve_out_card(config: DataConfig) -> Card:
    """The validation patients carved out of the training manifests, named by a hash of their ids."""
    examples = split_examples(config, "val")
    digest = hashlib.sha256("\n".join(sorted(e.id for e in examples)).encode()).hexdigest()[:16]
    return Card("val-carve-out", "validation", config.mixture[0].manifest, digest,
                {"records": len(examples), "patients": len({e.patient for e in examples}),
                 "val_fraction": config.val_fraction, "val_seed": config.val_seed})


def folder_cards(folder: Path) -> tuple[list[Card], dict | None]:
    """Cards of an ingested (or synthetic) dataset folder's split manifests, and its ingest summary."""
    cards = [card(folder / file, split, f"{folder.name}-{split}")
             for split, file in SPLIT_FILES.items() if (folder / file).is_file()]
    summary_file = folder / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return cards, summary
