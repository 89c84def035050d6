"""Shared fixtures: one Ray instance, one `mlflow server` and one small synthetic set per session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radlab.runtime import free_loopback_port as free_port

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from radlab.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic"), n_train=96, n_val=8, n_test=16, image_size=64, seed=0)


@pytest.fixture(scope="session")
def tokenizer_dir(synthetic_root, tmp_path_factory) -> Path:
    from radlab.config import parse_experiment
    from radlab.data.dataset import training_texts
    from radlab.formats.tokenizer import train_tokenizer

    experiment = parse_experiment(experiment_dict(synthetic_root, tmp_path_factory.mktemp("x")), "test")
    folder = tmp_path_factory.mktemp("tokenizer") / "tok"
    train_tokenizer(training_texts(experiment.data), folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer_files(tokenizer_dir):
    """The session's tokenizer as a stage's job carries it to the workers."""
    from radlab.formats.tokenizer import TokenizerFiles

    return TokenizerFiles.read(tokenizer_dir)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from radlab.formats.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def experiment_dict(synthetic_root: Path, workdir: Path, **sections) -> dict:
    """A tiny experiment on the session's synthetic set: a few steps per stage, 2 workers."""
    raw = {
        "name": "test-tiny",
        "data": {"synthetic": {"root": str(synthetic_root), "n_train": 96, "n_val": 8, "n_test": 16}},
        "model": {"preset": "tiny"},
        "stage1": {"max_steps": 4, "lr": 2e-3, "global_batch": 8, "micro_batch": 4,
                   "train": ["projector", "language"], "template": "plain", "log_every": 1, "checkpoint_every": 2},
        "stage2": {"max_steps": 4, "lr": 2e-3, "global_batch": 8, "micro_batch": 4, "train": ["projector", "lora"],
                   "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "log_every": 1, "checkpoint_every": 2},
        "eval": {"limit": 4, "max_new_tokens": 16, "batch_size": 4, "show": 2},
        "tracking": {"artifact_root": str(workdir / "artifacts"), "register_as": "radlab-test"},
        "ray": {"workers": 2, "storage_path": str(workdir / "ray")},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from radlab.runtime import start_embedded_ray

    start_embedded_ray(4, {"HF_HUB_OFFLINE": "1"})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback, with a sqlite store and an artifact folder."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, env=env)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError((folder / "server.log").read_text()[-2000:])
            time.sleep(0.5)
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
