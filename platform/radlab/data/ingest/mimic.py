"""MIMIC-CXR-JPG images with the MIMIC-CXR free-text reports.

Layout (design.md §3b): `<root>/files/p10/p10000032/s50414267/<dicom_id>.jpg`, the CSVs
`mimic-cxr-2.0.0-{metadata,split,chexpert}.csv[.gz]` at `<root>`, and reports as
`<reports>/files/p10/p10000032/s50414267.txt`. Official splits (patient-level) are kept; only
frontal views (AP, PA by default) with a non-empty findings section become records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from radlab.data.ingest.common import IngestError, Study, label_value, make_record, split_name
from radlab.data.ingest.tables import find_table, read_rows
from radlab.data.sections import extract_sections
from radlab.formats.prompts import CHEXPERT

PREFIX = "mimic-cxr-2.0.0"


def study_folder(subject: str, study: str) -> Path:
    return Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


def read(root: Path, reports: Path, views: list[str]) -> Iterator[tuple[str, Callable[[], Study]]]:
    if not root.is_dir():
        raise IngestError(f"--root {root}: not a folder")
    if not (reports / "files").is_dir():
        raise IngestError(f"--reports {reports}: no files/ folder of report texts")
    metadata = read_rows(find_table(root, [f"{PREFIX}-metadata.csv"]), ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    split_table = find_table(root, [f"{PREFIX}-split.csv"])
    splits = {row["dicom_id"]: split_name(row["split"], str(split_table))
              for row in read_rows(split_table, ["dicom_id", "split"])}
    labels = {row["study_id"]: {name: label_value(row.get(name)) for name in CHEXPERT}
              for row in read_rows(find_table(root, [f"{PREFIX}-chexpert.csv"]), ["study_id"])}
    images: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in metadata:
        images[(row["subject_id"], row["study_id"])].append(row)
    wanted = set(views)
    for (subject, study_id), rows in images.items():
        def build(subject=subject, study_id=study_id, rows=rows) -> Study:
            study = Study(f"s{study_id}")
            folder = study_folder(subject, study_id)
            report_path = reports / folder.with_suffix(".txt")
            try:
                sections = extract_sections(report_path.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                study.problem("missing report", str(report_path))
                return study
            if not sections.get("findings"):
                study.problem("no findings section", str(report_path))
                return study
            for row in rows:
                view = (row["ViewPosition"] or "").strip().upper()
                if view not in wanted:
                    study.filtered[f"view {view or 'unknown'}"] += 1
                    continue
                image = folder / f"{row['dicom_id']}.jpg"
                if not (root / image).is_file():
                    study.problem("missing image", str(root / image))
                    continue
                if row["dicom_id"] not in splits:
                    study.problem("not in the split table", row["dicom_id"])
                    continue
                study.records.append(make_record(
                    dataset="mimic-cxr", id=row["dicom_id"], image=str(image), split=splits[row["dicom_id"]],
                    view=view, sections=sections, patient=subject, study=study_id, labels=labels.get(study_id)))
            return study

        yield f"s{study_id}", build
