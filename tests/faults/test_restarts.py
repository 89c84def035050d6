"""Restarts are for faults: a mistake that fails every attempt the same way stops the stage with its
error instead of spending the retries (a killed worker, which is a fault, is in tests/train)."""

import pytest
from ray.train import Checkpoint

from radlab.config import parse_experiment
from radlab.model.build import build_model
from radlab.model.checkpoint import save_checkpoint
from radlab.train.stages import StageFailed, run_stage

from ..conftest import experiment_dict


def test_the_same_error_twice_in_a_row_stops_the_stage_with_it(ray_session, synthetic_root, tokenizer_dir,
                                                               tokenizer, tmp_path):
    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path, ray={"max_failures": 5}), "t")
    folder = tmp_path / "stage1-final"
    save_checkpoint(folder, build_model(experiment.model, tokenizer), tokenizer, experiment.model, None,
                    {"stage": "stage1", "step": 4, "final": True, "template": "plain"})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # every attempt of stage 2 fails to load it
    with pytest.raises(StageFailed, match=r"stage2 stopped: two attempts in a row failed with "
                       r".*stage1-final/model.safetensors: unreadable"):
        run_stage(experiment, "stage2", Checkpoint(str(folder)), tokenizer_dir, "", None)
