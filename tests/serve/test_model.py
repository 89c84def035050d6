"""The replica's model: loaded, streamed and counted as the endpoints use it, and kept out of the
driver that binds the deployment."""

import subprocess
import sys

import pytest
import torch

from radlab.config import ModelConfig
from radlab.model.build import build_model
from radlab.model.checkpoint import save_checkpoint
from radlab.model.sampling import Generated, Sampling, StreamFailed
from radlab.serve.model import ServedModel


@pytest.fixture(scope="module")
def served_model(tokenizer, tmp_path_factory) -> ServedModel:
    folder = tmp_path_factory.mktemp("served") / "ckpt"
    config = ModelConfig.model_validate({"preset": "tiny"})
    torch.manual_seed(0)
    save_checkpoint(folder, build_model(config, tokenizer), tokenizer, config, None,
                    {"stage": "stage2", "step": 3, "template": "vicuna_v1"})
    return ServedModel(folder, "cpu", "fp32", 1)


def test_the_driver_binds_the_deployment_without_the_model_code():
    """`radlab serve` imports the application to bind it; torch, transformers and peft are the
    replica's to load (seconds on the driver, before Ray even starts)."""
    code = ("import sys; from radlab.serve.deploy import deploy; from radlab.serve.app import report_app; "
            "report_app({'model': 'models:/m@candidate'}); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_stream_gives_the_unstreamed_findings_piece_by_piece(served_model):
    pixels = torch.zeros(3, 64, 64)
    human = "<image>\nDescribe the findings."
    sampling = Sampling(12)
    *pieces, generated = served_model.stream(pixels, human, sampling, "test-stream")
    whole = served_model.generate([pixels], [human], sampling)[0]
    assert isinstance(generated, Generated) and generated == whole
    assert "".join(pieces) == whole.text
    assert served_model.prompt_tokens(human) > served_model.prompt_tokens("<image>\n") >= 16


def test_a_stream_whose_generation_fails_ends_with_the_error_instead_of_hanging(served_model):
    wrong = torch.zeros(5, 64, 64)  # five channels: the tower's first convolution refuses them
    with pytest.raises(StreamFailed, match="RuntimeError: .*channels"):
        list(served_model.stream(wrong, "<image>\nDescribe the findings.", Sampling(8), "test-stream"))
