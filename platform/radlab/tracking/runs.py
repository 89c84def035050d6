"""MLflow tracking through `MlflowClient`: a parent run per experiment, a child run per stage,
the resolved config, provenance, the final checkpoint as an artifact, and registry versions.

A rerun of an experiment that did not finish reuses its parent and child runs (matched by the
config digest), so an interrupted run and its resumption land in one place. A stage an earlier run
finished gets no new child run: the parent's tag radlab.<stage>.run names the run that trained it.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from radlab.config import Experiment, TrackingConfig, absolute_store, flatten
from radlab.errors import RadlabError

DIGEST_TAG = "radlab.digest"
CANDIDATE = "candidate"  # MLflow reserves "latest"
STAGE_TAG = "radlab.stage"
DATA_TAG = "radlab.data_digest"  # the training manifests' digest: a run is resumed only on the same data


def tracking_uri(config: TrackingConfig) -> str:
    """The YAML's URI, else $MLFLOW_TRACKING_URI (a local store in it made absolute, as the YAML's
    is), else a sqlite store under ./radlab_runs."""
    if config.uri:
        return config.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return absolute_store(os.environ["MLFLOW_TRACKING_URI"], Path.cwd())
    Path("radlab_runs").mkdir(exist_ok=True)
    return f"sqlite:///{Path('radlab_runs/mlflow.db').resolve()}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class RegistryError(RadlabError, ValueError):
    """A model reference (`models:/...`, `runs:/...`) that names nothing in the tracking store."""


def fetch_checkpoint(source: str, uri: str, dest: Path) -> Path:
    """A local folder for a checkpoint given as a folder, `runs:/<id>/model` or `models:/name@alias`."""
    if "://" not in source and ":/" not in source:
        return Path(source)
    from mlflow.artifacts import download_artifacts

    if source.startswith("models:/"):
        source = model_version(MlflowClient(uri, registry_uri=uri), source).source
    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=uri))
    except MlflowException as err:
        raise RegistryError(f"{source}: nothing to download from {uri} ({err.message.splitlines()[0]})") from None


def model_version(client: MlflowClient, reference: str):
    """The ModelVersion of `models:/name@alias`, `models:/name/3` or `models:/name/latest`."""
    spec = reference.removeprefix("models:/")
    name, alias = spec.split("@", 1) if "@" in spec else (spec.partition("/")[0], None)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise RegistryError(f"{reference}: the registry has no versions of {name!r}")
    if alias is not None:
        aliases = client.get_registered_model(name).aliases  # alias -> version
        if alias not in aliases:
            raise RegistryError(f"{reference}: {name!r} has no alias {alias!r} (aliases: "
                                f"{', '.join(sorted(aliases)) or 'none'}; or name a version, models:/{name}/latest)")
        return client.get_model_version(name, aliases[alias])
    version = spec.partition("/")[2]
    if version in ("", "latest"):
        return max(versions, key=lambda v: int(v.version))
    found = [v for v in versions if str(v.version) == version]
    if not found:
        raise RegistryError(f"{reference}: {name!r} has no version {version} (versions: "
                            f"{', '.join(sorted((str(v.version) for v in versions), key=int))})")
    return found[0]


class Tracker:
    """The MLflow runs of one experiment."""

    def __init__(self, experiment: Experiment):
        self.config = experiment.tracking
        self.uri = tracking_uri(self.config)
        self.client = MlflowClient(self.uri)
        self.experiment = experiment
        found = self.client.get_experiment_by_name(experiment.name)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = None
            if "://" not in self.uri or self.uri.startswith("sqlite"):
                location = Path(self.config.artifact_root).resolve().as_uri()
            try:
                self.experiment_id = self.client.create_experiment(experiment.name, artifact_location=location)
            except MlflowException as err:  # another process created it since the lookup
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                self.experiment_id = self.client.get_experiment_by_name(experiment.name).experiment_id

    def _unfinished(self, filters: str, finished_too: bool = False) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filters, max_results=10,
                                       order_by=["attributes.start_time DESC"])
        for run in runs:
            if finished_too or run.info.status != RunStatus.to_string(RunStatus.FINISHED):
                return run.info.run_id
        return None

    def finished_trial(self, sweep_run_id: str, data_digest: str):
        """This experiment's finished run under a sweep run, if a previous attempt completed it on the
        same training data."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`{DIGEST_TAG}` = '{self.experiment.digest()}' and tags.`{STAGE_TAG}` = 'experiment' "
                          f"and tags.`{MLFLOW_PARENT_RUN_ID}` = '{sweep_run_id}' and tags.`{DATA_TAG}` = '{data_digest}' "
                          "and attributes.status = 'FINISHED'")
        return runs[0] if runs else None

    def mark_stopped(self, sweep_run_id: str, digest: str) -> None:
        """A sweep trial its scheduler stopped: its run and stage runs, however their process
        ended, are KILLED and say why."""
        runs = self.client.search_runs([self.experiment_id], f"tags.`{DIGEST_TAG}` = '{digest}' and "
                                       f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{sweep_run_id}'")
        for run in runs:
            stages = self.client.search_runs([self.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run.info.run_id}'")
            for stopped in [run, *stages]:
                if stopped.info.status != RunStatus.to_string(RunStatus.FINISHED):
                    self.client.set_tag(stopped.info.run_id, "radlab.trial_status", "stopped early by the scheduler")
                    self.client.set_terminated(stopped.info.run_id, "KILLED")

    def open_parent(self, submitted: str, data_digest: str, stage: str = "experiment", digest: str | None = None,
                    parent_run_id: str | None = None, resume: bool = False) -> str:
        """The run of an experiment (or of a sweep, or of a sweep's trial under `parent_run_id`): an
        unfinished one with the same settings and training data goes on; with `resume` (`radlab sweep
        --resume`, whose restored trials name their sweep run) the latest goes on even where it had
        finished."""
        digest = digest or self.experiment.digest()
        run_id = self._unfinished(f"tags.`{DIGEST_TAG}` = '{digest}' and tags.`{STAGE_TAG}` = '{stage}' "
                                  f"and tags.`{DATA_TAG}` = '{data_digest}'", resume)
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {DIGEST_TAG: digest, STAGE_TAG: stage, MLFLOW_RUN_NAME: f"{self.experiment.name}-{stage}-{digest[:6]}",
                "radlab.git_commit": git_commit(), DATA_TAG: data_digest}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=tags)
        run_id = run.info.run_id
        params = flatten(self.experiment.model_dump(mode="json"))
        items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])
        self.client.log_text(run_id, submitted, "experiment.yaml")
        return run_id

    def log_datasets(self, run_id: str, cards: list) -> None:
        """The run's data as MLflow dataset inputs (name, digest, path, a profile of counts per split,
        view, label and text source), once per run: a resumed run does not log them twice.
        MLflow's store looks each dataset up in the experiment and inserts it if absent, in one
        transaction: of sweep trials that log the same new datasets at once, all but one fail on the
        experiment's unique (name, digest). Their second attempt finds the datasets and links them;
        an error that is not that race fails the second attempt as well and is raised."""
        for attempt in (1, 2):
            logged = {(d.dataset.name, d.dataset.digest) for d in self.client.get_run(run_id).inputs.dataset_inputs}
            inputs = [DatasetInput(Dataset(c.name, c.digest, "local", str(Path(c.path).resolve()), None,
                                           json.dumps(c.profile)), [InputTag("mlflow.data.context", c.context)])
                      for c in cards if (c.name, c.digest) not in logged]
            if not inputs:
                return
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except MlflowException:
                if attempt == 2:
                    raise

    def open_child(self, parent_id: str, stage: str) -> str:
        """The stage's run under this parent: the one an earlier attempt opened, or a new one."""
        earlier = self.client.search_runs([self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
                                          filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}' and "
                                                        f"tags.`{STAGE_TAG}` = '{stage}'")
        if earlier:
            self.client.update_run(earlier[0].info.run_id, status="RUNNING")
            return earlier[0].info.run_id
        section = getattr(self.experiment, stage, None)
        run = self.client.create_run(self.experiment_id, tags={
            MLFLOW_PARENT_RUN_ID: parent_id, STAGE_TAG: stage, MLFLOW_RUN_NAME: stage})
        if section is not None:
            params = flatten(section.model_dump(mode="json"))
            self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sorted(params.items())])
        return run.info.run_id

    def stage_done(self, parent_id: str, stage: str, trained_in: str | None,
                   stage_metrics: dict[str, float]) -> dict[str, float]:
        """Point the parent run at the run that trained `stage` (tag radlab.<stage>.run) and log on
        the parent its failed worker groups (from that run) and the last validation loss of the
        stage's `stage_metrics` (<stage>/worker_group_failures, <stage>/val_loss and val_loss);
        return those."""
        copied = {}
        if trained_in is not None:
            self.client.set_tag(parent_id, f"radlab.{stage}.run", trained_in)
            try:
                failures = self.client.get_run(trained_in).data.metrics.get("worker_group_failures", 0.0)
                copied[f"{stage}/worker_group_failures"] = failures
            except MlflowException:  # trained under another tracking store
                pass
        if "val_loss" in stage_metrics:
            copied |= {f"{stage}/val_loss": stage_metrics["val_loss"], "val_loss": stage_metrics["val_loss"]}
        if copied:
            self.log_metrics(parent_id, copied)
        return copied

    def finish(self, run_id: str, ok: bool = True, interrupted: bool = False, error: str | None = None) -> None:
        """Close a run: FINISHED, FAILED (`error`, its cause, tagged radlab.error), or KILLED when it
        was interrupted (Ctrl-C, a sweep's scheduler stopping the trial) rather than broken."""
        if not ok and self.client.get_run(run_id).info.status == "KILLED":
            return  # a sweep trial its scheduler stopped, which the sweep has recorded so
        if error and not interrupted:
            self.client.set_tag(run_id, "radlab.error", error[:5000])
        self.client.set_terminated(run_id, "KILLED" if interrupted else "FINISHED" if ok else "FAILED")
        # The sweep may mark its stopped trial (tag, then KILLED) between the look above and this
        # end: whichever wrote last, a run the sweep tagged ends KILLED.
        if not ok and not interrupted and "radlab.trial_status" in self.client.get_run(run_id).data.tags:
            self.client.set_terminated(run_id, "KILLED")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value), step=step)

    def log_checkpoint(self, run_id: str, folder: Path, name: str = "model") -> str:
        """Log a checkpoint folder as the run's `name` artifact; return its artifact URI."""
        files = [p for p in Path(folder).iterdir() if p.name != "train_state.pt"]
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), f"{name}/{path.name}")
            else:
                self.client.log_artifact(run_id, str(path), name)
        return f"{self.client.get_run(run_id).info.artifact_uri}/{name}"

    def register(self, run_id: str, source: str, tags: dict | None = None, description: str = "",
                 alias: str | None = CANDIDATE) -> str | None:
        """Register the logged checkpoint as a new version of `tracking.register_as`, described,
        and give it `alias` (every run's newest model is `@candidate`; a sweep's best takes
        `@champion` only when it beats the holder: `tune.verdict.challenge_alias`)."""
        name = self.config.register_as
        if not name:
            return None
        try:
            self.client.get_registered_model(name)
        except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST) is the only way MLflow says "absent"
            self.client.create_registered_model(name)
        version = self.client.create_model_version(name, source, run_id, description=description or None,
                                                   tags={"radlab.experiment": self.experiment.name, **(tags or {})})
        if alias:
            self.client.set_registered_model_alias(name, alias, version.version)
        return version.version

    def latest_report(self, run_id: str, key: str = "lr") -> tuple[int, dict[str, float]] | None:
        """The step of a stage run's latest logged report and its metrics' latest values."""
        history = self.client.get_metric_history(run_id, key)
        if not history:
            return None
        return max(m.step for m in history), self.client.get_run(run_id).data.metrics

    def resumes(self, run_id: str) -> list[tuple[int, int]]:
        """(step, workers) of each time a stage run resumed (a restarted worker group, or a rerun)."""
        steps, workers = (sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
                          for key in ("resumed_at_step", "resumed_workers"))
        return [(int(s.value), int(w.value)) for s, w in zip(steps, workers)]

    def log_table(self, run_id: str, table: dict[str, list], path: str) -> None:
        """Write a table to a run as MLflow's table artifact (shown in its UI), replacing one a
        previous attempt wrote (MlflowClient.log_table appends, so a resumed run's rows would
        repeat)."""
        rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in zip(*table.values())]
        self.client.log_dict(run_id, {"columns": list(table), "data": rows}, path)  # NaN as null, as MLflow writes it
        logged = json.loads(self.client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": path, "type": "table"} not in logged:
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged + [{"path": path, "type": "table"}]))

    def read_table(self, run_id: str, path: str) -> dict[str, list] | None:
        """A table `log_table` wrote to a run, as {column: values}; None where the run has none.
        (MlflowClient.load_table searches runs through the process-wide tracking URI, not this
        client's, so it cannot be used with a store given per experiment.)"""
        folder = posixpath.dirname(path) or None
        if path not in {f.path for f in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            table = json.loads(Path(self.client.download_artifacts(run_id, path, tmp)).read_text())
        return {column: [row[i] for row in table["data"]] for i, column in enumerate(table["columns"])}

    def failures(self, run_id: str) -> list[str]:
        """The cause of each failed worker group of a stage run, in order."""
        tags = self.client.get_run(run_id).data.tags
        numbered = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tags.items() if k.startswith("radlab.failure."))
        return [cause for _, cause in numbered]

    def describe(self, run_id: str, text: str) -> None:
        """The run's description, shown at the top of its MLflow page."""
        self.client.set_tag(run_id, "mlflow.note.content", text)

    def open_run(self, stage: str, source: str) -> str:
        """A run of its own for work outside an experiment run (`radlab eval` of a checkpoint or a
        predictions file): tag radlab.stage `stage`, radlab.source what it worked on."""
        return self.client.create_run(self.experiment_id, tags={STAGE_TAG: stage, MLFLOW_RUN_NAME: stage,
                                                                "radlab.source": source}).info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_file(self, run_id: str, path: Path, folder: str) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def log_figure(self, run_id: str, figure, path: str) -> None:
        self.client.log_figure(run_id, figure, path)

    def metrics(self, run_id: str) -> dict[str, float]:
        """A run's metrics, each at its latest value."""
        return dict(self.client.get_run(run_id).data.metrics)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri

    def alias_holder(self, alias: str):
        """The version of `tracking.register_as` that holds `alias` (None where none does)."""
        try:
            return self.client.get_model_version_by_alias(self.config.register_as, alias)
        except MlflowException:  # the alias has no holder yet
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.config.register_as, alias, version)


def check_model_reference(reference: str, uri: str) -> None:
    """Refuse a `models:/...` reference that names no version in the registry at `uri`."""
    model_version(MlflowClient(uri, registry_uri=uri), reference)
