import json

from radlab.data.ingest import chexpert_plus
from radlab.data.ingest.common import ingest

from tests.data.ingest.layouts import chexpert_plus as layout


def test_chexpert_plus_sections_splits_and_png_release(tmp_path):
    root = layout(tmp_path / "chexpert")
    summary = ingest(chexpert_plus.read(root, None, ["AP", "PA"]), tmp_path / "out", "chexpert-plus")
    assert summary["records"] == {"train": 1, "val": 1, "test": 0}
    assert summary["filtered"] == {"view LATERAL": 1}
    assert summary["problems"] == {"no findings section": 1}
    record = json.loads((tmp_path / "out" / "train.jsonl").read_text())
    assert record["image"] == "train/patient00001/study1/view1_frontal.png"
    assert record["conversations"][1]["value"] == "Heart size normal."
    assert record["indication"] == "Shortness of breath." and record["impression"] == "Normal."
