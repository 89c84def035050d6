"""The consoles the CLI prints to, and its one way of turning a bad input into a message."""

from __future__ import annotations

import typer
from rich.console import Console

from radlab.errors import RadlabError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def or_exit(fn, *args, **kwargs):
    """Call fn; a RadlabError (a bad model, folder, table or cluster) is a red message and exit code 2.
    Any other exception is a bug and keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except RadlabError as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None
