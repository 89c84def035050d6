"""The benchmarks stay runnable: `make benchmark` runs every one of them, and each imports against
the package as it is now (they run by hand, so nothing else would notice a name they use moving)."""

import importlib
import re
import sys

import pytest

from .conftest import ROOT

HELPERS = {"common", "plain_loop", "table"}  # shared by the benchmarks, not benchmarks themselves
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in HELPERS)


def make_target(name: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    return re.search(rf"^{name}:.*?\n((?:\t.*\n)+)", makefile, re.MULTILINE)[1].replace("\\\n", " ")


def test_make_benchmark_and_gpu_check_run_every_benchmark():
    named = set(re.findall(r"\b(\w+)\.py\b", make_target("gpu-check")))
    loop = re.search(r"for script in (.*?); do", make_target("benchmark"))[1]
    assert named | set(loop.split()) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS + sorted(HELPERS))
def test_each_benchmark_imports(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/<name>.py` runs them
    for module in [name, *HELPERS]:
        monkeypatch.delitem(sys.modules, module, raising=False)
    module = importlib.import_module(name)
    assert callable(getattr(module, "main", None)) or name in HELPERS
