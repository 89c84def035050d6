"""`radlab validate | schema | run | sweep | ui`: experiments, from their YAML to their MLflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from radlab.cli.common import Overrides, console, err_console, load, or_exit
from radlab.config import ConfigError, Experiment, with_absolute_paths
from radlab.errors import RadlabError
from radlab.progress import print_table


def validate(path: Path, overrides: Overrides = None,
             skip_files: Annotated[bool, typer.Option(help="do not check that the files it names exist here (e.g. "
                                                           "before `radlab submit` to a cluster that has them)")] = False
             ) -> None:
    """Check an experiment YAML (and overrides); print the resolved config or what is wrong.

    Checked: the schema, the files it names, the judge's key, the memory plan."""
    from radlab.config import missing_inputs
    from radlab.model.build import check_half_weights_stepped
    from radlab.model.memory import experiment_plans
    from radlab.model.towers import image_transform

    experiment = load(path, overrides)
    missing = [] if skip_files else missing_inputs(with_absolute_paths(experiment))
    if missing:
        err_console.print(f"[red]{path}: missing here[/] (--skip-files to check the rest only)\n" + "\n".join(missing),
                          highlight=False)
        raise typer.Exit(2)
    if not skip_files:  # the tower folder's own preprocessor_config.json must resize as model.vision.resize says,
        # and a DDP stage may not step the language model folder's half-precision weights
        or_exit(image_transform, with_absolute_paths(experiment).model.vision)
        or_exit(check_half_weights_stepped, with_absolute_paths(experiment))
    plans = experiment_plans(experiment)
    for plan in plans:
        console.print(("[green]" if plan.fits else "[red]") + f"memory[/] {plan.line()}", highlight=False)
    misfits = [plan for plan in plans if not plan.fits]
    if misfits:
        err_console.print(f"[red]{path}: {misfits[0].name} does not fit its GPU:[/] {misfits[0].fix}", highlight=False)
        raise typer.Exit(2)
    console.print(f"[green]ok[/] {path}: experiment '{experiment.name}'")
    console.print_json(json.dumps(experiment.model_dump(mode="json")))


def schema() -> None:
    """Print the JSON schema of an experiment YAML."""
    console.print_json(json.dumps(Experiment.model_json_schema()))


def run(path: Path, overrides: Overrides = None,
        address: Annotated[str, typer.Option(help="join this Ray cluster instead of starting one")] = None,
        verbose: Annotated[bool, typer.Option(help="show the workers' and Ray's own output")] = False) -> None:
    """Run an experiment: stages 0-2, evaluation, registration. Rerun to resume."""
    experiment = load(path, (overrides or []) + ([f"ray.address={address}"] if address else []))
    from radlab.pipeline import run_experiment

    try:
        summary = run_experiment(experiment, path.read_text(), console, verbose=verbose)
    except RadlabError as err:
        err_console.print(f"[red]{path}: {err}[/]", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/]: the runs are marked KILLED and nothing was registered; run "
                          f"`radlab run {path}` again to resume", highlight=False)
        raise typer.Exit(130) from None
    for line in where_it_is(experiment, summary):
        console.print(line, highlight=False, soft_wrap=True)


def where_it_is(experiment, summary) -> list[str]:
    """The closing lines of a run: where its results are and what to type next."""
    from radlab.tracking.runs import CANDIDATE, tracking_uri

    uri = tracking_uri(experiment.tracking)
    browse = uri if uri.startswith(("http://", "https://")) else f"radlab ui --backend {uri}"
    lines = ["[green]done[/]",
             f"  MLflow run   {summary.parent_run_id} in experiment '{experiment.name}'; browse: {browse}",
             f"  checkpoint   {summary.checkpoint}"]
    if summary.model_version:
        model = f"models:/{experiment.tracking.register_as}@{CANDIDATE}"
        # `radlab serve` in this shell finds the store the same way unless the YAML named another
        same_store = experiment.tracking.uri is None or os.environ.get("MLFLOW_TRACKING_URI") == uri
        serve_env = "" if same_store else f"MLFLOW_TRACKING_URI={uri} "
        lines += [f"  model        {model} (version {summary.model_version})",
                  f"  serve it     {serve_env}radlab serve --model {model}"]
    return lines


def ui(port: int = 5000, backend: str = "sqlite:///radlab_runs/mlflow.db") -> None:
    """Open the MLflow UI on 127.0.0.1 over the local runs."""
    console.print(f"MLflow UI on http://127.0.0.1:{port}")
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend,
                                      "--host", "127.0.0.1", "--port", str(port)], env=env))


def sweep(path: Path, overrides: Overrides = None,
          resume: Annotated[bool, typer.Option(help="continue an interrupted sweep")] = False,
          dry_run: Annotated[bool, typer.Option(help="print the matrix and exit")] = False,
          address: Annotated[str, typer.Option(help="join this Ray cluster")] = None,
          verbose: Annotated[bool, typer.Option(help="show each trial's and Ray's own output")] = False) -> None:
    """Run the ablation matrix of an experiment's sweep: block on Ray Tune."""
    from rich.table import Table

    from radlab.tune.sweep import describe, run_sweep

    experiment = load(path, (overrides or []) + ([f"ray.address={address}"] if address else []))
    raw = experiment.model_dump(mode="json")
    try:
        matrix = describe(raw, str(path))
    except ConfigError as err:
        err_console.print(f"[red]invalid sweep[/]\n{err}", highlight=False)
        raise typer.Exit(2) from None
    table = Table("trial", "overrides", "samples", "searched", "resources", title=f"{len(matrix)} cells" + (
        f", ASHA on {experiment.sweep.scheduler.metric}" if experiment.sweep.scheduler else ""))
    for row in matrix:
        r = row["resources"]
        gpu = f" + 1 {r['accelerator'] or 'GPU'}" if r["gpu_per_worker"] else ""
        table.add_row(row["trial"], "\n".join(f"{k}={json.dumps(v)}" for k, v in row["overrides"].items()),
                      str(row["optuna_samples"]), ", ".join(row["search"]) or "-",
                      f"{r['workers']} x ({r['cpus_per_worker']:g} CPU{gpu})")
    print_table(console, table)
    if dry_run:
        return
    try:
        result = run_sweep(raw, str(path), resume=resume, verbose=verbose,
                           say=partial(console.print, highlight=False, soft_wrap=True))
    except ConfigError as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None
    metric = experiment.sweep.objective.metric
    for table in sweep_tables(result, metric):
        print_table(console, table)
    best = result["best"]
    if best:
        chosen = best["trial"] if best["trial"] == best["configuration"] else (
            f"{best['configuration']} (mean over seeds {', '.join(map(str, best['seeds']))}), its best run {best['trial']}")
        registered = f"; registered version {best['version']}" if best.get("version") else ""
        console.print(f"best: {chosen}{registered}", highlight=False, soft_wrap=True)
        console.print(best["vs_baseline"]["verdict"], highlight=False, soft_wrap=True)
        if best.get("alias_verdict"):
            console.print(best["alias_verdict"], highlight=False, soft_wrap=True)


COMMANDS = {"validate": validate, "schema": schema, "run": run, "sweep": sweep, "ui": ui}


def _versus(difference: float, low: float, high: float, p: float, adjusted: float | None) -> str:
    """A comparison with the baseline; `adjusted`: the p-value adjusted over the configurations tested."""
    return f"{difference:+.3f} [{low:+.2f}, {high:+.2f}], p {p:.3g}" + (
        f" ({adjusted:.3g} adjusted)" if adjusted is not None and adjusted != p else "")


def sweep_tables(result: dict, metric: str) -> list:
    """The sweep's tables: every trial, and with a seed axis its configurations over their seeds.
    With seeds, a trial's comparison with the baseline is its configuration's (pooled over seeds),
    and the trials table says so."""
    from rich.table import Table

    best = result["best"]
    over_seeds = bool(best) and any(len(row["seeds"]) > 1 for row in best["configurations"])
    levels = [row["vs_baseline"].get("confidence", 0.95) for row in result["trials"] if "p_value" in row.get("vs_baseline", {})]
    # Bonferroni's intervals where several configurations were tested (see radlab.tune.verdict).
    ci = "95% CI" if max(levels, default=0.95) <= 0.95 else f"{max(levels):.1%} CI: 95% together"
    versus_header = ("its configuration " if over_seeds else "") + f"vs baseline [{ci}], p"
    trials = Table("trial", "status", f"{metric} [95% CI]", versus_header, "val_loss", title="sweep")
    for row in result["trials"]:
        value, low, high = (row.get(f"{metric}{end}") for end in ("", "_ci_low", "_ci_high"))
        shown = "-" if value is None else f"{value:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")
        tested = row.get("vs_baseline", {})
        versus = (_versus(tested["difference"], tested["ci_low"], tested["ci_high"], tested["p_value"],
                          tested.get("p_adjusted")) if "p_value" in tested else "-")
        loss = row.get("val_loss")
        trials.add_row(row["trial"], row["status"] + (f": {row['error']}" if row.get("error") else ""), shown,
                       versus, "-" if loss is None else f"{loss:.3f}")
    if not over_seeds:
        return [trials]
    pooled = Table("configuration", "seeds", f"{metric} mean (min-max)", f"vs baseline [{ci}], p",
                   title="configurations over training seeds")
    for row in best["configurations"]:
        versus = (_versus(row["vs_baseline_difference"], row["vs_baseline_ci_low"], row["vs_baseline_ci_high"],
                          row["vs_baseline_p_value"], row.get("vs_baseline_p_adjusted"))
                  if "vs_baseline_p_value" in row else "-")
        pooled.add_row(row["configuration"], ", ".join(map(str, row["seeds"])),
                       f"{row[metric]:.3f} ({row[metric + '_min']:.3f}-{row[metric + '_max']:.3f})", versus)
    return [trials, pooled]
