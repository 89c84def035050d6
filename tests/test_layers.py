"""The package's layers point one way: each module imports only from the layers listed for it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "radlab"

# layer -> the layers its modules may import (besides their own). Bottom to top.
ALLOWED = {
    "errors": set(),
    "presets": set(),
    "metric_specs": set(),
    "config": {"errors", "presets", "metric_specs"},
    "formats": {"errors"},
    "llm": {"errors", "config"},
    "model": {"errors", "config", "formats"},
    "data": {"errors", "config", "formats", "llm"},
    "tracking": {"errors", "config"},
    "runtime": {"errors", "config"},
    "evaluation": {"errors", "config", "metric_specs", "formats", "llm", "data", "model", "tracking", "runtime",
                   "progress"},
    "train": {"errors", "config", "formats", "data", "model", "tracking", "runtime", "evaluation"},
    "serve": {"errors", "config", "formats", "model", "tracking", "runtime"},
    "pipeline": {"errors", "config", "formats", "data", "model", "tracking", "runtime", "evaluation", "train",
                 "progress"},
    "tune": {"errors", "config", "metric_specs", "formats", "data", "model", "tracking", "runtime", "evaluation", "train",
             "pipeline", "progress"},
    "jobs": {"errors", "config", "runtime"},
    "progress": set(),
}
TOP = {"cli"}  # the command line may import anything; nothing imports it


def layer_of(module: str) -> str:
    return module.split(".")[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("radlab.") and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("radlab."))
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        if module == "radlab":
            continue
        own = layer_of(module)
        assert own in ALLOWED or own in TOP, f"{module}: a new layer; add it to ALLOWED with its place"
        for target in imports(path):
            other = layer_of(target)
            if other in TOP and own not in TOP:
                wrong.append(f"{module} imports the command line ({target})")
            elif own not in TOP and other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} ({own}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)
