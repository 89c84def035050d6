"""Restarts are for faults: a mistake that fails every attempt the same way stops the stage with its
error instead of spending the retries (a killed worker, which is a fault, is in tests/train)."""

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from ray.train import Checkpoint

from radlab.config import parse_experiment
from radlab.model.build import build_model
from radlab.model.checkpoint import save_checkpoint
from radlab.tracking.runs import Tracker
from radlab.train.stages import StageFailed, StageJob, run_stage

from ..conftest import experiment_dict


def test_the_same_error_twice_in_a_row_stops_the_stage_with_it(ray_session, synthetic_root, tokenizer_files,
                                                               tokenizer, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, ray={"max_failures": 5}), "t")
    folder = tmp_path / "stage1-final"
    save_checkpoint(folder, build_model(experiment.model, tokenizer), tokenizer, experiment.model, None,
                    {"stage": "stage1", "step": 4, "final": True, "template": "plain"})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # every attempt of stage 2 fails to load it
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("restarts")).info.run_id
    with pytest.raises(StageFailed, match=r"stage2 stopped: two attempts in a row failed with "
                       r".*stage1-final/model.safetensors: unreadable"):
        run_stage(StageJob(experiment, "stage2", tokenizer_files, tracking, run_id, init_from=Checkpoint(str(folder))))
    # Each failed attempt is in the stage's run with its cause; no retry is left unseen.
    assert client.get_run(run_id).data.metrics["worker_group_failures"] == 2
    causes = Tracker.failures(SimpleNamespace(client=client), run_id)
    assert len(causes) == 2 and all("model.safetensors: unreadable" in cause for cause in causes)
