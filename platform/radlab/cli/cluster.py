"""`radlab submit` and `radlab jobs`: experiments run as Ray jobs on a cluster (the Ray Jobs API)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from radlab import jobs
from radlab.cli.common import Address, Overrides, console, load, or_exit
from radlab.progress import print_table

jobs_app = typer.Typer(no_args_is_help=True, help="Experiments running on a Ray cluster (Ray Jobs API).")


def _stream_log(address: str, job_id: str) -> None:
    for chunk in jobs.follow(address, job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def submit(path: Path, overrides: Overrides = None, address: Address = "http://127.0.0.1:8265",
           project: Annotated[Path, typer.Option(help="the folder shipped as the job's working directory")] = Path("."),
           follow: Annotated[bool, typer.Option(help="stream the job's log until it ends")] = True) -> None:
    """Run an experiment on a Ray cluster as a Ray job; print its id (and follow its log)."""
    experiment = load(path, overrides)
    job_id = or_exit(jobs.submit, address, experiment, path, overrides or [], project)
    console.print(f"submitted [bold]{job_id}[/] to {address}")
    if not follow:
        return
    or_exit(_stream_log, address, job_id)
    final = or_exit(jobs.status, address, job_id)
    console.print(f"job {job_id}: {final}")
    if final != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(address: Address = "http://127.0.0.1:8265") -> None:
    """The cluster's jobs, oldest first."""
    from rich.table import Table

    table = Table("id", "status", "experiment", "entrypoint")
    for job in or_exit(jobs.list_jobs, address):
        table.add_row(job["id"], job["status"], job["experiment"], job["entrypoint"])
    print_table(console, table)


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: Address = "http://127.0.0.1:8265",
              follow: Annotated[bool, typer.Option(help="keep streaming until the job ends")] = False) -> None:
    """Print a job's log."""
    if follow:
        or_exit(_stream_log, address, job_id)
    else:
        sys.stdout.write(or_exit(jobs.logs, address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: Address = "http://127.0.0.1:8265") -> None:
    """Stop a running job."""
    stopped = or_exit(jobs.stop, address, job_id)
    console.print(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")


COMMANDS = {"submit": submit}
GROUPS = {"jobs": jobs_app}
