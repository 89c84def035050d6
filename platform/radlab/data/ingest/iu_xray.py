"""IU X-ray (Open-I): one XML per report whose AbstractText elements are labelled COMPARISON,
INDICATION, FINDINGS and IMPRESSION, and `parentImage id="CXR<n>_<k>_IM-..."` elements naming
the PNGs. `XXXX` (removed PHI) is kept. There is no official split: reports are split by a hash of
their id (one report per patient). The XML does not say the view, so records carry none."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

from radlab.data.ingest.common import IngestError, Study, make_record, patient_split
from radlab.data.sections import canonical_heading, clean


def read(root: Path, reports: Path) -> Iterator[tuple[str, Callable[[], Study]]]:
    if not root.is_dir():
        raise IngestError(f"--root {root}: not a folder of PNG images")
    files = sorted(reports.glob("*.xml")) if reports.is_dir() else []
    if not files:
        raise IngestError(f"--reports {reports}: no .xml reports found")
    for path in files:
        def build(path=path) -> Study:
            study = Study(path.stem)
            try:
                tree = ET.parse(path).getroot()
            except ET.ParseError as err:
                study.problem("unreadable XML", f"{path}: {err}")
                return study
            sections = {}
            for element in tree.iter("AbstractText"):
                name = canonical_heading(element.get("Label", ""))
                text = clean(element.text or "")
                if name and text:
                    sections[name] = text
            if not sections.get("findings"):
                study.problem("no findings section", str(path))
                return study
            uid = tree.find(".//uId")
            report_id = uid.get("id") if uid is not None else path.stem
            for image in tree.iter("parentImage"):
                name = f"{image.get('id')}.png"
                if not (root / name).is_file():
                    study.problem("missing image", str(root / name))
                    continue
                study.records.append(make_record(
                    dataset="iu-xray", id=image.get("id"), image=name, split=patient_split(report_id), view="",
                    sections=sections, patient=report_id, study=report_id))
            return study

        yield path.stem, build
