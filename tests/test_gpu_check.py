"""`make gpu-check`'s scripts: their checks run on the tiny shapes on the CPU, and they exit
cleanly where there is no GPU."""

import importlib
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str, script: str = "gpu_check.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})


def test_without_a_gpu_it_says_so_and_exits_0():
    result = _run()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("no GPU here: gpu_check.py checks the 7B path on a GPU; nothing to do "
                                     "(--tiny runs it on the CPU)")


def test_the_checks_on_the_tiny_shapes_resume_deepspeed_exactly():
    result = _run("--tiny")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("fp32:", "  resume"))]
    assert lines[0].startswith("fp32: ") and "s per step of 4 x 96 tokens" in lines[0]
    assert "lr equal" in lines[1] and "largest loss difference 0.0e+00: same run" in lines[1]


def test_generation_runs_the_model_radlab_serves():
    assert _run(script="gpu_generate.py").stdout.strip() == (
        "no GPU here: gpu_generate.py measures GPU generation; nothing to do (--tiny runs it on the CPU)")
    result = _run("--tiny", "--batches", "1", "3", "--new-tokens", "6", script="gpu_generate.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "(LoRA folded, sdpa attention), 16 image tokens, 6-token findings" in lines[0]
    assert [line.split(":")[0] for line in lines[1:]] == ["batch   1", "batch   3", "batch 1 decode"]
    assert all(" reports/s " in line for line in lines[1:3])


def test_a_card_without_bf16_checks_fp16_alone(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    gpu_check = importlib.import_module("gpu_check")
    assert gpu_check.card_precisions(["fp16", "bf16"], (9, 0)) == ["fp16", "bf16"]
    assert capsys.readouterr().out == ""
    assert gpu_check.card_precisions(["fp16", "bf16"], (7, 0)) == ["fp16"]  # a V100
    assert "bf16 left out: this GPU (compute capability 7.0) has no bf16" in capsys.readouterr().out
