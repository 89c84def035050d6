"""The consoles the CLI prints to, and its one way of turning a bad input into a message."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def or_exit(fn, *args, **kwargs):
    """Call fn; a bad model, folder, table or cluster is a red message and exit code 2, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError, RuntimeError) as err:  # ModelError, JobsError, IngestError among them
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None
