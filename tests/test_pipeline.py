"""The whole experiment against a real `mlflow server` on loopback."""

import json

from mlflow import MlflowClient

from radlab.config import parse_experiment
from radlab.pipeline import run_experiment

from .conftest import experiment_dict


def test_run_logs_parent_and_stage_runs_and_registers(ray_session, mlflow_server, synthetic_root, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": mlflow_server})
    experiment = parse_experiment(raw, "t")
    summary = run_experiment(experiment, json.dumps(raw))
    client = MlflowClient(mlflow_server)
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
