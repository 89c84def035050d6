"""The ablation matrix on Ray Tune. Each trial is one whole experiment (stage 1, stage 2 on Ray
Train, evaluation with CheXprompt) with the grid cell's overrides applied; the grid is a Tune
grid search, and a `search:` block runs Optuna inside each cell. MLflow holds one sweep run, a
child run per trial (its stage runs below it), a comparison table and plots; the best trial's
checkpoint is registered and takes the alias when it beats the holder in a paired test
(`verdict.challenge_alias`)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from ray import cloudpickle, tune  # noqa: E402

from radlab.config import ConfigError, Experiment, apply_override, parse_experiment, with_absolute_paths  # noqa: E402
from radlab.errors import RadlabError  # noqa: E402
from radlab.evaluation.metrics import score_of, unavailable  # noqa: E402
from radlab.metric_specs import SCORES  # noqa: E402
from radlab.tracking.runs import Tracker  # noqa: E402
from radlab.train.stages import held_alone, holds_fault, storage_path  # noqa: E402
from radlab.tune.verdict import (  # noqa: E402
    SEED_AXIS,
    TESTED,
    challenge_alias,
    configurations,
    setting_name,
    versus_baseline,
)

TRIAL_CPU = 0.01  # what a trial's own actor asks for: its stages ask Ray Train for the workers' CPUs
# A tag of the sweep's MLflow run, one per trial's settings: the error of an attempt that failed by a
# mistake. MLflow rather than a file, so that it holds wherever ray.storage_path is (s3:// too).
MISTAKE_TAG = "radlab.mistake"
REPEAT = "same settings and run as an earlier trial"  # a trial's status: Optuna repeats a `choice`
COUNTED = {"failed": "sweep/failed", "stopped early": "sweep/stopped_early", REPEAT: "sweep/repeats"}


class TrialNotRetried(RadlabError):
    """A trial attempt refused because an earlier attempt with the same settings failed by a mistake."""


@dataclass
class Trial:
    name: str
    overrides: dict[str, object]


def _set(raw: dict, path: str, value) -> dict:
    return apply_override(raw, f"{path}={json.dumps(value)}")


def expand(raw: dict, where: str) -> list[Trial]:
    """The grid cells (one trial each, or one Optuna study each), validated: a path that does not
    exist in the schema, or a value it refuses, is an error naming the axis."""
    experiment = parse_experiment(raw, where)
    sweep = experiment.sweep
    if sweep is None:
        raise ConfigError(f"{where}: no sweep: block (use radlab run for a single experiment)")
    found = score_of(sweep.objective.metric)
    if found is None:
        raise ConfigError(f"{where}: sweep.objective.metric: evaluation does not produce "
                          f"{sweep.objective.metric!r}; one of {', '.join(SCORES)}")
    metric_name, objective = found
    if (sweep.objective.mode == "max") != objective.higher_is_better:
        better = "higher" if objective.higher_is_better else "lower"
        raise ConfigError(f"{where}: sweep.objective.mode {sweep.objective.mode}: {objective.key} is better "
                          f"{better}; set mode: {'max' if objective.higher_is_better else 'min'}")
    evaluated = experiment.eval.metrics
    if metric_name not in evaluated:
        raise ConfigError(f"{where}: sweep.objective.metric {objective.key} comes from {metric_name}, which "
                          f"eval.metrics ({', '.join(evaluated)}) leaves out: add it")
    reason = unavailable(metric_name, experiment.eval, experiment.data.synthetic is not None)
    if reason:  # every trial would train and then skip the metric the sweep compares them by
        raise ConfigError(f"{where}: sweep.objective.metric {objective.key} comes from {metric_name}, which this "
                          f"experiment cannot score: {reason}")
    if sweep.scheduler and sweep.scheduler.metric == "val_loss":
        stages = [getattr(experiment, s) for s in ("stage1", "stage2") if getattr(experiment, s).enabled]
        if not any(s.val_examples for s in stages):
            raise ConfigError(f"{where}: sweep.scheduler reads val_loss, which no stage reports "
                              "(stage1/stage2.val_examples are 0)")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    resolved = experiment.model_dump(mode="json")
    paths = list(sweep.axes)
    for path in paths + (list(sweep.search.params) if sweep.search else []):
        _check_path(resolved, path, where)
    trials = []
    for values in itertools.product(*(sweep.axes[p] for p in paths)):
        overrides = dict(zip(paths, values))
        cell = copy.deepcopy(base)
        for path, value in overrides.items():
            cell = _set(cell, path, value)
        parse_experiment(cell, f"{where} (sweep cell {overrides})")
        trials.append(Trial(setting_name(overrides), overrides))
    return trials


def _check_path(resolved: dict, path: str, where: str) -> None:
    """A path must name a field of the schema: one of the resolved experiment's."""
    node = resolved
    for key in path.split("."):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            raise ConfigError(f"{where}: sweep.axes: {path} is not a field of the experiment")


def with_trial_cpus(raw: dict) -> dict:
    """The sweep with each trial's CPUs per worker pinned: as the YAML sets them, else the cores
    shared among the workers of the trials that run at once (the single-run default would give each
    trial every core, and concurrent trials would queue behind each other)."""
    if "cpus_per_worker" in (raw.get("ray") or {}):
        return raw
    experiment = parse_experiment(raw, "sweep")
    share = experiment.ray.default_cpus_per_worker(experiment.ray.workers * experiment.sweep.max_concurrent_trials)
    return {**raw, "ray": {**(raw.get("ray") or {}), "cpus_per_worker": share}}


def trial_experiment(base: dict, overrides: dict) -> Experiment:
    """A cell's experiment, its paths resolved against the sweep's folder (the driver's working
    directory, where every trial runs), so the driver and the trial agree on its digest."""
    raw = {k: v for k, v in base.items() if k != "sweep"}
    for path, value in overrides.items():
        raw = _set(raw, path, value)
    return with_absolute_paths(parse_experiment(raw, "sweep trial"))


def run_trial(config: dict, base: dict) -> dict:
    """The Tune trainable: one whole experiment, the sweep's `base` with the trial's cell and searched
    values; reports the objective and every metric (and, with a scheduler, each checkpoint's
    validation loss on the way). `base` is bound with tune.with_parameters rather than put in the
    trial's config, which Tune prints for every trial."""
    from radlab.data.dataset import manifest_digest
    from radlab.evaluation.reporting import logged_scores
    from radlab.pipeline import run_experiment

    # Run in the sweep driver's folder, so relative paths in the YAML (data, tracking store,
    # storage) mean what they mean for `radlab run`, not something inside Tune's trial folder.
    os.chdir(config["folder"])
    experiment = trial_experiment(base, {**config["cell"], **config.get("search", {})})
    # A trial the killed driver's last snapshot still showed running may have finished, and a trial the
    # search gave the settings of another (Optuna repeats a `choice`) shares its MLflow run: its run
    # says so, and it is not run twice. Duplicates running at once wait for the first to finish.
    tracker = Tracker(experiment)
    lock = f"{experiment.name}-trial-{experiment.digest()}-{config['sweep_run']}"
    with held_alone(experiment, lock, lambda where: print("the same settings as a trial running now: waiting to "
                                                          f"reuse its result ({where})", flush=True)):
        done = tracker.finished_trial(config["sweep_run"], manifest_digest(experiment.data))
        if done is not None:
            return {**logged_scores(tracker, done.info.run_id), "trial_run_id": done.info.run_id}
        # Tune retries a failed trial (sweep.max_failures) for faults; an attempt that failed by a
        # mistake would fail again alike, so the next attempt stops at once with its error.
        mistake_tag = f"{MISTAKE_TAG}.{experiment.digest()}"
        mistake = tracker.client.get_run(config["sweep_run"]).data.tags.get(mistake_tag)
        if mistake is not None:
            raise TrialNotRetried(f"not retried: an attempt with these settings failed with {mistake}, "
                                  "which is not a fault (a lost worker or node, a judge that did not answer): "
                                  "another attempt would fail alike")
        try:
            summary = run_experiment(experiment, yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False),
                                     parent_run_id=config["sweep_run"], register=False,
                                     report_to_tune=config.get("report_to_tune", False))
        except Exception as err:
            if not holds_fault(err):
                tracker.client.set_tag(config["sweep_run"], mistake_tag, error_line(err))
            raise
    return {**summary.metrics, "trial_run_id": summary.parent_run_id}


def error_line(error: BaseException) -> str:
    """The first line of what went wrong: the trial's own error rather than Ray's wrapper of it."""
    error = getattr(error, "cause", None) or error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


class TrialRestarts(tune.Callback):
    """Every trial Tune restarts after a failure, printed with its cause and recorded in the sweep's
    MLflow run (metric sweep/trial_restarts, tag radlab.trial_restart.<n>), so no restart goes
    unseen. It holds only names: Tune keeps it with the sweep's state, for `--resume`."""

    def __init__(self, tracking_uri: str, sweep_run: str):
        self.tracking_uri, self.sweep_run = tracking_uri, sweep_run

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        from mlflow import MlflowClient

        cause = "no error recorded"
        if trial.pickled_error_file and Path(trial.pickled_error_file).is_file():  # the failure Tune just wrote
            cause = error_line(cloudpickle.loads(Path(trial.pickled_error_file).read_bytes()))
        line = (f"trial {trial.trial_id} {json.dumps(trial.config.get('cell', {}))} failed (failure "
                f"{trial.run_metadata.num_failures}, sweep.max_failures {trial.max_failures}): {cause}; "
                "Tune starts it again")
        print(line, flush=True)
        client = MlflowClient(self.tracking_uri)
        count = int(client.get_run(self.sweep_run).data.metrics.get("sweep/trial_restarts", 0)) + 1
        client.set_tag(self.sweep_run, f"radlab.trial_restart.{count}", line)
        client.log_metric(self.sweep_run, "sweep/trial_restarts", count)


def search_space(experiment: Experiment) -> dict:
    space = {}
    for path, rng in (experiment.sweep.search.params.items() if experiment.sweep.search else []):
        if rng.loguniform:
            space[path] = tune.loguniform(*rng.loguniform)
        elif rng.uniform:
            space[path] = tune.uniform(*rng.uniform)
        else:
            space[path] = tune.choice(rng.choice)
    return space


def sweep_key(raw: dict) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _tuners(experiment: Experiment, trials: list[Trial], key: str) -> list[tuple[str, list[Trial]]]:
    """How the matrix maps onto Tune runs: the whole grid in one (its cells run concurrently, up to
    max_concurrent_trials), or, with an Optuna search, one per cell (a study per cell)."""
    sweep = experiment.sweep
    if sweep.search and not sweep.scheduler:
        return [(f"{experiment.name}-sweep-{key}-{i}", [trial]) for i, trial in enumerate(trials)]
    return [(f"{experiment.name}-sweep-{key}", trials)]


def run_sweep(raw: dict, where: str, resume: bool = False, verbose: bool = True,
              say: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) the sweep; return {trials: [...], best: {...} | None}. With `verbose` off,
    the trials' and Ray's own output stays in Ray's log folder, which `say` is told."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from radlab.data.dataset import manifest_digest
    from radlab.runtime import check_resources, init_ray

    raw = with_trial_cpus(raw)
    trials = expand(raw, where)
    experiment = parse_experiment(raw, where)
    sweep = experiment.sweep
    logs = init_ray(experiment.ray, verbose)
    if logs and not verbose and say is not None:
        say(f"Ray's own logs and each trial's output: {logs} (--verbose shows them here)")
    try:
        # Each running trial's actor holds TRIAL_CPU for the whole trial: a stage asking for every
        # CPU would wait for it forever.
        check_resources(experiment.ray, reserved_cpu=TRIAL_CPU * sweep.max_concurrent_trials)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    from radlab.model.build import check_half_weights_stepped

    for trial in trials:  # a cell whose stages cannot train is refused here, not in each of its trials' attempts
        try:
            check_half_weights_stepped(trial_experiment(raw, trial.overrides))
        except RadlabError as err:
            raise ConfigError(f"{where} (sweep cell {trial.name}): {err}") from None
    tracker = Tracker(experiment)
    key = sweep_key(raw)
    sweep_run = tracker.open_parent(json.dumps(raw, indent=2, default=str), manifest_digest(experiment.data),
                                    stage="sweep", digest=key, resume=resume)
    for tag in tracker.client.get_run(sweep_run).data.tags:
        if tag.startswith(f"{MISTAKE_TAG}."):  # a resumed sweep gives its failed trials a new chance: the user
            tracker.client.delete_tag(sweep_run, tag)  # may have fixed the cause
    restarts = TrialRestarts(tracker.uri, sweep_run)
    space = search_space(experiment)
    samples = sweep.search.samples if space else 1
    results = []
    for name, group in _tuners(experiment, trials, key):
        path = f"{storage_path(experiment).rstrip('/')}/{name}"  # a URL (s3://...) is no local Path
        trainable = tune.with_resources(tune.with_parameters(run_trial, base=raw), {"cpu": TRIAL_CPU})
        cells = [trial.overrides for trial in group]
        param_space = {"cell": cells[0] if len(cells) == 1 else tune.grid_search(cells),
                       "sweep_run": sweep_run, "folder": os.getcwd(), "report_to_tune": sweep.scheduler is not None}
        if resume and tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable, resume_errored=True, param_space=param_space)
        else:
            searcher = scheduler = None
            if space:
                param_space["search"] = space
            if sweep.scheduler:
                s = sweep.scheduler
                scheduler = ASHAScheduler(metric=s.metric, mode=s.mode, grace_period=s.grace_period,
                                          reduction_factor=s.reduction_factor, max_t=s.max_t)
            elif space:
                searcher = OptunaSearch(metric=sweep.objective.metric, mode=sweep.objective.mode,
                                        seed=sweep.search.seed)
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                # Reused trial actors: a trial does not pay the torch/transformers/Ray Train imports
                # again. Not with a scheduler, whose early stop must end the trial's process.
                tune_config=tune.TuneConfig(num_samples=samples, search_alg=searcher, scheduler=scheduler,
                                            max_concurrent_trials=sweep.max_concurrent_trials,
                                            reuse_actors=scheduler is None),
                run_config=tune.RunConfig(name=name, storage_path=storage_path(experiment),
                                          failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                          callbacks=[restarts]),
            )
        names = {json.dumps(t.overrides, sort_keys=True): t.name for t in group}
        for result in tuner.fit():
            config = result.config or {}
            cell = config.get("cell", {})
            row = {"trial": names.get(json.dumps(cell, sort_keys=True), "?"), **cell,
                   **{f"search.{k}": v for k, v in config.get("search", {}).items()}}
            metrics = result.metrics or {}
            if result.error is not None:
                row.update(status="failed", error=error_line(result.error))
            elif "trial_run_id" not in metrics:
                row.update(status="stopped early", **{k: v for k, v in metrics.items() if k == "val_loss"})
                stopped = trial_experiment(raw, {**cell, **config.get("search", {})})
                tracker.mark_stopped(sweep_run, stopped.digest())
            else:
                # A trial the search gave the settings of an earlier one reported that one's run: it
                # is shown, but neither counted nor compared twice.
                repeat = any(earlier.get("run_id") == metrics["trial_run_id"] for earlier in results)
                row.update(status=REPEAT if repeat else "ok",
                           **{k: v for k, v in metrics.items()
                              if isinstance(v, (int, float)) and ("/" in k or k == "val_loss")},
                           run_id=metrics["trial_run_id"])
            results.append(row)
    best = _finish(tracker, sweep_run, experiment, results, trials[0].overrides)
    tracker.finish(sweep_run)
    return {"trials": results, "best": best, "sweep_run": sweep_run}


def _finish(tracker: Tracker, sweep_run: str, experiment: Experiment, results: list[dict], baseline: dict) -> dict | None:
    sweep = experiment.sweep
    metric = sweep.objective.metric
    ok = [row for row in results if row["status"] == "ok" and metric in row]
    configs = configurations(ok, list(sweep.axes), experiment.seed)
    base = versus_baseline(tracker, configs, {k: v for k, v in baseline.items() if k != SEED_AXIS}, metric,
                           experiment.eval.bootstrap)
    for config in configs:
        for row in config.runs.values():
            row["vs_baseline"] = config.vs_baseline
    flat = [{**{k: v for k, v in row.items() if k != "vs_baseline"},
             **{f"vs_baseline_{k}": v for k, v in row.get("vs_baseline", {}).items() if k in TESTED}} for row in results]
    columns = sorted({k for row in flat for k in row})
    tracker.log_table(sweep_run, {c: [row.get(c) for row in flat] for c in columns}, "sweep/trials.json")
    tracker.log_metrics(sweep_run, {"sweep/trials": len(results)} | {
        name: sum(row["status"] == status for row in results) for status, name in COUNTED.items()})
    if not ok:
        return None
    for figure, artifact in ((_objective_plot(ok, list(sweep.axes), metric), "sweep/objective_by_axis.png"),
                             (_error_types_plot(ok), "sweep/error_types_by_trial.png")):
        tracker.log_figure(sweep_run, figure, artifact)
        plt.close(figure)
    pooled = [config.row(metric) for config in configs]
    tracker.log_table(sweep_run, {c: [row.get(c) for row in pooled] for c in sorted({k for r in pooled for k in r})},
                      "sweep/configurations.json")
    pick = min if sweep.objective.mode == "min" else max
    winner = pick(configs, key=lambda config: config.mean(metric))
    best = {**winner.best_run(metric, sweep.objective.mode), "configuration": winner.name,
            "configuration_mean": winner.mean(metric), "seeds": sorted(winner.runs)}
    tracker.log_metrics(sweep_run, {f"sweep/best/{metric}": best[metric],
                                    f"sweep/best_configuration/{metric}": best["configuration_mean"]})
    tracker.set_tags(sweep_run, {"radlab.best_trial": best["trial"], "radlab.best_configuration": winner.name})
    if winner is base:
        over = f" (mean over {len(base.runs)} training seeds)" if len(base.runs) > 1 else ""
        best["vs_baseline"] = {"verdict": f"the baseline {base.name} scored best{over}: no configuration beat it"}
    tracker.set_tags(sweep_run, {"radlab.best_vs_baseline": best["vs_baseline"]["verdict"]})
    tracker.log_metrics(sweep_run, {f"sweep/best_vs_baseline/{key}": float(best["vs_baseline"][key])
                                    for key in TESTED if key in best["vs_baseline"]})
    name = experiment.tracking.register_as
    if name:
        source = f"{tracker.artifact_uri(best['run_id'])}/model"
        version = tracker.register(best["run_id"], source, tags={"radlab.objective": f"{metric}={best[metric]}"})
        best["version"] = version
        challenge = challenge_alias(tracker, sweep.alias, version, best["run_id"], metric, experiment.eval.bootstrap)
        best["alias_moved"], best["alias_verdict"] = challenge["moved"], challenge["verdict"]
        tracker.set_tags(sweep_run, {"radlab.alias_verdict": challenge["verdict"]})
    return {**best, "configurations": pooled}


def _objective_plot(rows: list[dict], axes: list[str], metric: str):
    count = max(1, len(axes))
    fig, panels = plt.subplots(1, count, figsize=(4 * count, 3.2), squeeze=False)
    for panel, axis in zip(panels[0], axes or ["trial"]):
        labels = [str(row.get(axis, row["trial"])) for row in rows]
        values = [row[metric] for row in rows]
        low = [row[metric] - row.get(f"{metric}_ci_low", row[metric]) for row in rows]
        high = [row.get(f"{metric}_ci_high", row[metric]) - row[metric] for row in rows]
        panel.errorbar(labels, values, yerr=[low, high], fmt="o", capsize=4)
        panel.set_title(axis, fontsize=9)
        panel.set_ylabel(metric, fontsize=8)
    fig.tight_layout()
    return fig


def _error_types_plot(rows: list[dict]):
    """Mean clinically significant CheXprompt errors of each type, one group of bars per trial."""
    from radlab.evaluation.chexprompt import ERROR_TYPES

    names = list(ERROR_TYPES.values())
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([t + i * width for t in range(len(rows))],
               [row.get(f"chexprompt/significant/{name}", 0.0) for row in rows], width, label=name)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(rows))], [row["trial"] for row in rows],
                  rotation=15, fontsize=7)
    ax.set_ylabel("significant errors per report")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def describe(raw: dict, where: str) -> list[dict]:
    """The matrix `--dry-run` prints: each trial, its overrides and resources."""
    raw = with_trial_cpus(raw)
    experiment = parse_experiment(raw, where)
    trials = expand(raw, where)
    samples = experiment.sweep.search.samples if experiment.sweep.search else 1
    per_trial = {"workers": experiment.ray.workers, "cpus_per_worker": experiment.ray.cpus_per_worker,
                 "gpu_per_worker": 1 if experiment.ray.use_gpu else 0,
                 "accelerator": experiment.ray.placement_accelerator}
    return [{"trial": t.name, "overrides": t.overrides, "optuna_samples": samples,
             "search": list(search_space(experiment)), "resources": per_trial} for t in trials]
