"""A real two-node Ray cluster on this machine (every listener on loopback): experiments submitted
through the Ray Jobs API, followed to the end, and a training run that loses a node."""

import json
import os
import re
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from radlab import jobs
from radlab.cli import app
from radlab.config import cpu_has_native_bf16, parse_experiment

from .conftest import ROOT, experiment_dict, free_port

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # The nodes inherit this process's environment: put this install's `radlab` on their PATH, as a
    # cluster's setup commands do on its nodes.
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    port = free_port()
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "dashboard_agent_listen_port": free_port(),   # not Ray's fixed default: another Ray may hold it
        "env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "HF_HUB_OFFLINE": "1"},
        # A lost node is noticed within seconds (production clusters use Ray's slower defaults).
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 4}})
    # The second node carries the V100 label Ray gives nodes with V100s, and the V100-32G label the
    # cluster files give the 32 GB ones, so V100-targeted work lands there. It declares one GPU too
    # (there is none): Ray schedules by declared resources.
    worker = nodes.add_node(num_cpus=2, num_gpus=1, resources={"accelerator_type:V100": 1,
                                                               "accelerator_type:V100-32G": 1},
                            dashboard_agent_listen_port=free_port())
    nodes.wait_for_nodes()
    address = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:  # the Jobs API answers once the head's dashboard agent is up
        try:
            jobs.list_jobs(address)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(1)
    yield {"nodes": nodes, "worker": worker, "address": address}
    nodes.shutdown()
    os.environ["PATH"] = path


def _wait(address: str, job_id: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while (state := jobs.status(address, job_id)) not in TERMINAL and time.time() < deadline:
        time.sleep(1)
    return state


def _project(tmp_path: Path, raw: dict) -> Path:
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    (project / "experiments" / "exp.yaml").write_text(yaml.safe_dump(raw))
    return project


def test_submit_runs_an_experiment_on_the_cluster(cluster, mlflow_server, synthetic_root, tmp_path, monkeypatch):
    address = cluster["address"]
    # precision auto, as the quickstart ships: resolved on the cluster by asking its nodes.
    raw = experiment_dict(synthetic_root, tmp_path, tracking={"uri": mlflow_server, "register_as": "radlab-jobs-test"},
                          eval={"compare_untrained": False, "judge": {"cache": str(tmp_path / "judge.sqlite")}},
                          ray={"precision": "auto"})
    raw["name"] = "jobs-test"
    project = _project(tmp_path, raw)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["submit", "experiments/exp.yaml", "--address", address, "--set", "stage2.lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "submitted radlab-jobs-test-" in result.output and "[stage2] step 4/4" in result.output
    assert "models:/radlab-jobs-test@candidate (version 1)" in result.output and "SUCCEEDED" in result.output
    listed = CliRunner().invoke(app, ["jobs", "list", "--address", address])
    assert "jobs-test" in listed.output and "SUCCEEDED" in listed.output
    job_id = re.search(r"submitted (radlab-jobs-test-\S+)", result.output)[1]
    logs = CliRunner().invoke(app, ["jobs", "logs", job_id, "--address", address])
    assert logs.exit_code == 0 and "[stage2] step 4/4" in logs.output
    stopped = CliRunner().invoke(app, ["jobs", "stop", job_id, "--address", address])
    assert stopped.exit_code == 0 and "already finished" in stopped.output
    version = MlflowClient(mlflow_server).get_model_version("radlab-jobs-test", "1")
    assert version.run_id
    native = "bf16" if cpu_has_native_bf16() else "fp32"  # both nodes are this machine
    assert f"ray.precision auto: {native} (every node of the cluster" in result.output
    assert MlflowClient(mlflow_server).get_run(version.run_id).data.params["ray.precision"] == native


def test_precision_auto_with_no_node_to_ask_is_refused_by_name(cluster, synthetic_root, tmp_path):
    """A worker larger than any node: `auto` has no node to ask, so the run stops before training
    with the one line that says what to set."""
    raw = experiment_dict(synthetic_root, tmp_path, stage2={"enabled": False}, eval={"enabled": False},
                          tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None},
                          ray={"precision": "auto", "cpus_per_worker": 8, "max_failures": 0})
    raw["name"] = "auto-no-node"
    project = _project(tmp_path, raw)
    job_id = jobs.submit(cluster["address"], parse_experiment(raw, "t"), project / "experiments/exp.yaml", [], project)
    assert _wait(cluster["address"], job_id, 180) == "FAILED"
    log = jobs.logs(cluster["address"], job_id)
    assert "ray.precision auto: no node of the cluster can hold a worker of 8 CPUs" in log, log[-3000:]
    assert "set ray.precision: fp32" in log and "[stage1] step" not in log


def test_jobs_verbs_name_what_is_wrong(cluster):
    address = cluster["address"]
    result = CliRunner().invoke(app, ["jobs", "logs", "radlab-no-such-job", "--address", address])
    assert result.exit_code == 2 and "radlab-no-such-job" in result.output
    result = CliRunner().invoke(app, ["jobs", "logs", "radlab-no-such-job", "--follow", "--address", address])
    assert result.exit_code == 2 and "radlab-no-such-job" in result.output
    result = CliRunner().invoke(app, ["jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2


def test_the_v100_serve_config_schedules_on_the_v100_node(cluster, tokenizer, tmp_path):
    from radlab.config import ModelConfig
    from radlab.model.build import build_model
    from radlab.model.checkpoint import save_checkpoint

    tiny = ModelConfig.model_validate({"preset": "tiny"})
    folder = save_checkpoint(tmp_path / "ckpt", build_model(tiny, tokenizer, 256), tokenizer, tiny, None, {})
    config = yaml.safe_load((ROOT / "serving/v100.yaml").read_text())
    port = free_port()
    # serving/v100.yaml as it is, but for what this machine lacks: a CUDA device, 4 CPUs per
    # replica, a registry model; one proxy, as both nodes share one loopback.
    config["proxy_location"], config["http_options"] = "HeadOnly", {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["args"].update(model=str(folder), tracking_uri=None, device="cpu", dtype="fp32", api_key_env=None)
    deployment = app["deployments"][0]
    deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1}
    deployment["ray_actor_options"]["num_cpus"] = 1
    assert deployment["ray_actor_options"]["accelerator_type"] == "V100-32G"
    api = f"{cluster['address']}/api/serve/applications/"
    assert httpx.put(api, json=config, timeout=30).status_code == 200
    try:
        deadline, status = time.time() + 180, None
        while time.time() < deadline:
            details = httpx.get(api, timeout=30).json()
            status = details.get("applications", {}).get("radlab", {}).get("status")
            if status in ("RUNNING", "DEPLOY_FAILED"):
                break
            time.sleep(1)
        assert status == "RUNNING", details
        replicas = details["applications"]["radlab"]["deployments"]["ReportServer"]["replicas"]
        assert [r["node_id"] for r in replicas] == [cluster["worker"].node_id]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    finally:
        httpx.delete(api, timeout=30)


def test_a_v100_training_config_schedules_on_the_v100_node(cluster, synthetic_root, tmp_path):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    address = cluster["address"]
    paper = yaml.safe_load((ROOT / "experiments/llava_rad.yaml").read_text())["ray"]
    assert paper["accelerator"] == "V100" and paper["use_gpu"] and paper["precision"] == "fp16"
    assert paper["gpu_memory_gb"] == 32
    # The paper recipe's placement (one GPU per worker, on 32 GB V100 nodes, fp16) on the tiny model;
    # one worker, as the test node declares one GPU.
    placement = {k: paper[k] for k in ("use_gpu", "accelerator", "precision", "gpu_memory_gb")}
    raw = experiment_dict(synthetic_root, tmp_path, stage2={"enabled": False}, eval={"enabled": False},
                          tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None},
                          ray={**placement, "workers": 1, "max_failures": 0, "node_wait_s": 60})
    raw["name"] = "v100-training"
    project = _project(tmp_path, raw)
    job_id = jobs.submit(address, parse_experiment(raw, "t"), project / "experiments/exp.yaml", [], project)
    state = _wait(address, job_id, 300)
    ray_job = JobSubmissionClient(address).get_job_info(job_id).job_id
    workers = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", ray_job)],
                          detail=True, raise_on_missing_output=False)
    assert workers and {w.node_id for w in workers} == {cluster["worker"].node_id}
    # The node declares a GPU it does not have: the worker that landed there sets up the GPU
    # process group (NCCL), which this CPU build of torch does not have.
    log = jobs.logs(address, job_id)
    assert state == "FAILED" and "Distributed package doesn't have NCCL built in" in log, log[-3000:]


@pytest.mark.parametrize("mode", ["replacement", "elastic"])
def test_training_survives_a_lost_node(cluster, synthetic_root, tmp_path, mode):
    """replacement: the run waits for a new node; elastic (min_workers 1): it goes on with what remains."""
    nodes, address = cluster["nodes"], cluster["address"]
    shared = tmp_path / "shared"     # the storage every node sees: checkpoints survive the node
    raw = experiment_dict(synthetic_root, tmp_path, stage1={"max_steps": 30, "checkpoint_every": 5, "log_every": 5},
                          stage2={"enabled": False}, eval={"enabled": False},
                          tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "register_as": None},
                          ray={"storage_path": str(shared), "max_failures": 3, "node_wait_s": 120,
                               "min_workers": 1 if mode == "elastic" else None})
    if mode == "elastic":  # no replacement is coming: after a short wait, go on with fewer workers
        raw["ray"]["node_wait_s"] = 15
    raw["name"] = f"node-loss-{mode}"
    project = _project(tmp_path, raw)
    job_id = jobs.submit(address, parse_experiment(raw, "t"), project / "experiments/exp.yaml", [], project)
    run_dir = None
    deadline = time.time() + 240
    while time.time() < deadline:    # the first checkpoint is on shared storage: lose the node
        snapshots = list(shared.glob(f"node-loss-{mode}-stage1-*/checkpoint_manager_snapshot.json"))
        if snapshots:
            run_dir = snapshots[0].parent
            break
        assert jobs.status(address, job_id) not in TERMINAL, jobs.logs(address, job_id)[-3000:]
        time.sleep(0.2)
    assert run_dir is not None, jobs.logs(address, job_id)[-3000:]
    nodes.remove_node(cluster["worker"], allow_graceful=False)
    if mode == "replacement":
        time.sleep(3)
        cluster["worker"] = nodes.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
    state = _wait(address, job_id, 300)
    log = jobs.logs(address, job_id)
    assert state == "SUCCEEDED", log[-3000:]
    assert "resuming at step" in log
    done = json.loads((run_dir / "radlab_done.json").read_text())
    train_state = torch.load(Path(done["checkpoint"]) / "train_state.pt", weights_only=False)
    assert train_state["step"] == 30 and train_state["resumed_from"]
    assert train_state["samples"] == 30 * 8      # every step counted once: 30 steps of the global batch
    if mode == "elastic":
        assert "on 1 worker)" in log                # it went on with the worker that was left
        cluster["worker"] = nodes.add_node(num_cpus=2, dashboard_agent_listen_port=free_port())
