"""The `radlab` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from radlab.config import ConfigError, Experiment, load_experiment

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Train, judge and serve radiology report models.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: the synthetic chest X-ray set.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)

Overrides = Annotated[list[str], typer.Option("--set", help="override a field: --set stage2.lr=5e-5")]


def _load(path: Path, overrides: list[str] | None) -> Experiment:
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as err:
        err_console.print(f"[red]invalid experiment[/]\n{err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(path: Path, overrides: Overrides = None) -> None:
    """Check an experiment YAML (and overrides); print the resolved config or what is wrong."""
    experiment = _load(path, overrides)
    console.print(f"[green]ok[/] {path}: experiment '{experiment.name}'")
    console.print_json(json.dumps(experiment.model_dump(mode="json")))


@app.command()
def schema() -> None:
    """Print the JSON schema of an experiment YAML."""
    console.print_json(json.dumps(Experiment.model_json_schema()))


@app.command()
def run(path: Path, overrides: Overrides = None,
        address: Annotated[str, typer.Option(help="join this Ray cluster instead of starting one")] = None) -> None:
    """Run an experiment: stage 1, stage 2, evaluation, registration. Rerun to resume."""
    experiment = _load(path, (overrides or []) + ([f"ray.address={address}"] if address else []))
    from radlab.pipeline import run_experiment

    summary = run_experiment(experiment, path.read_text(), console)
    console.print(f"[green]done[/] checkpoint {summary.checkpoint}  MLflow run {summary.parent_run_id}")


@data_app.command("synth")
def data_synth(out: Path = Path("data/synthetic"), n_train: int = 3000, n_val: int = 100, n_test: int = 200,
               image_size: int = 64, seed: int = 0) -> None:
    """Write the synthetic chest X-ray set (images, JSONL manifests per split)."""
    from radlab.data.synthetic import generate

    with console.status("generating"):
        root = generate(out, n_train, n_val, n_test, image_size, seed)
    console.print(f"[green]ok[/] {root}: train {n_train}, val {n_val}, test {n_test} at {image_size}px")


@app.command()
def ui(port: int = 5000, backend: str = "sqlite:///radlab_runs/mlflow.db") -> None:
    """Open the MLflow UI on 127.0.0.1 over the local runs."""
    console.print(f"MLflow UI on http://127.0.0.1:{port}")
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend,
                                      "--host", "127.0.0.1", "--port", str(port)], env=env))
