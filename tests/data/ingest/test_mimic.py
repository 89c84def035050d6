import json

import pytest

from radlab.data.dataset import load_examples
from radlab.data.ingest import mimic
from radlab.data.ingest.common import IngestError, ingest

from tests.data.ingest.layouts import mimic as mimic_layout


def test_mimic_layout_to_split_manifests_with_every_problem_counted(tmp_path):
    jpg, reports = mimic_layout(tmp_path / "mimic")
    out = tmp_path / "out"
    summary = ingest(mimic.read(jpg, reports, ["AP", "PA"]), out, "mimic-cxr")
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in train] == ["d1", "d3"]  # d2 is a lateral view
    first = train[0]
    assert first["image"] == "files/p10/p10000032/s50414267/d1.jpg"
    assert first["conversations"][1] == {"from": "gpt", "value": "Lungs are clear."}
    assert first["indication"] == "___ with cough"  # the de-identification token is kept
    assert "following indication: ___ with cough" in first["conversations"][0]["value"]
    assert first["generate_method"] == "rule-based" and first["view"] == "PA"
    assert train[1]["chexpert_labels"]["Cardiomegaly"] == 1.0
    assert train[1]["chexpert_labels"]["Pleural Effusion"] == -1.0 and train[1]["chexpert_labels"]["Edema"] is None
    assert summary["records"] == {"train": 2, "val": 0, "test": 1}
    assert summary["filtered"] == {"view LATERAL": 1}
    assert summary["problems"] == {"no findings section": 1, "missing report": 1, "missing image": 1}
    assert summary["problem_examples"]["missing image"][0].endswith("s51178377/d7.jpg")
    assert json.loads((out / "summary.json").read_text())["records"] == summary["records"]
    # The manifests load as training examples, images resolved against the dataset root.
    examples = load_examples(out / "train.jsonl", jpg, ["AP", "PA"])
    assert [e.image.is_file() for e in examples] == [True, True]


def test_missing_tables_and_folders_are_named(tmp_path):
    jpg, reports = mimic_layout(tmp_path / "mimic")
    with pytest.raises(IngestError, match="--reports .*no files/ folder"):
        list(mimic.read(jpg, tmp_path, ["PA"]))
    (jpg / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(IngestError, match="mimic-cxr-2.0.0-split.csv"):
        list(mimic.read(jpg, reports, ["PA"]))
