"""The `radlab` command line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

from radlab.cli_data import data_app
from radlab.config import ConfigError, Experiment, TrackingConfig, load_experiment, with_absolute_paths
from radlab.errors import RadlabError
from radlab.terminal import console, err_console, or_exit

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Train, judge and serve radiology report models.")
app.add_typer(data_app, name="data")


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        console.print(f"radlab {version('radlab')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print radlab's version and exit")] = False) -> None:
    """Train, judge and serve radiology report models."""


Overrides = Annotated[list[str], typer.Option("--set", help="override a field: --set stage2.lr=5e-5")]


def _load(path: Path, overrides: list[str] | None) -> Experiment:
    try:
        return load_experiment(path, overrides or [])
    except ConfigError as err:
        err_console.print(f"[red]invalid experiment[/]\n{err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def validate(path: Path, overrides: Overrides = None,
             skip_files: Annotated[bool, typer.Option(help="do not check that the files it names exist here (e.g. "
                                                           "before `radlab submit` to a cluster that has them)")] = False
             ) -> None:
    """Check an experiment YAML (and overrides): the schema, the files it names, the judge's key,
    the memory plan; print the resolved config or what is wrong."""
    from radlab.config import missing_inputs
    from radlab.model.memory import experiment_plans

    experiment = _load(path, overrides)
    missing = [] if skip_files else missing_inputs(with_absolute_paths(experiment))
    if missing:
        err_console.print(f"[red]{path}: missing here[/] (--skip-files to check the rest only)\n" + "\n".join(missing),
                          highlight=False)
        raise typer.Exit(2)
    plans = experiment_plans(experiment)
    for plan in plans:
        console.print(("[green]" if plan.fits else "[red]") + f"memory[/] {plan.line()}", highlight=False)
    misfits = [plan for plan in plans if not plan.fits]
    if misfits:
        err_console.print(f"[red]{path}: {misfits[0].name} does not fit its GPU:[/] {misfits[0].fix}", highlight=False)
        raise typer.Exit(2)
    console.print(f"[green]ok[/] {path}: experiment '{experiment.name}'")
    console.print_json(json.dumps(experiment.model_dump(mode="json")))


@app.command()
def schema() -> None:
    """Print the JSON schema of an experiment YAML."""
    console.print_json(json.dumps(Experiment.model_json_schema()))


@app.command()
def run(path: Path, overrides: Overrides = None,
        address: Annotated[str, typer.Option(help="join this Ray cluster instead of starting one")] = None,
        verbose: Annotated[bool, typer.Option(help="show the workers' and Ray's own output")] = False) -> None:
    """Run an experiment: stages 0-2, evaluation, registration. Rerun to resume."""
    experiment = _load(path, (overrides or []) + ([f"ray.address={address}"] if address else []))
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


@app.command()
def ui(port: int = 5000, backend: str = "sqlite:///radlab_runs/mlflow.db") -> None:
    """Open the MLflow UI on 127.0.0.1 over the local runs."""
    console.print(f"MLflow UI on http://127.0.0.1:{port}")
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}"}
    raise typer.Exit(subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend,
                                      "--host", "127.0.0.1", "--port", str(port)], env=env))


judge_app = typer.Typer(no_args_is_help=True, help="CheXprompt judges: the local reference judge, agreement.")
app.add_typer(judge_app, name="judge")
DEFAULT_EVAL = {"name": "eval", "data": {"synthetic": {}}}


@app.command("eval")
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
    from radlab.evaluation.compare import compare_systems, per_report_scores
    from radlab.evaluation.generate import join_predictions
    from radlab.evaluation.preflight import evaluation_plan, judge_plan
    from radlab.evaluation.run import (
        evaluate_checkpoint,
        evaluate_encoder,
        log_comparison,
        log_error_chart,
        log_evaluation,
        log_review,
        print_comparison,
        print_summary,
        score,
    )
    from radlab.pipeline import encoder_folder
    from radlab.tracking.runs import Tracker, fetch_checkpoint

    if task not in ("reports", "retrieval"):
        err_console.print(f"--task {task}: expected reports or retrieval")
        raise typer.Exit(2)
    if task == "retrieval" and checkpoint is None and path is not None:
        own = encoder_folder(_load(path, overrides))
        if not own.is_dir():
            err_console.print(f"{path}: no trained encoder at {own}; run `radlab run {path}` or pass --checkpoint")
            raise typer.Exit(2)
        checkpoint = str(own)
    if (checkpoint is None) == (predictions is None):
        err_console.print("give exactly one of --checkpoint or --predictions")
        raise typer.Exit(2)
    if checkpoint is not None and path is None:
        err_console.print("--checkpoint needs the experiment YAML (its data and model)")
        raise typer.Exit(2)
    experiment = _load(path, overrides) if path else parse_experiment(DEFAULT_EVAL, "defaults")
    if baseline is not None and predictions is None:
        err_console.print("--baseline compares two predictions files: give --predictions too")
        raise typer.Exit(2)
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
    tracker = Tracker(experiment)
    folder = None
    if checkpoint is not None:  # a reference that names nothing is an error before any run exists
        folder = or_exit(fetch_checkpoint, checkpoint, tracker.uri, Path("radlab_runs/downloads") / uuid.uuid4().hex[:12])
    run_id = tracker.client.create_run(tracker.experiment_id, tags={
        "radlab.stage": "eval", "mlflow.runName": "eval", "radlab.source": checkpoint or str(predictions)}).info.run_id
    try:
        if folder is not None:
            evaluate = evaluate_encoder if task == "retrieval" else evaluate_checkpoint
            or_exit(evaluate, experiment, folder, tracker, run_id, console)
        else:
            scored = score(experiment, records)
            log_evaluation(tracker, run_id, experiment, records, scored)
            columns = {"predictions": scored.metrics}
            if baseline_records is not None:
                base = score(experiment, baseline_records)
                log_evaluation(tracker, run_id, experiment, baseline_records, base, "baseline/")
                columns["baseline"] = base.metrics
                rows = compare_systems(per_report_scores(records, scored), per_report_scores(baseline_records, base),
                                       experiment.eval.bootstrap)
                log_comparison(tracker, run_id, rows, "predictions_vs_baseline")
            if scored.judgments:
                log_error_chart(tracker, run_id, columns)
            log_review(tracker, run_id, {"predictions": (records, scored.judgments)} | (
                {"baseline": (baseline_records, base.judgments)} if baseline_records is not None else {}),
                str(predictions))
            print_summary(console, columns, scored.skipped)
            if baseline_records is not None:
                print_comparison(console, rows, "predictions - baseline, paired on the same studies")
            or_exit(scored.check_failures, experiment.eval.max_failed_share)
        tracker.finish(run_id)
    except BaseException:
        tracker.finish(run_id, ok=False)
        raise
    console.print(f"MLflow run {run_id} at {tracker.uri}")


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="folder, runs:/<id>/model or models:/<name>@<alias>")],
    out: Annotated[Path, typer.Option(help="the folder to write")],
    format: Annotated[str, typer.Option(help="hf: a transformers LlavaForConditionalGeneration folder")] = "hf",
    merge_lora: Annotated[bool, typer.Option(help="fold LoRA adapters into the language model")] = True,
) -> None:
    """Export a report model for use without radlab (transformers' LLaVA classes)."""
    import tempfile

    from radlab.model.export import export_hf
    from radlab.tracking.runs import fetch_checkpoint, tracking_uri

    if format != "hf":
        err_console.print(f"--format {format}: radlab exports hf (transformers) folders")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = or_exit(fetch_checkpoint, model, tracking_uri(TrackingConfig()), Path(tmp))
        or_exit(export_hf, folder, out, merge_lora)
    console.print(f"[green]exported[/] {model} to {out}: LlavaForConditionalGeneration.from_pretrained('{out}')")


import_app = typer.Typer(no_args_is_help=True, help="Bring published checkpoints into radlab's format.")
app.add_typer(import_app, name="import")


OPEN_CLIP_FOLDER = ("the open_clip folder: the release's biomedclipcxr_518.json and biomedclipcxr_518_checkpoint.pt, "
                    "or the Hub's open_clip_config.json and open_clip_pytorch_model.bin")


@import_app.command("llava-rad")
def import_llava_rad_command(
    adapter: Annotated[Path, typer.Option(help="the release's folder: adapter_config.json, adapter_model.*, non_lora_trainables.bin")],
    base: Annotated[Path, typer.Option(help="the Vicuna-7B v1.5 folder (LlamaForCausalLM and tokenizer)")],
    vision: Annotated[Path, typer.Option(help=OPEN_CLIP_FOLDER)],
    out: Annotated[Path, typer.Option(help="the radlab checkpoint folder to write")],
) -> None:
    """Import the released LLaVA-Rad model: evaluate, serve, fine-tune or sweep from it."""
    from radlab.model.llava_rad import import_llava_rad

    folder = or_exit(import_llava_rad, adapter, base, vision, out)
    console.print(f"[green]imported[/] LLaVA-Rad to {folder}: radlab serve --model {folder}")


@import_app.command("open-clip-vision")
def import_open_clip_vision_command(
    vision: Annotated[Path, typer.Option(help=OPEN_CLIP_FOLDER)],
    out: Annotated[Path, typer.Option(help="the transformers ViT or Dinov2 folder to write")],
) -> None:
    """Convert an open_clip image tower (BiomedCLIP-CXR: dinov2, BiomedCLIP: vit) to a transformers folder."""
    from radlab.model.llava_rad import import_open_clip_vision

    folder, kind = or_exit(import_open_clip_vision, vision, out)
    console.print(f"[green]converted[/] {vision} to {folder}: model.vision: {{kind: {kind}, path: {folder}}}")


jobs_app = typer.Typer(no_args_is_help=True, help="Experiments running on a Ray cluster (Ray Jobs API).")
app.add_typer(jobs_app, name="jobs")
Address = Annotated[str, typer.Option(help="the cluster's Ray Jobs API", envvar="RAY_API_SERVER_ADDRESS")]


def _stream_log(address: str, job_id: str) -> None:
    from radlab import jobs

    for chunk in jobs.follow(address, job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command()
def submit(path: Path, overrides: Overrides = None, address: Address = "http://127.0.0.1:8265",
           project: Annotated[Path, typer.Option(help="the folder shipped as the job's working directory")] = Path("."),
           follow: Annotated[bool, typer.Option(help="stream the job's log until it ends")] = True) -> None:
    """Run an experiment on a Ray cluster as a Ray job; print its id (and follow its log)."""
    from radlab import jobs

    experiment = _load(path, overrides)
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

    from radlab import jobs

    table = Table("id", "status", "experiment", "entrypoint")
    for job in or_exit(jobs.list_jobs, address):
        table.add_row(job["id"], job["status"], job["experiment"], job["entrypoint"])
    console.print(table)


@jobs_app.command("logs")
def jobs_logs(job_id: str, address: Address = "http://127.0.0.1:8265",
              follow: Annotated[bool, typer.Option(help="keep streaming until the job ends")] = False) -> None:
    """Print a job's log."""
    from radlab import jobs

    if follow:
        or_exit(_stream_log, address, job_id)
    else:
        sys.stdout.write(or_exit(jobs.logs, address, job_id))


@jobs_app.command("stop")
def jobs_stop(job_id: str, address: Address = "http://127.0.0.1:8265") -> None:
    """Stop a running job."""
    from radlab import jobs

    stopped = or_exit(jobs.stop, address, job_id)
    console.print(f"job {job_id}: {'stop requested' if stopped else 'already finished'}")


@judge_app.command("serve")
def judge_serve(reference_judge: Annotated[str, typer.Option(help="which reference judge")] = "synthetic",
                port: int = 8100) -> None:
    """Serve the synthetic reference judge as an OpenAI-compatible API on 127.0.0.1."""
    import uvicorn

    from radlab.evaluation.reference_judge import create_app

    if reference_judge != "synthetic":
        err_console.print(f"--reference-judge {reference_judge}: only 'synthetic' exists")
        raise typer.Exit(2)
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
    table = Table("errors", "n", "Kendall tau", "mean |difference|", title=f"{first.name} vs {second.name}")
    for name, row in result.items():
        table.add_row(name, f"{row['n']:.0f}", f"{row['kendall_tau']:.3f}", f"{row['mean_abs_diff']:.3f}")
    console.print(table)


LOCAL_SERVE = Path("serving/local.yaml")


@app.command("serve")
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
    import httpx
    import ray
    from ray import serve

    from radlab.config import RayConfig
    from radlab.runtime import init_ray
    from radlab.serve.app import deploy_failure, read_serve_config, report_app, with_auth_for
    from radlab.tracking.runs import tracking_uri

    if config is not None and not config.is_file():
        err_console.print(f"--config {config}: no such Serve config file")
        raise typer.Exit(2)
    if once is not None and not once.is_file():
        err_console.print(f"--once {once}: no such image file")
        raise typer.Exit(2)
    config = config or (LOCAL_SERVE if LOCAL_SERVE.is_file() else None)
    args, config_host, actor_options = or_exit(read_serve_config, config) if config else ({}, "127.0.0.1", {})
    host = host or config_host
    args = or_exit(with_auth_for, host, args)
    if model:
        args["model"] = model
    args.setdefault("tracking_uri", tracking_uri(TrackingConfig()))
    if "model" not in args:
        err_console.print("--model is required (or a --config whose application has args.model)")
        raise typer.Exit(2)
    if args["model"].startswith("models:/"):  # a registry reference that names nothing fails before deploying
        from mlflow import MlflowClient

        from radlab.tracking.runs import model_version

        or_exit(model_version, MlflowClient(args["tracking_uri"], registry_uri=args["tracking_uri"]), args["model"])
    logs = init_ray(RayConfig(), verbose)
    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's own Serve notes
        if logs:
            console.print(f"Ray's and Serve's own logs: {logs} (--verbose shows them here)", highlight=False,
                          soft_wrap=True)
    serve.start(http_options={"host": host, "port": port})
    with console.status(f"deploying {args['model']}"):
        try:
            serve.run(report_app(args, actor_options), name="radlab", route_prefix="/", blocking=False)
        except RuntimeError:
            err_console.print(f"[red]deploy failed[/]\n{deploy_failure('radlab')}", highlight=False)
            serve.shutdown()
            raise typer.Exit(1) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
    console.print(f"serving {args['model']} at {url}  (POST /v1/reports, /v1/chat/completions)", highlight=False,
                  soft_wrap=True)
    if once is None:
        import time

        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.delete("radlab")
        return
    key = os.environ.get(args["api_key_env"], "") if args.get("api_key_env") else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with open(once, "rb") as fh:
        reply = httpx.post(f"{url}/v1/reports", files={"image": (once.name, fh)}, data={"indication": indication},
                           headers=headers, timeout=120)
    serve.delete("radlab")  # this application only: on a cluster, others keep serving
    ray.shutdown()
    if reply.status_code != 200:
        err_console.print(f"[red]{reply.status_code}[/] {reply.text}")
        raise typer.Exit(1)
    answer = reply.json()
    console.print(f"[bold]{once}[/] -> {answer['findings']}\n(model {answer['model']} {answer['version']}, "
                  f"{answer['timings_ms']['generate']} ms)", highlight=False, soft_wrap=True)


@app.command()
def sweep(path: Path, overrides: Overrides = None,
          resume: Annotated[bool, typer.Option(help="continue an interrupted sweep")] = False,
          dry_run: Annotated[bool, typer.Option(help="print the matrix and exit")] = False,
          address: Annotated[str, typer.Option(help="join this Ray cluster")] = None) -> None:
    """Run the ablation matrix of an experiment's sweep: block on Ray Tune."""
    from rich.table import Table

    from radlab.tune.sweep import describe, run_sweep

    experiment = _load(path, (overrides or []) + ([f"ray.address={address}"] if address else []))
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
    console.print(table)
    if dry_run:
        return
    try:
        result = run_sweep(raw, str(path), resume=resume)
    except ConfigError as err:
        err_console.print(f"[red]{err}[/]", highlight=False)
        raise typer.Exit(2) from None
    metric = experiment.sweep.objective.metric
    summary = Table("trial", "status", f"{metric} [95% CI]", "vs baseline [95% CI], p", "val_loss", title="sweep")
    for row in result["trials"]:
        value, low, high = (row.get(f"{metric}{end}") for end in ("", "_ci_low", "_ci_high"))
        shown = "-" if value is None else f"{value:.3f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")
        tested = row.get("vs_baseline", {})
        versus = (f"{tested['difference']:+.3f} [{tested['ci_low']:+.2f}, {tested['ci_high']:+.2f}], "
                  f"p {tested['p_value']:.3g}" if "p_value" in tested else "-")
        loss = row.get("val_loss")
        summary.add_row(row["trial"], row["status"] + (f": {row['error']}" if row.get("error") else ""), shown,
                        versus, "-" if loss is None else f"{loss:.3f}")
    console.print(summary)
    best = result["best"]
    if best:
        moved = "took" if best.get("alias_moved") else "did not take (the holder is better)"
        console.print(f"best: {best['trial']}; registered version {best.get('version')} {moved} "
                      f"alias '{experiment.sweep.alias}'")
        console.print(best["vs_baseline"]["verdict"], highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
