"""What every command shares: the consoles it prints to, the one way a bad input becomes a message,
and the options several verbs take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from radlab.config import ConfigError, Experiment, load_experiment
from radlab.errors import RadlabError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

Overrides = Annotated[list[str], typer.Option("--set", help="override a field: --set stage2.lr=5e-5")]
Address = Annotated[str, typer.Option(help="the cluster's Ray Jobs API", envvar="RAY_API_SERVER_ADDRESS")]


def or_exit(fn, *args, **kwargs):
    """Call fn; a RadlabError (a bad model, folder, table or cluster) is a red message and exit code 2.
    Any other exception is a bug and keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except RadlabError as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None


def fail(message: str) -> typer.Exit:
    """Print a usage mistake in one line; raise what this returns (exit code 2)."""
    err_console.print(message, highlight=False)
    return typer.Exit(2)


def load(path: Path, overrides: list[str] | None) -> Experiment:
    """The experiment of a YAML and its overrides, or every problem with it and exit code 2."""
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as err:
        err_console.print(f"[red]invalid experiment[/]\n{err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
