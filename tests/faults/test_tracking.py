"""A failure anywhere after an experiment's MLflow run opens leaves that run ended, not RUNNING."""

import json

import pytest
from mlflow import MlflowClient

from radlab import pipeline
from radlab.config import parse_experiment

from ..conftest import experiment_dict


def test_a_failure_before_training_ends_the_run(ray_session, synthetic_root, tmp_path, monkeypatch):
    raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    raw["name"] = "fails-early"

    def unreadable(*_):
        raise OSError("the dataset card could not be read")

    monkeypatch.setattr(pipeline, "experiment_cards", unreadable)
    with pytest.raises(OSError, match="dataset card"):
        pipeline.run_experiment(parse_experiment(raw, "t"), json.dumps(raw))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fails-early").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["radlab.error"] == "OSError: the dataset card could not be read"  # why, on its page


def test_a_rerun_reuses_its_stage_runs(ray_session, synthetic_root, tmp_path, monkeypatch):
    """Interrupted after training, then run again: one parent, one run per stage, each step logged
    once; a rerun of the finished experiment opens no empty stage runs either."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": uri}, eval={"enabled": False})
    raw["name"] = "rerun"
    experiment = parse_experiment(raw, "t")

    def interrupted(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_materialise", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_experiment(experiment, json.dumps(raw))
    again = pipeline.run_experiment(experiment, json.dumps(raw))
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("rerun").experiment_id
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if r.data.tags["radlab.stage"] == "experiment"]
    stages = sorted((r.data.tags["radlab.stage"], r.info.status) for r in runs if r not in parents)
    assert [p.info.run_id for p in parents] == [again.parent_run_id]
    assert stages == [("stage1", "FINISHED"), ("stage2", "FINISHED")]
    tags = client.get_run(again.parent_run_id).data.tags
    for run in runs:
        if run not in parents:
            assert tags[f"radlab.{run.data.tags['radlab.stage']}.run"] == run.info.run_id
            assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    third = pipeline.run_experiment(experiment, json.dumps(raw))
    assert third.parent_run_id != again.parent_run_id
    assert len(client.search_runs([experiment_id])) == len(runs) + 1  # a new parent, no new stage runs
    assert client.get_run(third.parent_run_id).data.tags["radlab.stage2.run"] == tags["radlab.stage2.run"]
