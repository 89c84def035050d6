"""The LLaVA-Rad annotation release, read with the release's own semantics."""

import json

import pytest
from typer.testing import CliRunner

from radlab.cli import app
from radlab.config import parse_experiment
from radlab.data.dataset import split_examples
from radlab.data.ingest import llava_rad
from radlab.data.ingest.common import IngestError, ingest

from .layouts import llava_rad_record, llava_rad_release


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_release_is_read_as_its_loader_reads_it(tmp_path):
    annotations, files = llava_rad_release(tmp_path)
    summary = ingest(llava_rad.read(annotations, files), tmp_path / "out", "llava-rad")
    train, val, test = (_lines(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "val", "test"))
    assert [r["id"] for r in train] == ["a1.rule-based", "a1.gpt4", "b2.gpt4"]
    assert [r["id"] for r in val] == ["c1.gpt4"]
    assert [r["id"] for r in test] == ["d1.rule-based"]  # the test split: rule-based text only
    first = train[0]
    assert first["image"] == "p10/p10003502/s50084553/a1.jpg" and first["patient_id"] == "10003502"
    assert first["conversations"][0]["value"] == ("<image>\nProvide a description of the findings in the radiology "
                                                  "image given the following indication: ___ year old woman with "
                                                  "dyspnea// eval for pulmonary edema.")
    assert train[2]["conversations"][0]["value"] == "<image>\nProvide a description of the findings in the radiology image."
    assert first["chexpert_labels"]["Edema"] == 1.0 and first["chexpert_labels"]["Fracture"] is None
    assert summary["filtered"] == {"view LATERAL": 1, "findings not text (skipped by the release)": 1,
                                   "test split: not rule-based (the release evaluates on rule-based text)": 1}
    assert summary["problems"] == {"missing image": 1}  # d2's JPEG is not there


def test_the_ingested_release_trains_and_evaluates_through_a_mixture(tmp_path):
    annotations, files = llava_rad_release(tmp_path)
    result = CliRunner().invoke(app, ["data", "ingest", "llava-rad", "--annotations", str(annotations),
                                      "--image-root", str(files), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    data = parse_experiment({"name": "x", "data": {
        "mixture": [{"name": "mimic", "manifest": str(out / "train.jsonl"), "text": ["rule"]}],
        "val_manifest": str(out / "val.jsonl"), "eval_manifest": str(out / "test.jsonl"), "image_root": str(files)},
        "eval": {"metrics": ["rouge_l"]}}, "t").data
    assert [e.id for e in split_examples(data, "train")] == ["a1.rule-based"]
    assert split_examples(data, "train")[0].image == files / "p10/p10003502/s50084553/a1.jpg"


def test_a_record_without_an_image_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "chat_train_MIMIC_CXR_all_gpt4extract_rulebased_v1.json").write_text(json.dumps(
        [llava_rad_record("1", "2", "x", "gpt4", "ok") | {"image": None}]))
    with pytest.raises(IngestError, match=r"chat_train_MIMIC_CXR_all_gpt4extract_rulebased_v1.json record 0: no image"):
        list(llava_rad.read(tmp_path, tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="none of chat_train_"):
        list(llava_rad.read(tmp_path / "empty", tmp_path))
