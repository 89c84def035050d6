"""Interrupts end the command wherever it is: runs KILLED, nothing registered, exit 130 / 143."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow import MlflowClient

from ..conftest import experiment_dict


def like_a_foreground_command() -> None:
    """The command takes SIGINT as one started from a terminal does, even where the tests run as a
    background job (whose children inherit SIGINT ignored, and Python then leaves it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_during_evaluation_ends_the_run_and_registers_nothing(synthetic_root, tmp_path, sig, status):
    # Generation long enough to be interrupted in: every test report, up to 96 tokens each.
    raw = experiment_dict(synthetic_root, tmp_path, eval={"limit": 16, "max_new_tokens": 96, "batch_size": 1,
                                                          "compare_untrained": True}, ray={"workers": 1},
                          stage2={"enabled": False})  # one trained stage is enough to evaluate
    raw["name"] = f"interrupt-{sig.name.lower()}"
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "COLUMNS": "200"}
    run = subprocess.Popen([sys.executable, "-m", "radlab.cli", "run", "exp.yaml"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                           preexec_fn=like_a_foreground_command)
    seen = []
    deadline = time.time() + 300
    for line in run.stdout:
        seen.append(line)
        if "evaluation" in line and "─" in line:
            break
        assert time.time() < deadline, "".join(seen[-30:])
    # The console shows each stage once, not the workers' and Ray's own output (--verbose does).
    assert len(seen) < 30 and not any("PlacementGroupCleaner" in line or "RayTrainWorker" in line for line in seen)
    assert any(line.startswith("[stage1] step 4/4 loss") for line in seen), "".join(seen)
    # Inside evaluation: the trained model's findings are generated, judging, grounding and the
    # untrained model's findings are still to come (a fixed sleep could outlast them all).
    for line in run.stdout:
        seen.append(line)
        if line.startswith("generating findings (test):"):
            break
        assert time.time() < deadline, "".join(seen[-30:])
    run.send_signal(sig)
    try:
        tail = run.communicate(timeout=120)[0]
    finally:
        os.killpg(run.pid, signal.SIGKILL) if run.poll() is None else None
    assert run.returncode == status, "".join(seen[-20:]) + tail[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(raw["name"])
    runs = client.search_runs([experiment.experiment_id])
    assert runs and "RUNNING" not in {r.info.status for r in runs}  # the trained stages FINISHED
    parent = next(r for r in runs if r.data.tags.get("radlab.stage") == "experiment")
    assert parent.info.status == "KILLED"
    assert client.search_model_versions("name = 'radlab-test'") == []
