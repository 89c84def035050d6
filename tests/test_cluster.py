"""The cluster configs under cluster/: they parse, carry what Ray and KubeRay need, and agree
with the experiment, serving and install configs they start."""

import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from radlab.config import load_experiment

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = {"aws-v100.yaml": {"p3.2xlarge": 1, "p3.8xlarge": 4, "p3dn.24xlarge": 8},
             "azure-v100.yaml": {"Standard_NC6s_v3": 1, "Standard_NC24s_v3": 4, "Standard_ND40rs_v2": 8}}
V100_32GB = {"p3dn.24xlarge", "Standard_ND40rs_v2"}  # the instance types whose V100s have 32 GB
SERVING = yaml.safe_load((ROOT / "serving/v100.yaml").read_text())


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


def test_every_cluster_file_is_checked_here():
    files = {str(p.relative_to(ROOT / "cluster")) for p in (ROOT / "cluster").rglob("*.yaml")}
    assert files == set(LAUNCHERS) | {"kuberay/raycluster.yaml", "kuberay/rayjob-llava-rad.yaml",
                                      "kuberay/rayservice.yaml"}


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_configs(name):
    config = load(name)
    types = config["available_node_types"]
    assert config["head_node_type"] in types and config["provider"]["type"] in ("aws", "azure")
    gpus = {}
    for node in types.values():
        size = node["node_config"].get("InstanceType") or node["node_config"]["azure_arm_parameters"]["vmSize"]
        if node["resources"].get("GPU"):
            gpus[size] = node["resources"]["GPU"]
            # The V100 label lets V100-targeted training scale these up; the V100-32G label, on the
            # 32 GB V100s alone, is what the paper recipe and the V100 serve config ask for.
            assert node["resources"]["accelerator_type:V100"] == node["resources"]["GPU"]
            big = node["resources"]["GPU"] if size in V100_32GB else 0
            assert node["resources"].get("accelerator_type:V100-32G", 0) == big
        assert 0 <= node["min_workers"] <= node["max_workers"] <= config["max_workers"]
    assert gpus == LAUNCHERS[name]
    setup = " && ".join(config["setup_commands"])
    assert "pip install torch==2.13.0" in setup and '[gpu]"' in setup   # the install the README pins
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "mlflow server --host 127.0.0.1" in head


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"]
            if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]


@pytest.mark.parametrize("name,path", [("kuberay/raycluster.yaml", ["spec"]),
                                       ("kuberay/rayjob-llava-rad.yaml", ["spec", "rayClusterSpec"]),
                                       ("kuberay/rayservice.yaml", ["spec", "rayClusterConfig"])])
def test_kuberay_clusters(name, path):
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest
    for key in path:
        spec = spec[key]
    assert spec["rayVersion"] == ray.__version__          # the version the image and pyproject pin
    groups = _gpu_groups(spec)
    assert groups
    for group in groups:
        container = group["template"]["spec"]["containers"][0]
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        declared = yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"]))
        assert declared["accelerator_type:V100"] == int(resources["limits"]["nvidia.com/gpu"])
        # Each manifest runs the paper recipe or serves its champion: 32 GB V100s, labelled as such.
        assert group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "Tesla-V100-SXM2-32GB"
        assert declared["accelerator_type:V100-32G"] == declared["accelerator_type:V100"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == SERVING["applications"][0]["args"]["tracking_uri"]


def test_rayjob_runs_a_shipped_experiment_that_validates():
    entrypoint = shlex.split(load("kuberay/rayjob-llava-rad.yaml")["spec"]["entrypoint"])
    assert entrypoint[:2] == ["radlab", "run"]
    overrides = [entrypoint[i + 1] for i, word in enumerate(entrypoint) if word == "--set"]
    experiment = load_experiment(ROOT / entrypoint[2], overrides)
    assert experiment.ray.address == "auto" and experiment.ray.accelerator == "V100"
    assert experiment.ray.storage_path.startswith("/mnt/radlab")      # the shared volume every pod mounts


def test_rayservice_serves_the_v100_config():
    manifest = load("kuberay/rayservice.yaml")
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert served["applications"] == SERVING["applications"]
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    api_key_env = SERVING["applications"][0]["args"]["api_key_env"]
    assert any(e["name"] == api_key_env and "secretKeyRef" in e["valueFrom"] for e in workers["env"] if "valueFrom" in e)


def test_the_image_pins_what_the_install_pins():
    dockerfile = (ROOT / "cluster/Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"rayproject/ray:{ray.__version__}-" in dockerfile and "torch==2.13.0" in dockerfile
    assert re.search(rf'"ray\[[^\]]*\]=={re.escape(ray.__version__)}"', pyproject)
    image = load("kuberay/raycluster.yaml")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("registry.example.com/radlab:")
