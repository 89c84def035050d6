"""`radlab data` as a user types it: ingest, stats, structure (against a loopback fake of GPT-4)
and preprocess (on a real Ray)."""

import json

from typer.testing import CliRunner

from radlab.cli import app
from radlab.evaluation.reference_judge import serve_in_thread

from tests.data.ingest.layouts import mimic
from tests.data.test_structure import gpt4_fake

runner = CliRunner()


def test_ingest_stats_structure_preprocess(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jpg, reports = mimic(tmp_path / "mimic")
    result = runner.invoke(app, ["data", "ingest", "mimic-cxr", "--root", str(jpg), "--reports", str(reports),
                                 "--out", "ds"])
    assert result.exit_code == 0, result.output
    assert "missing image" in result.output and "no findings section" in result.output
    assert "ds/train.jsonl" in result.output and "ds/test.jsonl" in result.output

    cards = runner.invoke(app, ["data", "stats", "ds", "--json"])
    assert cards.exit_code == 0, cards.output
    train = next(c for c in json.loads(cards.output) if c["name"] == "ds-train")
    assert train["records"] == 2 and train["views"] == {"PA": 1, "AP": 1} and len(train["digest"]) == 16

    app_, _ = gpt4_fake()
    with serve_in_thread(app_) as url:
        structured = runner.invoke(app, ["data", "structure", "ds", "--base-url", url, "--cost-per-1k-input", "0.01"])
    assert structured.exit_code == 0, structured.output
    assert "2 reports: 2 structured" in structured.output and "cost 0.0040" in structured.output
    assert "2 requests (no rate limit)" in structured.output  # a loopback server is not paced like GPT-4
    assert "choose text with data.mixture[].text: [rule], [llm] or [rule, llm]" in structured.output
    quality = json.loads((tmp_path / "ds" / "structure_quality.json").read_text())
    assert quality["llm_vs_rule"]["text/rouge_l_f1"] > 50
    cards = json.loads(runner.invoke(app, ["data", "stats", "ds", "--json"]).output)
    assert next(c for c in cards if c["name"] == "ds-train")["text"] == {"rule-based": 2, "gpt4": 2}

    shards = runner.invoke(app, ["data", "preprocess", "ds", "--image-root", str(jpg), "--size", "32"])
    assert shards.exit_code == 0, shards.output
    assert "train: 2 images, 0 unreadable" in shards.output and (tmp_path / "ds_32px" / "train").is_dir()


def test_bad_inputs_are_one_line_errors(tmp_path):
    result = runner.invoke(app, ["data", "ingest", "mimic-cxr", "--root", str(tmp_path / "nope"),
                                 "--reports", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--root" in result.output and "not a folder" in result.output
    result = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 2 and "no train/val/test.jsonl manifests" in result.output
    jpg, _ = mimic(tmp_path / "m")
    result = runner.invoke(app, ["data", "structure", str(tmp_path), "--base-url", "https://llm.example.org/v1"])
    assert result.exit_code == 2 and "--opt-in-offsite" in result.output
