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

    def unreadable(_):
        raise OSError("the dataset card could not be read")

    monkeypatch.setattr(pipeline, "experiment_cards", unreadable)
    with pytest.raises(OSError, match="dataset card"):
        pipeline.run_experiment(parse_experiment(raw, "t"), json.dumps(raw))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fails-early").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
