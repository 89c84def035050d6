"""The whole experiment against a real `mlflow server` on loopback, and its run page in a real
browser."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from radlab.config import parse_experiment
from radlab.pipeline import run_experiment
from radlab.tracking.runs import Tracker

from .conftest import experiment_dict


@pytest.fixture(scope="module")
def finished(ray_session, mlflow_server, synthetic_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    raw = experiment_dict(synthetic_root, workdir, tracking={"uri": mlflow_server},
                          eval={"judge": {"cache": str(workdir / "judge.sqlite")}})
    experiment = parse_experiment(raw, "t")
    return run_experiment(experiment, json.dumps(raw)), MlflowClient(mlflow_server)


def test_run_logs_parent_and_stage_runs_and_registers(finished):
    summary, client = finished
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["stage2.lora.r"] == "4" and parent.data.tags["radlab.data_digest"]
    metrics = parent.data.metrics
    assert metrics["eval/n_reports"] == 4 and metrics["chexprompt/n_judged"] + metrics["chexprompt/n_failed"] == 4
    assert "untrained/chexprompt/n_reports" in metrics
    # A score is one metric; its interval is in the run's intervals table, not two loose metrics.
    assert not any(key.endswith(("_ci_low", "_ci_high")) for key in metrics)
    intervals = Tracker(parse_experiment({"name": "test-tiny", "data": {"synthetic": {}}, "tracking": {
        "uri": client.tracking_uri}}, "t")).read_table(summary.parent_run_id, "eval/trained/intervals.json")
    k = intervals["metric"].index("chexprompt/significant_mean")
    low, value, high = intervals["ci_low"][k], intervals["value"][k], intervals["ci_high"][k]
    assert low <= value == metrics["chexprompt/significant_mean"] <= high
    assert summary.metrics["chexprompt/significant_mean_ci_high"] == high
    assert parent.data.tags["radlab.judge.prompt_version"] == "radlab-chexprompt-1"
    assert parent.data.tags["radlab.judge.endpoint"] == "synthetic-reference"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert sorted(c.data.tags["radlab.stage"] for c in children) == ["stage1", "stage2"]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert child.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summary.parent_run_id, "model")}
    assert {"model/radlab.json", "model/model.safetensors", "model/tokenizer"} <= artifacts
    version = client.get_model_version("radlab-test", summary.model_version)
    assert version.run_id == summary.parent_run_id
    evaluation = {a.path for a in client.list_artifacts(summary.parent_run_id, "eval/trained")}
    assert {"eval/trained/predictions.jsonl", "eval/trained/judgments.jsonl", "eval/trained/per_report.json",
            "eval/trained/intervals.json", "eval/trained/grounding.json"} <= evaluation
    # The grounding checks, on by default on the synthetic set: every report generated again on a
    # blank image, compared with its real generation; errors per attribute of the reference findings.
    assert 0 <= metrics["grounding/blank_image_rouge_l"] <= 100
    assert 0 <= metrics["grounding/blank_image_identical_share"] <= 1
    assert {"grounding/attribute_errors/finding", "grounding/attribute_errors/side"} <= metrics.keys()
    assert "grounding/blank_image_rouge_l" in intervals["metric"]
    grounding = Tracker(parse_experiment({"name": "test-tiny", "data": {"synthetic": {}}, "tracking": {
        "uri": client.tracking_uri}}, "t")).read_table(summary.parent_run_id, "eval/trained/grounding.json")
    assert len(grounding["id"]) == 4 and {"generated", "mirrored_image", "blank_image"} <= grounding.keys()
    # One chart of error types, trained and untrained on one scale with their intervals.
    assert "eval/chexprompt_error_types.png" in {a.path for a in client.list_artifacts(summary.parent_run_id, "eval")}


def test_run_page_shows_chexprompt_metrics_in_a_browser(finished, mlflow_server, tmp_path):
    summary, client = finished
    experiment_id = client.get_run(summary.parent_run_id).info.experiment_id
    url = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{summary.parent_run_id}/model-metrics"
    flags = chromium(tmp_path)
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    subprocess.run(flags + [f"--screenshot={tmp_path / 'run.png'}", url], capture_output=True, timeout=120)
    # The metrics page groups the charts by prefix, one section per group of CheXprompt scores.
    sections = set(re.findall(r">([\w/]*chexprompt[\w/]*)<", dom))
    assert {"chexprompt", "chexprompt/significant", "chexprompt/insignificant", "untrained/chexprompt"} <= sections
    assert (tmp_path / "run.png").stat().st_size > 10_000


def chromium(tmp_path) -> list[str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the test needs Debian's chromium (make test installs it where apt-get is available)"
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1400,1800"]


def test_the_review_page_sorts_by_errors_in_a_browser(finished, mlflow_server, tmp_path):
    """eval/review.html as the run stores it: a row per report with its image, the reference and both
    models' findings with differing words marked, sorted by the untrained model's errors."""
    summary, client = finished
    page = Path(client.download_artifacts(summary.parent_run_id, "eval/review.html", str(tmp_path)))
    url = f"{page.as_uri()}#sort=errors1"
    dom = subprocess.run(chromium(tmp_path) + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    rows = re.findall(r'<tr data-errors0="(\d*)" data-errors1="(\d*)">', dom)
    assert len(rows) == 4  # eval.limit reports
    untrained = [int(b) for _, b in rows]
    assert untrained == sorted(untrained, reverse=True) and untrained[0] > 0  # sorted in the page, by its script
    assert dom.count('src="data:image/png;base64,') == 4 and "<mark>" in dom
    assert "trained findings" in dom and "untrained findings" in dom
    subprocess.run(chromium(tmp_path) + [f"--screenshot={tmp_path / 'review.png'}", url], capture_output=True,
                   timeout=120)
    assert (tmp_path / "review.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def encoder_run(ray_session, mlflow_server, synthetic_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("encoder")
    raw = experiment_dict(synthetic_root, workdir, tracking={"uri": mlflow_server, "register_as": None},
                          stage0={"enabled": True, "max_steps": 6, "batch": 16, "log_every": 2, "checkpoint_every": 3},
                          stage1={"enabled": False}, stage2={"enabled": False})
    raw["name"] = "test-encoder"
    # Relative paths, as the shipped YAMLs write them: `radlab eval` must find the encoder the run kept.
    (workdir / "synthetic").symlink_to(synthetic_root)
    raw["data"]["synthetic"]["root"], raw["ray"]["storage_path"] = "synthetic", "ray"
    (workdir / "encoder.yaml").write_text(json.dumps(raw))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        summary = run_experiment(parse_experiment(raw, "t"), json.dumps(raw))
    return summary, workdir


def test_an_encoder_only_run_logs_retrieval_and_its_encoder(encoder_run, mlflow_server):
    summary, workdir = encoder_run
    client = MlflowClient(mlflow_server)
    parent = client.get_run(summary.parent_run_id)
    assert summary.model_version is None and summary.checkpoint.parent.name == "encoders"
    metrics = parent.data.metrics
    assert metrics["retrieval/n_pairs"] == 16 and "untrained/retrieval/i2t_R1" in metrics
    assert "zero_shot/auroc_mean" in metrics and "chexprompt/n_reports" not in metrics
    # Each Recall@K with its interval in the intervals table, and trained against untrained pair by pair.
    intervals = Tracker(parse_experiment({"name": "test-tiny", "data": {"synthetic": {}}, "tracking": {
        "uri": mlflow_server}}, "t")).read_table(summary.parent_run_id, "eval/trained/intervals.json")
    k = intervals["metric"].index("retrieval/i2t_R1")
    assert intervals["ci_low"][k] <= metrics["retrieval/i2t_R1"] == intervals["value"][k] <= intervals["ci_high"][k]
    assert summary.metrics["retrieval/i2t_R1_ci_high"] == intervals["ci_high"][k]
    assert not any(key.endswith(("_ci_low", "_ci_high")) for key in metrics)
    assert "trained_vs_untrained/retrieval/i2t_R1/p_value" in metrics
    assert "trained_vs_untrained/zero_shot/auroc_mean/p_value" in metrics
    assert "eval/trained_vs_untrained.json" in {a.path for a in client.list_artifacts(summary.parent_run_id, "eval")}
    artifacts = {a.path for a in client.list_artifacts(summary.parent_run_id, "encoder")}
    assert {"encoder/radlab.json", "encoder/model.safetensors", "encoder/config.json"} <= artifacts
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert child.data.tags["radlab.stage"] == "stage0"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "loss")] == [2, 3, 4, 6]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val/retrieval/t2i_R5")] == [6]
    assert client.get_metric_history(child.info.run_id, "contrastive_batch")[-1].value == 16


def test_eval_task_retrieval_reads_the_experiments_encoder(encoder_run, finished, monkeypatch):
    from typer.testing import CliRunner

    from radlab.cli import app

    summary, workdir = encoder_run
    report_model = str(finished[0].checkpoint.resolve())
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "encoder.yaml", "--task", "retrieval"])
    assert result.exit_code == 0, result.output
    assert "retrieval on test (16 pairs)" in result.output and "retrieval/i2t_R1" in result.output
    result = runner.invoke(app, ["eval", "encoder.yaml", "--task", "retrieval", "--checkpoint", report_model])
    assert result.exit_code == 2 and "not a stage 0 encoder" in result.output
