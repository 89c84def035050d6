"""Memory plans: the parameter counts they rest on, the shipped configs against their GPUs, and a
plan over memory refused before anything starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from radlab.cli import app
from radlab.config import ModelConfig, load_experiment, parse_experiment
from radlab.model.build import build_model, count_parameters
from radlab.model.memory import GiB, experiment_plans, language_config, model_shape, serving_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fields", [{}, {"projector": "linear"}, {"language": {"tie_embeddings": False}}])
def test_the_parameter_count_matches_the_built_model(tokenizer, fields):
    model_config = ModelConfig.model_validate({"preset": "tiny", "language": {"vocab_size": len(tokenizer)},
                                               **fields})
    total, _ = count_parameters(build_model(model_config, tokenizer))
    assert model_shape(model_config).total_params == pytest.approx(total, rel=0.01)


def test_the_7b_shapes_are_vicunas():
    shape = model_shape(ModelConfig.model_validate({"preset": "llava-rad-7b"}))
    assert shape.language_params == pytest.approx(6.74e9, rel=0.01)   # Vicuna-7B v1.5 (Llama 2 7B)
    assert shape.vision_params == pytest.approx(86.4e6, rel=0.03)     # ViT-B/14 at 518 px
    assert shape.image_tokens == 37 * 37 and shape.lora_params(64) == pytest.approx(160e6, rel=0.01)


@pytest.mark.parametrize("name", ["llava_rad.yaml", "ablation_llava_rad.yaml"])
def test_the_shipped_paper_configs_fit_the_gpus_they_ask_for(name):
    plans = experiment_plans(load_experiment(ROOT / "experiments" / name))
    assert [p.name for p in plans] == ["stage1", "stage2"] and all(p.fits for p in plans)
    assert all(p.capacity == 32 * GiB for p in plans)


def test_the_v100_serving_config_needs_the_32_gb_v100s():
    args = yaml.safe_load((ROOT / "serving/v100.yaml").read_text())["applications"][0]["args"]
    model = ModelConfig.model_validate({"preset": "llava-rad-7b"})
    plan = serving_plan(model, args["max_batch_size"], 64, args["max_new_tokens"], 2, 32)
    assert plan.fits and not serving_plan(model, args["max_batch_size"], 64, args["max_new_tokens"], 2, 16).fits
    assert serving_plan(model, 1, 64, args["max_new_tokens"], 2, 16).fits  # one V100 16 GB, one report at a time


def test_a_plan_over_memory_is_refused_naming_the_field(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments/llava_rad.yaml").read_text())
    raw["ray"]["gpu_memory_gb"] = 16
    raw["stage1"]["micro_batch"] = 16
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "big.yaml"), "--skip-files"])
    assert result.exit_code == 2
    assert "stage1 does not fit its GPU" in result.output and "lower stage1.micro_batch (now 16)" in result.output


@pytest.mark.parametrize("dtype, language_bytes", [("float16", 2), ("float32", 4), (None, 2)])
def test_a_ddp_plan_counts_the_weights_in_the_dtype_they_are_held(tmp_path, dtype, language_bytes):
    """DDP casts nothing: a language model folder stays in its own dtype (an fp32 7B at
    `precision: fp16` holds 4 bytes a weight, and does not fit a 32 GB V100), the tower, projector and
    LoRA in fp32, whose AdamW keeps two fp32 moments and no master copy. DeepSpeed casts the model to
    the training precision."""
    raw = yaml.safe_load((ROOT / "experiments/llava_rad.yaml").read_text())
    folder = tmp_path / "vicuna"
    folder.mkdir()
    config = {"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32, "intermediate_size": 11008,
              "vocab_size": 32000, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config | ({"torch_dtype": dtype} if dtype else {})))
    raw["model"]["language"] = {"path": str(folder)}
    raw["ray"]["deepspeed"] = "none"
    experiment = parse_experiment(raw, "t")
    shape = model_shape(experiment.model)
    stage2 = experiment_plans(experiment)[1]
    lora = shape.lora_params(experiment.stage2.lora.r)
    assert stage2.parts["weights"] == shape.language_params * language_bytes + (
        shape.vision_params + shape.projector_params + lora) * 4
    assert stage2.parts["optimizer"] == (lora + shape.projector_params) * 8
    assert stage2.fits == (language_bytes == 2)
    zero2 = experiment_plans(parse_experiment({**raw, "ray": {**raw["ray"], "deepspeed": "zero2"}}, "t"))[1]
    assert zero2.parts["weights"] == shape.total_params * 2


def test_a_hub_id_is_planned_by_its_own_config(tmp_path, monkeypatch):
    """A hub id names what gets loaded: its config.json (here from a miniature of the Hugging Face
    cache, as `huggingface-cli download` leaves it) gives the shapes and the dtype the weights are
    held in, not the preset's. Vicuna-13B's fp16 weights do not fit the 32 GB V100s the 7B recipe
    asks for, and full fine-tuning of them under DDP is refused as for a folder."""
    import huggingface_hub

    from radlab.model.build import ModelError, check_half_weights_stepped

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--lmsys--vicuna-13b-v1.5"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLM"], "hidden_size": 5120, "intermediate_size": 13824,
         "num_attention_heads": 40, "num_hidden_layers": 40, "num_key_value_heads": 40, "vocab_size": 32000,
         "tie_word_embeddings": False, "torch_dtype": "float16"}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    raw = yaml.safe_load((ROOT / "experiments/llava_rad.yaml").read_text())
    raw["model"]["language"] = {"path": "lmsys/vicuna-13b-v1.5"}
    experiment = parse_experiment(raw, "t")
    shape = model_shape(experiment.model)
    assert shape.language_params == pytest.approx(13.0e9, rel=0.01)  # Llama 2 13B
    assert not any(plan.fits for plan in experiment_plans(experiment))
    ddp = parse_experiment({**raw, "ray": {**raw["ray"], "deepspeed": "none"},
                            "stage2": {**raw["stage2"], "train": ["projector", "language"], "lora": None}}, "t")
    assert experiment_plans(ddp)[0].parts["weights"] >= shape.language_params * 2
    with pytest.raises(ModelError, match=r"stage2.train: language under DDP would step the float16 weights of "
                                         r"model.language.path lmsys/vicuna-13b-v1.5"):
        check_half_weights_stepped(ddp)
    # Neither a folder nor a hub id, or a hub id that is not cached here: the YAML's shapes are planned.
    assert language_config("weights/vicuna/7b") == {} and language_config("lmsys/vicuna-33b-v1.3") == {}


def test_an_unreachable_hub_is_asked_once(tmp_path):
    """A hub id that is not cached, on a machine whose hub does not answer (here a loopback server
    that answers every request with 503): the plan asks for its config.json once and plans the
    YAML's shapes, instead of hf_hub_download's five retries. (In a process of its own: the hub's
    address is read when huggingface_hub is imported.)"""
    import http.server
    import threading

    asked = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf")}
    try:
        planned = subprocess.run([sys.executable, "-c", "from radlab.model.memory import language_config; "
                                  "print(language_config('lmsys/vicuna-7b-v1.5'))"],
                                 env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert planned.returncode == 0 and planned.stdout.strip() == "{}", planned.stderr
    assert [path for path in asked if path.endswith("config.json")] == ["/lmsys/vicuna-7b-v1.5/resolve/main/config.json"]
