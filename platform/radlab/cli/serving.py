"""`radlab serve`: deploy a report model with Ray Serve, or answer one image and stop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from radlab.cli.common import console, fail, or_exit


def serve_command(
    model: Annotated[str, typer.Option(help="folder, runs:/<id>/model, models:/<name>/<version|latest> or @alias")] = None,
    config: Annotated[Path, typer.Option(help="a Serve config whose first application's args to use "
                                              "(default: serving/local.yaml where it exists)")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default: the config's http_options.host, "
                                           "else 127.0.0.1); any other than loopback turns auth on")] = None,
    port: int = 8000,
    once: Annotated[Path, typer.Option(help="deploy, send this image to /v1/reports, print, shut down")] = None,
    indication: str = "",
    verbose: Annotated[bool, typer.Option(help="show Ray's and Serve's own output (replica and access logs)")] = False,
) -> None:
    """Deploy a checkpoint with Ray Serve, on 127.0.0.1 unless told otherwise (CPU by default)."""
    from radlab.serve.deploy import application_args, deploy, report_once, undeploy

    if once is not None and not once.is_file():
        raise fail(f"--once {once}: no such image file")
    args, host, actor_options = or_exit(application_args, model, config, host)
    with console.status(f"deploying {args['model']}"):
        url, logs = or_exit(deploy, args, actor_options, host, port, verbose)
    if logs:
        console.print(f"Ray's and Serve's own logs: {logs} (--verbose shows them here)", highlight=False,
                      soft_wrap=True)
    console.print(f"serving {args['model']} at {url}  (POST /v1/reports, /v1/chat/completions)", highlight=False,
                  soft_wrap=True)
    if once is None:
        import time

        from radlab.serve.deploy import APP_NAME, HealthWatch

        watch = HealthWatch(APP_NAME)
        try:
            while True:
                time.sleep(2)
                for line in watch.changes():  # a replica Serve restarted is said, with Serve's reason
                    console.print(f"{time.strftime('%H:%M:%S')} {line}"
                                  + (f" (the replica's own output: {logs})" if logs and "-> UNHEALTHY" in line else ""),
                                  highlight=False, soft_wrap=True)
        except KeyboardInterrupt:
            undeploy()
        return
    try:
        answer = or_exit(report_once, url, once, indication, args)
    finally:
        undeploy()
    console.print(f"[bold]{once}[/] -> {answer['findings']}\n(model {answer['model']} {answer['version']}, "
                  f"{answer['timings_ms']['generate']} ms)", highlight=False, soft_wrap=True)


COMMANDS = {"serve": serve_command}
