"""The whole experiment against a real `mlflow server` on loopback, and its run page in a real
browser."""

import json
import re
import shutil
import subprocess

import pytest
from mlflow import MlflowClient

from radlab.config import parse_experiment
from radlab.pipeline import run_experiment

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
    assert "chexprompt/significant_mean_ci_high" in metrics and "untrained/chexprompt/n_reports" in metrics
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
            "eval/trained/chexprompt_error_types.png"} <= evaluation


def test_run_page_shows_chexprompt_metrics_in_a_browser(finished, mlflow_server, tmp_path):
    summary, client = finished
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "the test needs Debian's chromium (make test installs it where apt-get is available)"
    experiment_id = client.get_run(summary.parent_run_id).info.experiment_id
    url = f"{mlflow_server}/#/experiments/{experiment_id}/runs/{summary.parent_run_id}/model-metrics"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--window-size=1400,1800"]
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    subprocess.run(flags + [f"--screenshot={tmp_path / 'run.png'}", url], capture_output=True, timeout=120)
    # The metrics page groups the charts by prefix, one section per group of CheXprompt scores.
    sections = set(re.findall(r">([\w/]*chexprompt[\w/]*)<", dom))
    assert {"chexprompt", "chexprompt/significant", "chexprompt/insignificant", "untrained/chexprompt"} <= sections
    assert (tmp_path / "run.png").stat().st_size > 10_000
