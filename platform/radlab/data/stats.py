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
from radlab.data.dataset import METHODS, load_examples, read_manifest, split_examples, synthetic_root
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


def card(path: Path, context: str, name: str | None = None, left_out: Counter | None = None) -> Card:
    """A manifest's card; `left_out`: the records a run leaves out of it, by reason."""
    info = profile(read_manifest(path))
    if left_out is not None:
        info["left_out"] = dict(left_out.most_common())
    return Card(name or path.stem, context, path, file_digest(path), info)


def run_card(config: DataConfig, path: Path, context: str, name: str, root: Path | None,
             methods: list[str] | None = None) -> Card:
    """The card of a manifest as this run reads it, with what it leaves out and why."""
    left_out: Counter = Counter()
    load_examples(path, root, config.views, methods, left_out)
    return card(path, context, name, left_out)


def experiment_cards(config: DataConfig, eval_split: str = "test") -> list[Card]:
    """The manifests a run reads: each training source, the validation set, and the test manifest
    when the run evaluates on it (a run evaluated on val, as every sweep trial is, never opens it)."""
    if config.synthetic is not None:
        root = synthetic_root(config)
        return [run_card(config, root / SPLIT_FILES[split], context, f"synthetic-{split}", root)
                for split, context in (("train", "train"), ("val", "validation"), ("test", "eval"))
                if split != "test" or eval_split == "test"]
    cards = [run_card(config, s.manifest, "train", s.name, s.image_root or config.image_root,
                      [METHODS[t] for t in s.text]) for s in config.mixture]
    if config.val_manifest:
        cards.append(run_card(config, config.val_manifest, "validation", f"val-{config.val_manifest.stem}",
                              config.image_root))
    else:
        cards.append(carve_out_card(config))
    if eval_split != "test":
        return cards
    return cards + [run_card(config, config.eval_manifest, "eval", f"eval-{config.eval_manifest.stem}",
                             config.image_root)]


def left_out_lines(cards: list[Card]) -> list[str]:
    """One line per manifest a run leaves records of, with the count for each reason."""
    lines = []
    for c in cards:
        left_out = c.profile.get("left_out") or {}
        if left_out:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in left_out.items())
            lines.append(f"{c.name}: {sum(left_out.values())} of {c.profile['records']} records left out ({reasons})")
    return lines


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
