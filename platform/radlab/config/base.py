"""What every section of the experiment YAML shares: unknown keys refused, `~` expanded, and the
error a YAML or override that does not describe a valid experiment raises."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from radlab.errors import RadlabError


class ConfigError(RadlabError, ValueError):
    """A YAML or override that does not describe a valid experiment."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _home(cls, value: Any) -> Any:
        """A path starting with `~` is under the home folder, as in a shell (the folders named as
        text, which may also be hub ids or URLs, are expanded by `with_absolute_paths`)."""
        return value.expanduser() if isinstance(value, Path) else value


def deep_merge(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it, nested mappings merged key by key (a preset under the
    user's model section); neither is changed."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
