import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from radlab.cli import app
from radlab.config import ConfigError, apply_override, cpu_has_native_bf16, load_experiment, parse_experiment
from radlab.formats.images import ImageTransform
from radlab.model.towers import ModelError
from radlab.pipeline import run_experiment

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


def write(tmp_path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = {"name": "t", "data": {"synthetic": {"root": "data/synthetic"}}}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_experiment_validates(path):
    experiment = load_experiment(path)
    assert experiment.name


def test_shipped_experiments_cover_quickstart_and_paper_recipe():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "llava_rad.yaml"} <= names
    paper = load_experiment(ROOT / "experiments/llava_rad.yaml")
    assert paper.model.vision.num_image_tokens == 37 * 37
    assert paper.stage2.lora.r == 64 and paper.stage2.lora.alpha == 128
    assert paper.stage1.train == ["projector"] and paper.ray.precision == "fp16"


def test_unknown_key_names_file_and_path(tmp_path):
    path = write(tmp_path, {**BASE, "stage2": {"lrr": 1}})
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(err.value) == f"{path}: stage2.lrr: unknown key (did you mean lr?)"


def test_wrong_type_says_what_was_expected(tmp_path):
    path = write(tmp_path, {**BASE, "ray": {"workers": "many"}})
    with pytest.raises(ConfigError, match=r"ray\.workers: Input should be a valid integer"):
        load_experiment(path)


def test_missing_section_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"data: required field is missing"):
        load_experiment(write(tmp_path, {"name": "t"}))
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "absent.yaml")


def test_preset_fills_model_and_fields_override():
    experiment = load_experiment(ROOT / "experiments/quickstart.yaml", ["model.language.layers=3"])
    assert experiment.model.language.layers == 3
    assert experiment.model.language.hidden_size == 128  # still from the tiny preset


def test_overrides_are_validated_like_the_file():
    path = ROOT / "experiments/quickstart.yaml"
    assert load_experiment(path, ["stage2.lr=5e-5"]).stage2.lr == 5e-5
    with pytest.raises(ConfigError, match=r"--set stage2.lr=fast\): stage2.lr: Input should be a valid number"):
        load_experiment(path, ["stage2.lr=fast"])
    with pytest.raises(ConfigError, match="expected path=value"):
        load_experiment(path, ["stage2.lr"])
    # Fields that must agree change together: validated once all overrides are in.
    quickstart = load_experiment(path)
    batch = 3 * quickstart.ray.workers  # not a multiple of the YAML's micro_batch x workers
    assert batch % (quickstart.stage1.micro_batch * quickstart.ray.workers)
    changed = load_experiment(path, [f"stage1.global_batch={batch}", "stage1.micro_batch=3"])
    assert changed.stage1.global_batch == batch and changed.stage1.micro_batch == 3


def test_override_into_list_items():
    raw = {"data": {"mixture": [{"name": "a", "text": ["rule"]}]}}
    assert apply_override(raw, "data.mixture.0.text=[rule, llm]")["data"]["mixture"][0]["text"] == ["rule", "llm"]
    with pytest.raises(ConfigError, match="no such list item"):
        apply_override(raw, "data.mixture.3.text=[rule]")


@pytest.mark.parametrize("ray, message", [
    ({"use_gpu": True, "accelerator": "V100", "precision": "bf16"}, "V100 has no bf16"),
    ({"precision": "fp16"}, "fp16 needs use_gpu"),
    ({"accelerator": "A100"}, "needs use_gpu"),
    ({"use_gpu": True, "deepspeed": "zero3"}, "deepspeed zero3: a checkpoint would hold only rank 0.s partition"),
])
def test_hardware_sanity_is_checked_before_start(tmp_path, ray, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(write(tmp_path, {**BASE, "ray": ray}))


@pytest.mark.parametrize("ray, precision", [
    ({"use_gpu": True, "accelerator": "V100"}, "fp16"),
    ({"use_gpu": True, "accelerator": "T4"}, "fp16"),
    ({"use_gpu": True, "accelerator": "A100"}, "bf16"),
    ({}, "bf16" if cpu_has_native_bf16() else "fp32"),  # the embedded Ray's CPUs are this machine's
])
def test_precision_auto_resolves_to_what_the_hardware_trains_in(tmp_path, monkeypatch, ray, precision):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # not a Ray job's driver, whose CPUs are the cluster's
    experiment = load_experiment(write(tmp_path, {**BASE, "ray": {**ray, "precision": "auto"}}))
    assert experiment.ray.precision == precision
    # Resolved once, so a stage's key and the logged config name the precision trained in.
    assert experiment.model_dump()["ray"]["precision"] == precision


def test_precision_auto_refuses_gpus_it_cannot_name(tmp_path):
    with pytest.raises(ConfigError, match="precision auto on GPUs needs ray.accelerator"):
        load_experiment(write(tmp_path, {**BASE, "ray": {"use_gpu": True, "precision": "auto"}}))


@pytest.mark.parametrize("address, ray_address", [("ray://head:10001", None), (None, "http://head:8265")])
def test_precision_auto_on_a_clusters_cpus_waits_for_the_cluster(tmp_path, monkeypatch, address, ray_address):
    """A cluster's CPUs are not this machine's: validation leaves auto for the run to resolve by
    asking the cluster's nodes (tests/test_jobs.py), whether the address is in the YAML or in the
    RAY_ADDRESS a Ray job's driver gets."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray_address:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    experiment = load_experiment(write(tmp_path, {**BASE, "ray": {"address": address, "precision": "auto"}}))
    assert experiment.ray.precision == "auto"


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 sha_ni\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_tile amx_bf16\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")  # bf16 emulated
    assert not cpu_has_native_bf16(cpuinfo)
    assert not cpu_has_native_bf16(tmp_path / "absent")  # not Linux


def test_lora_and_stage_rules(tmp_path):
    with pytest.raises(ConfigError, match="no lora"):
        load_experiment(write(tmp_path, {**BASE, "stage2": {"train": ["lora"]}}))
    with pytest.raises(ConfigError, match="choose LoRA or full"):
        load_experiment(write(tmp_path, {**BASE, "stage2": {"train": ["lora", "language"], "lora": {}}}))
    with pytest.raises(ConfigError, match="image_size 64 is not a multiple of patch_size 7"):
        load_experiment(write(tmp_path, {**BASE, "model": {"vision": {"patch_size": 7}}}))


def test_cli_validate_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(ROOT / "experiments/quickstart.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = runner.invoke(app, ["validate", str(write(tmp_path, {**BASE, "eval": {"limt": 3}}))])
    assert bad.exit_code == 2
    assert "eval.limt: unknown key" in bad.output
    tower = tmp_path / "siglip"  # a tower folder whose processor squashes to a square, as SigLIP's does
    tower.mkdir()
    (tower / "preprocessor_config.json").write_text(json.dumps(ImageTransform(64, resize="squash").processor_config()))
    cropped = write(tmp_path, {**BASE, "model": {"vision": {"kind": "siglip", "path": str(tower)}}})
    refused = runner.invoke(app, ["validate", str(cropped)])
    assert refused.exit_code == 2
    assert f"model.vision.resize is crop but {tower}/preprocessor_config.json resizes squash: set " \
           "model.vision.resize: squash" in refused.output.replace("\n", "")
    with pytest.raises(ModelError, match="set model.vision.resize: squash"):  # before anything starts
        run_experiment(load_experiment(cropped), "")


def test_stage0_rules(tmp_path):
    base = {"name": "x", "data": {"synthetic": {}}, "stage0": {"enabled": True, "batch": 30}, "ray": {"workers": 4}}
    with pytest.raises(ConfigError, match=r"stage0.batch 30 does not divide across 4 workers \(ray.workers 4"):
        parse_experiment(base, "exp.yaml")
    with pytest.raises(ConfigError, match="stage0.batch 32 does not divide across 3 workers"):
        parse_experiment({**base, "stage0": {"enabled": True, "batch": 32}, "ray": {"workers": 4, "min_workers": 2}}, "e")
    with pytest.raises(ConfigError, match="min_workers 5 exceeds workers 4"):
        parse_experiment({**base, "ray": {"workers": 4, "min_workers": 5}}, "e")
    with pytest.raises(ConfigError, match="stage0 trains a clip image tower; model.vision.kind is siglip"):
        parse_experiment({**base, "stage0": {"enabled": True, "batch": 32}, "model": {"vision": {"kind": "siglip"}}}, "e")
    with pytest.raises(ConfigError, match="freeze_vision_layers 5 exceeds model.vision.layers 2"):
        parse_experiment({**base, "stage0": {"enabled": True, "batch": 32, "freeze_vision_layers": 5}}, "e")
    off = {"enabled": False}
    with pytest.raises(ConfigError, match="stage0, stage1 and stage2 are all disabled"):
        parse_experiment({"name": "x", "data": {"synthetic": {}}, "stage1": off, "stage2": off}, "e")
    only = parse_experiment({"name": "x", "data": {"synthetic": {}}, "stage0": {"enabled": True},
                             "stage1": off, "stage2": off}, "e")
    assert not only.trains_report_model and only.stage0.loss == "clip"


@pytest.mark.parametrize("url, on_site", [
    ("http://127.0.0.1:8000/v1", True), ("http://127.9.9.9/v1", True), ("http://[::1]:8000/v1", True),
    ("http://localhost:8000/v1", True), ("http://judge.localhost/v1", True), ("http://llm.site.internal/v1", True),
    ("http://127.attacker.example/v1", False), ("http://127.0.0.1.attacker.example/v1", False),
    ("http://localhost.attacker.example/v1", False), ("http://10.0.0.5/v1", False), ("https://api.openai.com/v1", False),
    ("http://0177.0.0.1/v1", False), ("", False),
])
def test_the_offsite_rule(url, on_site):
    from radlab.config import is_on_site

    assert is_on_site(url, ["llm.site.internal"]) is on_site


def test_an_offsite_compatible_judge_is_refused_by_validate(tmp_path):
    judge = {"endpoint": "compatible", "base_url": "http://127.attacker.example/v1"}
    path = write(tmp_path, {**BASE, "eval": {"judge": judge}})
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "eval.judge" in result.output and "allow_offsite: true" in result.output
    assert load_experiment(write(tmp_path, {**BASE, "eval": {"judge": {**judge, "allow_offsite": True}}}))
    assert load_experiment(write(tmp_path, {**BASE, "eval": {"judge": {**judge, "site_hosts": ["127.attacker.example"]}}}))


def test_a_sweep_evaluated_on_the_test_set_is_refused(tmp_path):
    raw = {**BASE, "sweep": {"axes": {"stage2.lr": [1e-4, 2e-4]}}}
    with pytest.raises(ConfigError, match="eval.split: a sweep picks its champion.*set eval.split: val"):
        parse_experiment(raw, "t")
    assert parse_experiment({**raw, "eval": {"split": "val"}}, "t").sweep


def test_paths_are_resolved_once_on_the_driver(tmp_path):
    from radlab.config import with_absolute_paths

    (tmp_path / "weights" / "vicuna").mkdir(parents=True)
    raw = {**BASE, "model": {"preset": "tiny", "language": {"path": "weights/vicuna"}, "tokenizer": "lmsys/vicuna-7b-v1.5"},
           "eval": {"judge": {"prompt_file": "prompts/chexprompt.txt"}}}
    resolved = with_absolute_paths(parse_experiment(raw, "t"), tmp_path)
    assert resolved.data.synthetic.root == tmp_path / "data/synthetic"
    assert resolved.model.language.path == str(tmp_path / "weights/vicuna")
    assert resolved.model.tokenizer == "lmsys/vicuna-7b-v1.5"  # a hub id, not a folder here
    assert resolved.eval.judge.prompt_file == tmp_path / "prompts/chexprompt.txt"
    assert resolved.ray.storage_path == str(tmp_path / "radlab_runs/ray")


@pytest.mark.parametrize("uri, expected", [
    ("sqlite:///runs/mlflow.db", "sqlite:///{base}/runs/mlflow.db"),
    ("sqlite:///~/mlflow.db", "sqlite:///{home}/mlflow.db"),
    ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
    ("mlruns", "{base}/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("databricks", "databricks"),
])
def test_a_local_tracking_store_is_resolved_on_the_driver(tmp_path, monkeypatch, uri, expected):
    """Workers log each step to the stage's run from folders of their own: a relative store there
    would be a new, empty one."""
    from radlab.config import with_absolute_paths

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    resolved = with_absolute_paths(parse_experiment({**BASE, "tracking": {"uri": uri}}, "t"), tmp_path / "base")
    assert resolved.tracking.uri == expected.format(base=tmp_path / "base", home=tmp_path / "home")


def test_a_local_store_in_mlflow_tracking_uri_is_resolved_on_the_driver_too(tmp_path, monkeypatch):
    from radlab.tracking.runs import tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert tracking_uri(parse_experiment(BASE, "t").tracking) == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(parse_experiment(BASE, "t").tracking) == "http://127.0.0.1:5000"


def test_paths_under_home_are_expanded_not_made_relative(tmp_path, monkeypatch):
    from radlab.config import missing_inputs, with_absolute_paths

    home = tmp_path / "home"
    (home / "weights" / "tower").mkdir(parents=True)
    (home / "data").mkdir()
    (home / "data" / "test.jsonl").write_text("")
    monkeypatch.setenv("HOME", str(home))
    raw = {**BASE, "data": {"synthetic": {"root": "~/data/synthetic"}, "eval_manifest": "~/data/test.jsonl"},
           "model": {"preset": "tiny", "vision": {"path": "~/weights/tower"}},
           "ray": {"storage_path": "~/runs/ray"}, "tracking": {"artifact_root": "~/runs/artifacts"}}
    experiment = parse_experiment(raw, "t")
    assert experiment.data.eval_manifest == home / "data/test.jsonl"
    assert not [line for line in missing_inputs(experiment) if "eval_manifest" in line]
    resolved = with_absolute_paths(experiment, tmp_path / "elsewhere")
    assert resolved.data.synthetic.root == home / "data/synthetic"
    assert resolved.model.vision.path == str(home / "weights/tower")
    assert resolved.ray.storage_path == str(home / "runs/ray")
    assert resolved.tracking.artifact_root == str(home / "runs/artifacts")


def test_an_unknown_key_suggests_the_nearest_one(tmp_path):
    with pytest.raises(ConfigError, match=r"stage2.lrr: unknown key \(did you mean lr\?\)"):
        load_experiment(write(tmp_path, {**BASE, "stage2": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"data.mixture.0.manifets: unknown key \(did you mean manifest\?\)"):
        parse_experiment({"name": "t", "data": {"mixture": [{"name": "m", "manifets": "x"}], "eval_manifest": "t"}}, "t")


def test_batch_arithmetic_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"stage1.global_batch 32 is not a multiple of stage1.micro_batch 12 x "
                                          r"ray.workers 2 = 24"):
        parse_experiment({**BASE, "stage1": {"global_batch": 32, "micro_batch": 12}}, "t")


def test_validate_names_every_missing_file_and_the_judge_key(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    path = ROOT / "experiments/llava_rad.yaml"
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    for line in ("data.mixture.0.manifest: /data/radlab/llava_rad/train.jsonl does not exist",
                 "model.language.path: /weights/vicuna-7b-v1.5 does not exist",
                 "eval.judge.api_key_env: AZURE_OPENAI_API_KEY is not set in this environment"):
        assert line in result.output
    assert CliRunner().invoke(app, ["validate", str(path), "--skip-files"]).exit_code == 0


def test_cpus_per_worker_defaults_to_the_machines_cores_on_an_embedded_cpu_ray(monkeypatch):
    from radlab.config import RayConfig

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert RayConfig(workers=2, num_cpus=8).cpus_per_worker == 4
    assert RayConfig(workers=3, num_cpus=2).cpus_per_worker == 1
    assert RayConfig(workers=2, num_cpus=8, cpus_per_worker=1.5).cpus_per_worker == 1.5
    assert RayConfig(workers=2, num_cpus=8, use_gpu=True).cpus_per_worker == 1
    assert RayConfig(workers=2, num_cpus=8, address="auto").cpus_per_worker == 1
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a Ray job's driver: the cluster's nodes, not this one
    assert RayConfig(workers=2, num_cpus=8).cpus_per_worker == 1


@pytest.mark.parametrize("ray_section, asked", [
    ({}, None),
    ({"accelerator": "V100"}, "V100"),
    ({"accelerator": "V100", "gpu_memory_gb": 16}, "V100"),
    ({"accelerator": "V100", "gpu_memory_gb": 32}, "V100-32G"),
    ({"accelerator": "A100", "gpu_memory_gb": 80}, "A100-80G"),
    ({"accelerator": "V100", "gpu_memory_gb": 30}, "V100-32G"),  # planned with room to spare
])
def test_a_larger_gpu_variant_is_asked_of_ray_by_its_label(ray_section, asked):
    """A memory plan made for 32 GB V100s must not land on 16 GB ones: the workers ask Ray for the
    variant's label (Ray's own naming, as A100-80G), which the cluster files' 32 GB nodes declare."""
    ray = parse_experiment({**BASE, "ray": {"use_gpu": True, **ray_section}}, "t").ray
    assert ray.placement_accelerator == asked


def test_a_gpu_memory_no_variant_has_is_refused():
    """A label no node declares would leave the workers waiting for ever."""
    with pytest.raises(ConfigError, match=r"ray.*gpu_memory_gb 48: no V100 has more than 32 GB"):
        parse_experiment({**BASE, "ray": {"use_gpu": True, "accelerator": "V100", "gpu_memory_gb": 48}}, "t")


@pytest.mark.parametrize("url", ["s3://bucket/radlab/ray", "abfss://runs@account.dfs.core.windows.net/ray",
                                 "gs://bucket/ray", "file:///tmp/ray", "/shared/radlab/ray", "radlab_runs/ray"])
def test_storage_ray_train_can_keep_runs_in_is_taken(url):
    assert parse_experiment({**BASE, "ray": {"storage_path": url}}, "t").ray.storage_path == url


@pytest.mark.parametrize("url, message", [
    ("s3a://bucket/ray", r"ray.storage_path: s3a:// is no storage Ray Train keeps runs in; use a folder or one of "
                         r"s3://, gs://"),
    ("s3:/bucket/ray", r"ray.storage_path: s3:/bucket/ray is a URL without its '//' \(it would be a local folder "
                       r"named s3:\); write s3://bucket/ray"),
])
def test_a_storage_url_ray_train_cannot_use_is_refused_naming_the_field(url, message):
    """Otherwise pyarrow's error at the first stage, or runs written into a local folder named `s3:`."""
    with pytest.raises(ConfigError, match=message):
        parse_experiment({**BASE, "ray": {"storage_path": url}}, "t")
