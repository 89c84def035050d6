"""The `radlab` command line: one module per group of verbs, each of which parses its arguments,
calls the library and prints what came back. A RadlabError (a user's mistake or an input radlab
cannot use) is one red line and exit status 2; any other exception keeps its traceback."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from radlab.cli import cluster, evaluate, experiments, models, serving
from radlab.cli.common import console
from radlab.cli.data import data_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Train, judge and serve radiology report models.")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        console.print(f"radlab {version('radlab')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print radlab's version and exit")] = False) -> None:
    """Train, judge and serve radiology report models."""
    # radlab shows its own progress; MLflow's bar for every small table it reads back (a sweep reads
    # each trial's per-report table) would interleave with it. A value in the environment is kept.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


for _module in (experiments, evaluate, models, serving, cluster):
    for _name, _command in _module.COMMANDS.items():
        app.command(_name)(_command)
    for _name, _group in getattr(_module, "GROUPS", {}).items():
        app.add_typer(_group, name=_name)
app.add_typer(data_app, name="data")
