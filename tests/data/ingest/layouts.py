"""Tiny datasets written in each source's documented layout (design.md §3b), for the readers."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from radlab.formats.prompts import CHEXPERT


def image(path: Path, fmt: str = "JPEG", size: tuple[int, int] = (40, 32)) -> None:
    """A grayscale image of `size` (width, height) with random pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(path, fmt)


def write_csv(path: Path, rows: list[dict], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def report(findings: str | None, indication: str = "___ with cough") -> str:
    text = f"                FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n INDICATION:  {indication}\n\n"
    if findings is not None:
        text += f" FINDINGS:\n\n {findings}\n\n"
    return text + " IMPRESSION:\n\n No acute process.\n"


# (subject, study, [(dicom_id, view, split)], report findings or None for no section, write report?)
MIMIC_STUDIES = [
    ("10000032", "50414267", [("d1", "PA", "train"), ("d2", "LATERAL", "train")], "Lungs are clear.", True),
    ("10000032", "53189527", [("d3", "AP", "train")], "Mild cardiomegaly.", True),
    ("10000764", "57375967", [("d4", "PA", "test")], None, True),          # no findings section
    ("10000898", "50771383", [("d5", "PA", "validate")], "Small effusion.", False),  # report missing
    ("10000935", "51178377", [("d6", "PA", "test"), ("d7", "AP", "test")], "Pneumothorax on the ___.", True),
]


def mimic(root: Path) -> tuple[Path, Path]:
    """MIMIC-CXR-JPG under root/jpg (gzipped CSVs, as PhysioNet ships them), reports under root/reports."""
    jpg, reports = root / "jpg", root / "reports"
    metadata, splits, labels = [], [], []
    for subject, study, images, findings, has_report in MIMIC_STUDIES:
        folder = Path("files") / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for dicom, view, split in images:
            metadata.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                             "Rows": 32, "Columns": 40})
            splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
            if dicom != "d7":  # d7's JPEG is missing
                image(jpg / folder / f"{dicom}.jpg")
        row = {"subject_id": subject, "study_id": study, **{name: "" for name in CHEXPERT}}
        row["Cardiomegaly"] = "1.0" if "cardiomegaly" in (findings or "") else ""
        row["Pleural Effusion"] = "-1.0"
        labels.append(row)
        if has_report:
            path = reports / folder.with_suffix(".txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report(findings))
    write_csv(jpg / "mimic-cxr-2.0.0-metadata.csv.gz", metadata, gz=True)
    write_csv(jpg / "mimic-cxr-2.0.0-split.csv.gz", splits, gz=True)
    write_csv(jpg / "mimic-cxr-2.0.0-chexpert.csv.gz", labels, gz=True)
    return jpg, reports


def chexpert_plus(root: Path) -> Path:
    rows = []
    for patient, order, split, findings, images in [
        ("patient00001", "1", "train", "Heart size normal.", [("view1_frontal", "Frontal", "PA"), ("view2_lateral", "Lateral", "")]),
        ("patient00002", "1", "valid", "Left effusion.", [("view1_frontal", "Frontal", "AP")]),
        ("patient00003", "2", "train", "", [("view1_frontal", "Frontal", "PA")]),
    ]:
        for name, frontal, ap_pa in images:
            relative = f"{'train' if split == 'train' else 'valid'}/{patient}/study{order}/{name}.jpg"
            image(root / Path(relative).with_suffix(".png"), "PNG")  # the PNG release keeps .jpg names
            rows.append({"path_to_image": relative, "path_to_dcm": relative.replace(".jpg", ".dcm"),
                         "frontal_lateral": frontal, "ap_pa": ap_pa, "deid_patient_id": patient,
                         "patient_report_date_order": order, "report": "...", "section_narrative": "",
                         "section_clinical_history": "Shortness of breath.", "section_history": "",
                         "section_comparison": "", "section_technique": "", "section_procedure_comments": "",
                         "section_findings": findings, "section_impression": "Normal.", "section_end_of_impression": "",
                         "section_summary": "", "section_accession_number": "", "age": "60", "sex": "F",
                         "split": split})
    write_csv(root / "df_chexpert_plus_240401.csv", rows)
    return root


IU_REPORT = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <meta type="rr"/>
  <uId id="CXR{n}"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION">XXXX-year-old male, chest pain.</AbstractText>
    <AbstractText Label="FINDINGS">{findings}</AbstractText>
    <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
  </Abstract></Article></MedlineCitation>
  <parentImage id="CXR{n}_1_IM-000{n}-1001"><figureId>F1</figureId></parentImage>
  <parentImage id="CXR{n}_1_IM-000{n}-2001"><figureId>F2</figureId></parentImage>
</eCitation>
"""


def iu_xray(root: Path) -> tuple[Path, Path]:
    images, reports = root / "NLMCXR_png", root / "ecgen-radiology"
    reports.mkdir(parents=True)
    for n, findings in [(1, "The cardiac silhouette and mediastinum size are within normal limits."),
                        (2, ""), (3, "Heart size normal. No XXXX.")]:
        (reports / f"{n}.xml").write_text(IU_REPORT.format(n=n, findings=findings))
        for k in (1, 2):
            if (n, k) != (3, 2):  # CXR3's second image is missing
                image(images / f"CXR{n}_1_IM-000{n}-{k}001.png", "PNG")
    (reports / "4.xml").write_text("<eCitation><unclosed>")
    return images, reports


def llava_rad_record(subject: str, study: str, dicom: str, method: str, findings, view: str = "PA",
                     reason: str | None = "___ year old woman with dyspnea// eval for\npulmonary edema.") -> dict:
    """One record as the release writes it (PhysioNet llava-rad-mimic-cxr-annotation 1.0.0)."""
    return {"id": f"{subject}_{study}", "image": f"mimic/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg",
            "generate_method": method, "reason": reason, "impression": None, "indication": None, "history": None,
            "view": view, "orientation": "Erect",
            "chexpert_labels": {name: float("nan") for name in CHEXPERT} | {"Edema": 1.0, "Cardiomegaly": -1.0},
            "conversations": [{"from": "human", "value": "<image>\nDescribe the findings of the chest x-ray.\n"},
                              {"from": "gpt", "value": findings}]}


def llava_rad_release(root: Path) -> tuple[Path, Path]:
    """The release's three JSON arrays (NaN for blank labels, as published) and the JPEGs they name,
    under MIMIC-CXR-JPG's files/ folder."""
    import json

    files = root / "mimic-cxr-jpg" / "files"
    annotations = root / "llava-rad-mimic-cxr-annotation"
    annotations.mkdir(parents=True)
    splits = {
        "train": [llava_rad_record("10003502", "50084553", "a1", "rule-based", "Mild pulmonary edema."),
                  llava_rad_record("10003502", "50084553", "a1", "gpt4", "Pulmonary edema is mild."),
                  llava_rad_record("10003502", "50084553", "a2", "rule-based", "Mild pulmonary edema.", view="LATERAL"),
                  llava_rad_record("10000032", "50414267", "b1", "rule-based", None),          # no findings
                  llava_rad_record("10000032", "50414267", "b2", "gpt4", "Clear lungs.", reason=None)],
        "dev": [llava_rad_record("10000764", "57375967", "c1", "gpt4", "Small left effusion.")],
        "test": [llava_rad_record("10000935", "51178377", "d1", "rule-based", "Right pneumothorax."),
                 llava_rad_record("10000935", "51178377", "d1", "gpt4", "There is a right pneumothorax."),
                 llava_rad_record("10000935", "51178377", "d2", "rule-based", "Right pneumothorax.", view="AP")],
    }
    for split, records in splits.items():
        (annotations / f"chat_{split}_MIMIC_CXR_all_gpt4extract_rulebased_v1.json").write_text(json.dumps(records))
        for record in records:
            if record["conversations"][1]["value"] is not None and record["image"] != "mimic/p10/p10000935/s51178377/d2.jpg":
                image(files / record["image"].removeprefix("mimic/"))
    return annotations, files
