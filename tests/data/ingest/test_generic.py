import json

import pytest

from radlab.data.ingest import generic
from radlab.data.ingest.common import IngestError, ingest

from tests.data.ingest.layouts import image, write_csv

MAPPING = """
columns: {id: image_id, image: path, report: text, view: view, patient: patient}
labels: [Cardiomegaly]
"""


def test_csv_with_mapping_free_text_and_duplicate_ids(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        image(tmp_path / "img" / name, "PNG")
    write_csv(tmp_path / "table.csv", [
        {"image_id": "a", "path": "a.png", "text": "FINDINGS: Big heart.", "view": "pa", "patient": "p1", "Cardiomegaly": "1"},
        {"image_id": "b", "path": "b.png", "text": "FINDINGS: Clear.", "view": "LL", "patient": "p2", "Cardiomegaly": ""},
        {"image_id": "a", "path": "c.png", "text": "FINDINGS: Clear.", "view": "AP", "patient": "p3", "Cardiomegaly": "0"},
        {"image_id": "d", "path": "d.png", "text": "FINDINGS: Clear.", "view": "AP", "patient": "p4", "Cardiomegaly": ""},
    ])
    (tmp_path / "map.yaml").write_text(MAPPING)
    mapping = generic.load_mapping(tmp_path / "map.yaml")
    summary = ingest(generic.read(tmp_path / "img", tmp_path / "table.csv", mapping, ["AP", "PA"]),
                     tmp_path / "out", "mine")
    assert summary["problems"] == {"duplicate id": 1, "missing image": 1}
    assert summary["filtered"] == {"view LL": 1}
    records = [json.loads(line) for split in ("train", "val", "test")
               for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
    assert [(r["id"], r["image"], r["view"]) for r in records] == [("a", "a.png", "PA")]
    assert records[0]["chexpert_labels"]["Cardiomegaly"] == 1.0


def test_mapping_errors_name_the_field(tmp_path):
    (tmp_path / "map.yaml").write_text("columns: {id: i, image: p}\nlabels: [Heart]\n")
    with pytest.raises(IngestError) as err:
        generic.load_mapping(tmp_path / "map.yaml")
    assert "map.yaml: labels: Value error, labels ['Heart']" in str(err.value)
    (tmp_path / "map.yaml").write_text("columns: {id: i, image: p}\n")
    with pytest.raises(IngestError, match="map findings or report, or give labels"):
        generic.load_mapping(tmp_path / "map.yaml")
    (tmp_path / "map.yaml").write_text("columns: {id: i, image: p, findings: f, colour: c}\n")
    with pytest.raises(IngestError, match="columns.colour: Extra inputs"):
        generic.load_mapping(tmp_path / "map.yaml")
    (tmp_path / "t.jsonl").write_text('{"i": "x", "p": "x.png"}\n')
    mapping = generic.Mapping.model_validate({"columns": {"id": "i", "image": "p", "findings": "f"}})
    with pytest.raises(IngestError, match="t.jsonl: rows lack mapped column.s. f"):
        list(generic.read(tmp_path, tmp_path / "t.jsonl", mapping, ["PA"]))
