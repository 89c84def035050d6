"""`make gpu-check`'s script: its checks run on the tiny shapes on the CPU, and it exits cleanly
where there is no GPU."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False,
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
