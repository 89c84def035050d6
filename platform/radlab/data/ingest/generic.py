"""Any table of image paths and report texts (CSV or JSONL) with a column mapping in YAML:

```yaml
columns: {id: image_id, image: path, findings: findings, impression: impression,
          indication: indication, view: view, split: split, patient: patient_id}
labels: [Cardiomegaly, Edema]     # columns holding CheXpert labels (1, 0, -1, blank)
```
`report:` (a free-text column whose sections are extracted) can stand in for `findings:`; with
neither, the dataset is labels-only and `radlab data structure --synthesize-from-labels` writes
its findings. Without a split column, patients are split by a hash of their id."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from radlab.config import read_yaml
from radlab.data.ingest.common import IngestError, Study, label_value, make_record, patient_split, split_name
from radlab.data.ingest.tables import read_rows
from radlab.data.sections import clean, extract_sections
from radlab.formats.prompts import CHEXPERT


class Columns(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    image: str
    findings: str | None = None
    report: str | None = None
    impression: str | None = None
    indication: str | None = None
    history: str | None = None
    comparison: str | None = None
    view: str | None = None
    split: str | None = None
    patient: str | None = None


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: Columns
    labels: list[str] = []

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        unknown = [name for name in labels if name not in CHEXPERT]
        if unknown:
            raise ValueError(f"labels {unknown} are not CheXpert observations ({', '.join(CHEXPERT)})")
        return labels

    @model_validator(mode="after")
    def _text(self) -> Mapping:
        columns = self.columns
        if columns.findings is not None and columns.report is not None:
            raise ValueError("columns: map one of findings (a findings column) or report (free text to extract from)")
        if columns.findings is None and columns.report is None and not self.labels:
            raise ValueError("columns: map findings or report, or give labels for a labels-only dataset "
                             "(findings written later by radlab data structure --synthesize-from-labels)")
        return self

    @property
    def labels_only(self) -> bool:
        return self.columns.findings is None and self.columns.report is None


def load_mapping(path: Path) -> Mapping:
    try:
        return Mapping.model_validate(read_yaml(path, IngestError) or {})
    except ValidationError as err:
        lines = [f"{path}: {'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors()]
        raise IngestError("\n".join(lines)) from None


def _rows(table: Path, required: list[str]) -> list[dict]:
    if table.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise IngestError(f"{table}:{number}: not valid JSON ({err.msg})") from None
        missing = sorted({c for row in rows for c in required if c not in row})
        if missing:
            raise IngestError(f"{table}: rows lack mapped column(s) {', '.join(missing)}")
        return rows
    return read_rows(table, required)


def read(root: Path, table: Path, mapping: Mapping, views: list[str]) -> Iterator[tuple[str, Callable[[], Study]]]:
    if not table.is_file():
        raise IngestError(f"--table {table}: file not found")
    columns = mapping.columns
    mapped = {k: v for k, v in columns.model_dump().items() if v is not None}
    rows = _rows(table, list(mapped.values()) + mapping.labels)
    wanted = set(views)
    for number, row in enumerate(rows, 1):
        def build(row=row, number=number) -> Study:
            key = str(row[columns.id])
            study = Study(f"row {number}")
            where = f"{table} row {number}"
            if columns.report:
                sections = extract_sections(str(row[columns.report] or ""))
            else:
                sections = {name: clean(str(row[column] or "")) for name, column in mapped.items()
                            if name in ("findings", "impression", "indication", "history", "comparison")}
            if not sections.get("findings") and not mapping.labels_only:
                study.problem("no findings section", where)
                return study
            view = str(row[columns.view] or "").strip().upper() if columns.view else ""
            if view and view not in wanted:
                study.filtered[f"view {view}"] += 1
                return study
            image = str(row[columns.image])
            if not (root / image).is_file():
                study.problem("missing image", f"{where}: {root / image}")
                return study
            patient = str(row[columns.patient]) if columns.patient else key
            split = split_name(row[columns.split], where) if columns.split else patient_split(patient)
            labels = {name: label_value(row.get(name)) for name in mapping.labels}
            study.records.append(make_record(dataset=table.stem, id=key, image=image, split=split, view=view,
                                             sections=sections, patient=patient, study=key, labels=labels))
            return study

        yield f"row {number}", build
