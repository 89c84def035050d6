"""Reading an experiment YAML, applying `--set` overrides, and errors that name the file (or the
override) and the field, one line each, so `radlab validate` can print them as they are."""

from __future__ import annotations

import copy
import difflib
import json
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from radlab.config.base import ConfigError, Section
from radlab.config.experiment import Experiment
from radlab.errors import RadlabError


def apply_override(raw: dict, assignment: str) -> dict:
    """Apply one `a.b.c=value` (value parsed as YAML; list items by index) to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected path=value, e.g. stage2.lr=5e-5")
    path, _, text = assignment.partition("=")
    keys = path.strip().split(".")
    value = yaml.safe_load(text) if text.strip() else None
    out = copy.deepcopy(raw)
    node: Any = out
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {assignment}: {'.'.join(keys[:i + 1])}: no such list item")
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {assignment}: {'.'.join(keys[:i + 1])} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {assignment}: {path}: no such list item")
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _section_at(path: list, root: type[Section] = None) -> type[Section] | None:
    """The section class at a field path of an experiment (list items by index), if any."""
    current = root or Experiment
    for part in path:
        if str(part).isdigit():
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        candidates += [arg for c in candidates for arg in typing.get_args(c)]
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, Section)]
        if not sections:
            return None
        current = sections[0]
    return current


def _did_you_mean(loc: list) -> str:
    section = _section_at(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1) if section else []
    return f" (did you mean {close[0]}?)" if close else ""


def _describe(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean([p for p in e["loc"] if not str(p).startswith("function-")])
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def parse_section(cls: type[Section], values: dict, where: str, context: dict | None = None):
    """One section built from values given elsewhere (command-line options); errors as ConfigError."""
    try:
        return cls.model_validate(values, context=context)
    except ValidationError as err:
        raise ConfigError(_describe(err, where)) from None


def parse_experiment(raw: dict, where: str) -> Experiment:
    try:
        return Experiment.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_describe(err, where)) from None


def read_yaml(path: Path, error: type[RadlabError] = ConfigError):
    """A YAML file's content; `error` naming the file for one that cannot be read, is not UTF-8
    text or not YAML."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override and validate an experiment YAML; raise ConfigError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name, data, model, ...)")
    parse_experiment(raw, str(path))
    for assignment in overrides:
        raw = apply_override(raw, assignment)
    # Validated together: fields that must agree (global_batch, micro_batch, workers) can change at once.
    return parse_experiment(raw, f"{path} ({' '.join(f'--set {a}' for a in overrides)})" if overrides else str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys, the form MLflow params take."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(value) if isinstance(value, list) else str(value)}
