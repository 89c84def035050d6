"""`radlab eval` and `radlab judge`: evaluating checkpoints and predictions files, and the judges."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from radlab.cli.common import Overrides, console, err_console, fail, load, or_exit
from radlab.progress import print_table

judge_app = typer.Typer(no_args_is_help=True, help="CheXprompt judges: the local reference judge, agreement.")
DEFAULT_EVAL = {"name": "eval", "data": {"synthetic": {}}}


def eval_command(
    path: Annotated[Path, typer.Argument(help="experiment YAML: judge, metrics, tracking")] = None,
    checkpoint: Annotated[str, typer.Option(help="folder, runs:/<id>/model or models:/<name>@<alias>")] = None,
    predictions: Annotated[Path, typer.Option(help="JSONL of {id, candidate[, reference]}")] = None,
    references: Annotated[Path, typer.Option(help="JSONL of {id, reference}, joined by id")] = None,
    baseline: Annotated[Path, typer.Option(help="a second predictions JSONL on the same studies: scored too, and "
                                                "compared with --predictions by a paired test")] = None,
    task: Annotated[str, typer.Option(help="reports: CheXprompt and text metrics; retrieval: a stage 0 "
                                           "encoder's retrieval and zero-shot readouts")] = "reports",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the judge with one canary judgment and print "
                                                          "the requests, tokens, cost and time judging will take")] = False,
    overrides: Overrides = None,
) -> None:
    """Evaluate a checkpoint on the experiment's eval split, or judge a predictions file."""
    from radlab.config import parse_experiment
    from radlab.evaluation.generate import join_predictions
    from radlab.evaluation.preflight import evaluation_plan, judge_plan
    from radlab.evaluation.run import evaluate_in_own_run
    from radlab.pipeline import encoder_folder
    from radlab.tracking.runs import fetch_checkpoint, tracking_uri

    if task not in ("reports", "retrieval"):
        raise fail(f"--task {task}: expected reports or retrieval")
    if task == "retrieval" and checkpoint is None and path is not None:
        own = or_exit(encoder_folder, load(path, overrides))
        if not own.is_dir():
            raise fail(f"{path}: no trained encoder at {own}; run `radlab run {path}` or pass --checkpoint")
        checkpoint = str(own)
    if (checkpoint is None) == (predictions is None):
        raise fail("give exactly one of --checkpoint or --predictions")
    if checkpoint is not None and path is None:
        raise fail("--checkpoint needs the experiment YAML (its data and model)")
    if baseline is not None and predictions is None:
        raise fail("--baseline compares two predictions files: give --predictions too")
    experiment = load(path, overrides) if path else parse_experiment(DEFAULT_EVAL, "defaults")
    records = baseline_records = None
    if predictions is not None:
        records = or_exit(join_predictions, predictions, references)
        baseline_records = or_exit(join_predictions, baseline, references) if baseline else None
    plan = None
    if task == "reports" and "chexprompt" in experiment.eval.metrics:
        if records is not None:
            judged = [r for r in records + (baseline_records or []) if "candidate" in r]
            plan = or_exit(judge_plan, experiment.eval.judge, len(judged), records[0]["reference"]) if judged else None
        else:
            plan = or_exit(evaluation_plan, experiment)
    for line in plan.lines() if plan else []:
        console.print(line, highlight=False, soft_wrap=True)
    if dry_run:
        if plan is None:
            console.print("nothing to judge (CheXprompt is not in eval.metrics, or --task retrieval)")
        return
    uri = tracking_uri(experiment.tracking)
    folder = None
    if checkpoint is not None:  # a reference that names nothing is an error before any run exists
        folder = or_exit(fetch_checkpoint, checkpoint, uri, Path("radlab_runs/downloads") / uuid.uuid4().hex[:12])
    run_id = or_exit(evaluate_in_own_run, experiment, checkpoint or str(predictions), console, folder=folder,
                     task=task, records=records, baseline=baseline_records)
    console.print(f"MLflow run {run_id} at {uri}")


@judge_app.command("serve")
def judge_serve(reference_judge: Annotated[str, typer.Option(help="which reference judge")] = "synthetic",
                port: int = 8100) -> None:
    """Serve the synthetic reference judge as an OpenAI-compatible API on 127.0.0.1."""
    import uvicorn

    from radlab.evaluation.reference_judge import create_app

    if reference_judge != "synthetic":
        raise fail(f"--reference-judge {reference_judge}: only 'synthetic' exists")
    console.print(f"reference judge at http://127.0.0.1:{port}/v1 (model radlab-synthetic-reference)")
    uvicorn.run(create_app(), host="127.0.0.1", port=port, log_level="warning")


@judge_app.command("agreement")
def judge_agreement(first: Path, second: Path) -> None:
    """Compare two judgments JSONL files (two judges, or a judge and human counts)."""
    from rich.table import Table

    from radlab.evaluation.agreement import agreement, read_judgments

    try:
        result = agreement(read_judgments(first), read_judgments(second))
    except (ValueError, OSError) as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None
    reports = int(next(iter(result.values()))["n"])
    table = Table(title=f"{first.name} vs {second.name}: {reports} reports judged by both (95% intervals)")
    for name in ("errors", "Kendall tau", "mean |difference|"):
        table.add_column(name, no_wrap=True)

    def with_interval(row: dict, key: str) -> str:
        low, high = row[f"{key}_ci_low"], row[f"{key}_ci_high"]
        return f"{row[key]:.3f}" + ("" if low != low else f" [{low:.2f}, {high:.2f}]")

    for name, row in result.items():
        table.add_row(name, with_interval(row, "kendall_tau"), with_interval(row, "mean_abs_diff"))
    print_table(console, table)


COMMANDS = {"eval": eval_command}
GROUPS = {"judge": judge_app}
