"""LLaVA-Rad's released annotations (PhysioNet `llava-rad-mimic-cxr-annotation`) over MIMIC-CXR-JPG.

The release is three JSON arrays, `chat_{train,dev,test}_MIMIC_CXR_all_gpt4extract_rulebased_v1.json`,
of records `{id: "<subject>_<study>", image: "mimic/p10/p10003502/s50084553/<dicom>.jpg",
generate_method: "rule-based" | "gpt4", reason, impression, indication, history, view, orientation,
chexpert_labels, conversations: [human, gpt (the findings)]}`; one study has a record per image and
per method, under one id. Read with the release's own loader's semantics (`llava/utils.py`,
`data_loader_mimic_reason_findings`): a record whose findings are not text is skipped, views other
than AP/PA are left out, the `mimic/` prefix is stripped from the image path (the rest is relative
to MIMIC-CXR-JPG's `files/` folder, given as the image root), the prompt is rebuilt from `reason`
(newlines become spaces; without a reason the sentence ends after "image."), and the test split
keeps rule-based records only. Every record left out is counted with its reason.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from radlab.data.ingest.common import IngestError, Study, label_value, make_record
from radlab.formats.prompts import CHEXPERT, findings_prompt

PATTERNS = {"train": "chat_train_*.json", "val": "chat_dev_*.json", "test": "chat_test_*.json"}
RELEASE_VIEWS = ("AP", "PA")


def release_files(folder: Path) -> dict[str, Path]:
    """The release's file of each split found in `folder`."""
    if not folder.is_dir():
        raise IngestError(f"--annotations {folder}: not a folder")
    found = {}
    for split, pattern in PATTERNS.items():
        matches = sorted(folder.glob(pattern))
        if len(matches) > 1:
            raise IngestError(f"--annotations {folder}: several {pattern} files ({', '.join(m.name for m in matches)})")
        if matches:
            found[split] = matches[0]
    if not found:
        raise IngestError(f"--annotations {folder}: none of {', '.join(PATTERNS.values())} (the release's file names)")
    return found


def _records(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))  # the release writes NaN for blank labels
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IngestError(f"{path}: not a JSON array of records ({err})") from None
    if not isinstance(records, list):
        raise IngestError(f"{path}: not a JSON array of records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise IngestError(f"{path} record {index}: no image path (id {record.get('id') if isinstance(record, dict) else None})")
        if not isinstance(record.get("conversations"), list) or len(record["conversations"]) < 2:
            raise IngestError(f"{path} record {index}: no conversations [human, gpt] (id {record.get('id')})")
    return records


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _reason(record: dict) -> str:
    reason = record.get("reason")
    return reason.replace("\n", " ") if isinstance(reason, str) else ""


def read(annotations: Path, image_root: Path) -> Iterator[tuple[str, Callable[[], Study]]]:
    """Studies of the release, keyed by split and release id, for `ingest`."""
    if not image_root.is_dir():
        raise IngestError(f"--image-root {image_root}: not a folder (MIMIC-CXR-JPG's files/ folder)")
    studies: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for split, path in release_files(annotations).items():
        for record in _records(path):
            studies[(split, str(record.get("id")))].append(record)
    for (split, release_id), records in studies.items():
        def build(split=split, release_id=release_id, records=records) -> Study:
            study = Study(f"{split}/{release_id}")
            for record in records:
                method = record.get("generate_method") or "rule-based"
                findings = record["conversations"][1].get("value")
                if not isinstance(findings, str):
                    study.filtered["findings not text (skipped by the release)"] += 1
                    continue
                if not findings.strip():
                    study.filtered["empty findings"] += 1
                    continue
                if record.get("view") not in RELEASE_VIEWS:
                    study.filtered[f"view {record.get('view') or 'unknown'}"] += 1
                    continue
                if split == "test" and method != "rule-based":
                    study.filtered["test split: not rule-based (the release evaluates on rule-based text)"] += 1
                    continue
                image = PurePosixPath(record["image"].removeprefix("mimic/"))
                if not (image_root / image).is_file():
                    study.problem("missing image", str(image_root / image))
                    continue
                parts = image.parts  # p10/p10003502/s50084553/<dicom>.jpg: the patient and study folders
                patient = next((p[1:] for p in parts if re.fullmatch(r"p\d{4,}", p)), release_id.split("_")[0])
                study_id = next((p[1:] for p in parts if re.fullmatch(r"s\d+", p)), release_id)
                sections = {"findings": findings.strip(), "indication": _text(record.get("indication")),
                            "history": _text(record.get("history")), "impression": _text(record.get("impression"))}
                labels = {name: label_value((record.get("chexpert_labels") or {}).get(name)) for name in CHEXPERT}
                out = make_record(dataset="mimic-cxr", id=f"{image.stem}.{method}", image=str(image), split=split,
                                  view=record["view"], sections=sections, patient=patient, study=study_id,
                                  labels=labels)
                reason = _reason(record)
                out |= {"generate_method": method, "reason": reason, "release_id": release_id,
                        "orientation": _text(record.get("orientation"))}
                out["conversations"][0]["value"] = findings_prompt(reason)
                study.records.append(out)
            return study

        yield f"{split}/{release_id}", build
