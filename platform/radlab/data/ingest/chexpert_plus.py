"""CheXpert Plus: one CSV row per image with the report's sections (`section_findings`,
`section_impression`, `section_history`, ...) next to the images. Its own train/valid split is
kept (it has no test split); only frontal images of the wanted views with findings are records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from radlab.data.ingest.common import IngestError, Study, make_record, split_name
from radlab.data.ingest.tables import find_table, read_rows
from radlab.data.sections import clean

TABLE = "df_chexpert_plus_240401.csv"
COLUMNS = ["path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "patient_report_date_order",
           "section_findings", "section_impression", "section_history", "section_clinical_history",
           "section_comparison", "split"]


def _image(root: Path, relative: str) -> Path | None:
    """The image a row names; the PNG release keeps the CSV's .jpg names, so try both."""
    for candidate in (Path(relative), Path(relative).with_suffix(".png")):
        if (root / candidate).is_file():
            return candidate
    return None


def read(root: Path, table: Path | None, views: list[str]) -> Iterator[tuple[str, Callable[[], Study]]]:
    if not root.is_dir():
        raise IngestError(f"--root {root}: not a folder")
    path = table or find_table(root, [TABLE])
    rows = read_rows(path, COLUMNS)
    studies: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        studies[(row["deid_patient_id"], row["patient_report_date_order"])].append(row)
    wanted = set(views)
    for (patient, order), study_rows in studies.items():
        key = f"{patient}/{order}"

        def build(key=key, patient=patient, study_rows=study_rows) -> Study:
            study = Study(key)
            first = study_rows[0]
            sections = {name: clean(first[f"section_{column}"] or "") for name, column in
                        (("findings", "findings"), ("impression", "impression"), ("comparison", "comparison"),
                         ("history", "history"), ("indication", "clinical_history"))}
            sections = {name: text for name, text in sections.items() if text}
            if not sections.get("findings"):
                study.problem("no findings section", f"{path}: {first['path_to_image']}")
                return study
            for row in study_rows:
                frontal = row["frontal_lateral"].strip().lower() == "frontal"
                view = (row["ap_pa"] or "").strip().upper() if frontal else "LATERAL"
                if view not in wanted:
                    study.filtered[f"view {view or 'unknown'}"] += 1
                    continue
                image = _image(root, row["path_to_image"])
                if image is None:
                    study.problem("missing image", str(root / row["path_to_image"]))
                    continue
                study.records.append(make_record(
                    dataset="chexpert-plus", id=str(image.with_suffix("")), image=str(image),
                    split=split_name(row["split"], str(path)), view=view, sections=sections,
                    patient=patient, study=key))
            return study

        yield key, build
