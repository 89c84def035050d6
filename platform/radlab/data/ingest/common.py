"""What every dataset reader shares: the record it writes, the split rule for datasets without
official splits, and the resumable writer that turns studies into split manifests and an ingest
summary. Nothing is dropped silently: every skipped image or report is a counted problem, with the
first examples of each kind kept in `summary.json`."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from radlab.errors import RadlabError
from radlab.formats.prompts import CHEXPERT, SPLIT_FILES, findings_prompt

PROGRESS = ".ingest-progress.jsonl"
SUMMARY = "summary.json"
EXAMPLES_PER_PROBLEM = 5
SPLIT_NAMES = {"train": "train", "validate": "val", "valid": "val", "val": "val", "validation": "val", "test": "test"}


class IngestError(RadlabError, ValueError):
    """Input an ingest cannot start from (a missing root or CSV, a bad column mapping)."""


@dataclass
class Study:
    """One report and its images: the unit an ingest writes and resumes by."""
    key: str
    records: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (kind, what and where)
    filtered: Counter = field(default_factory=Counter)  # images left out by choice (views), not problems

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append((kind, detail))


def split_name(value: str, where: str) -> str:
    try:
        return SPLIT_NAMES[str(value).strip().lower()]
    except KeyError:
        raise IngestError(f"{where}: unknown split {value!r} (train, validate/val, test)") from None


def patient_split(patient: str, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """A split from a hash of the patient id, so all of a patient's studies share one split and the
    assignment never changes between runs."""
    fraction = int(hashlib.sha256(patient.encode()).hexdigest()[:8], 16) / 0x100000000
    if fraction < ratios[0]:
        return "train"
    return "val" if fraction < ratios[0] + ratios[1] else "test"


def label_value(raw) -> float | None:
    """CheXpert label cells: 1 positive, 0 negative, -1 uncertain, blank not mentioned."""
    if raw is None or raw == "" or (isinstance(raw, float) and raw != raw):
        return None
    return float(raw)


def make_record(*, dataset: str, id: str, image: str, split: str, view: str, sections: dict[str, str],
                patient: str, study: str, labels: dict | None = None) -> dict:
    """A LLaVA-Rad-style record (design.md §3) with the report's rule-extracted sections."""
    indication = sections.get("indication") or sections.get("history") or ""
    return {
        "id": id,
        "image": image,
        "dataset": dataset,
        "patient_id": patient,
        "study_id": study,
        "split": split,
        "generate_method": "rule-based",
        "view": view,
        "reason": indication,
        "indication": sections.get("indication", ""),
        "history": sections.get("history", ""),
        "comparison": sections.get("comparison", ""),
        "impression": sections.get("impression", ""),
        "chexpert_labels": {name: (labels or {}).get(name) for name in CHEXPERT},
        "conversations": [{"from": "human", "value": findings_prompt(indication)},
                          {"from": "gpt", "value": sections.get("findings", "")}],
    }


def _write_atomically(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    tmp.replace(path)


def ingest(studies: Iterator[tuple[str, Callable[[], Study]]], out: Path, dataset: str, progress=None) -> dict:
    """Build each study not already done (an interrupted ingest resumes from its progress file),
    then write `train/val/test.jsonl` and `summary.json` under `out`; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / PROGRESS
    done: dict[str, dict] = {}
    if progress_file.is_file():
        for line in progress_file.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line being written when the last ingest stopped
            done[entry["key"]] = entry
    resumed = len(done)
    with open(progress_file, "a", encoding="utf-8") as fh:
        for key, build in studies:
            if key not in done:
                study = build()
                entry = {"key": key, "records": study.records, "problems": study.problems,
                         "filtered": dict(study.filtered)}
                fh.write(json.dumps(entry) + "\n")
                fh.flush()
                done[key] = entry
            if progress is not None:
                progress(1)
        os.fsync(fh.fileno())
    summary = _finish(done.values(), out, dataset)
    summary["resumed_studies"] = resumed
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    progress_file.unlink()
    return summary


def _finish(entries: Iterable[dict], out: Path, dataset: str) -> dict:
    problems: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    filtered: Counter = Counter()

    def problem(kind: str, detail: str) -> None:
        problems[kind] += 1
        if len(examples[kind]) < EXAMPLES_PER_PROBLEM:
            examples[kind].append(detail)

    by_split: dict[str, list[dict]] = {split: [] for split in SPLIT_FILES}
    seen: set[str] = set()
    patient_splits: dict[str, set[str]] = defaultdict(set)
    studies = 0
    for entry in entries:
        studies += 1
        filtered.update(entry["filtered"])
        for kind, detail in entry["problems"]:
            problem(kind, detail)
        for record in entry["records"]:
            if record["id"] in seen:
                problem("duplicate id", f"{record['id']} (study {entry['key']}): kept the first")
                continue
            seen.add(record["id"])
            by_split[record["split"]].append(record)
            patient_splits[record["patient_id"]].add(record["split"])
    for patient, splits in patient_splits.items():
        if len(splits) > 1:
            problem("patient in several splits", f"patient {patient}: {sorted(splits)} (the dataset's own splits kept)")
    for split, records in by_split.items():
        _write_atomically(out / SPLIT_FILES[split], (json.dumps(r) for r in records))
    return {
        "dataset": dataset,
        "studies": studies,
        "records": {split: len(records) for split, records in by_split.items()},
        "filtered": dict(filtered),
        "problems": dict(problems),
        "problem_examples": dict(examples),
    }
