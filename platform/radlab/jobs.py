"""Running experiments on a Ray cluster through the Ray Jobs API.

`submit` packages the project folder (the code and the experiment YAML, not data, runs or the
virtualenv) as the job's working directory, and runs `radlab run <yaml> --set ray.address=auto`
there, so the experiment joins the cluster it was submitted to. The cluster's nodes must have
radlab's dependencies installed (the cluster configs under cluster/ do that).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from radlab.config import Experiment
from radlab.errors import RadlabError
from radlab.runtime import LOOPBACK_ENV

# Never uploaded with a job: environments, outputs, data and VCS metadata.
EXCLUDES = [".venv", "venv", ".git", "radlab_runs", "data", "exports", "mlruns", "**/__pycache__", "*.egg-info",
            ".pytest_cache", "benchmarks/results"]
AGENT_WAIT_S = 60


class JobsError(RadlabError, RuntimeError):
    """A cluster that cannot be reached or a job that does not exist; the message says which."""


def client(address: str):
    """A JobSubmissionClient for `address` (http://<head>:8265). A cluster started with token
    authentication (`ray start`'s default) needs RAY_AUTH_MODE=token here, and the token in
    RAY_AUTH_TOKEN or ~/.ray/auth_token: Ray's client sends it."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise JobsError(f"{address}: no Ray Jobs API there ({err})") from None


def submission_id(experiment: Experiment) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", experiment.name)
    return f"radlab-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _store_path(uri: str) -> Path | None:
    """The folder or file of a tracking store on a filesystem (sqlite:///x.db, file:///x, a bare
    path); None for a tracking server."""
    if uri.startswith("sqlite:///"):  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return None if "://" in uri else Path(uri)


def job_local(experiment: Experiment) -> list[str]:
    """Settings that would keep a job's results inside its own copy of the project, which the
    cluster deletes when the job ends: a tracking store or checkpoint folder given relative to it."""
    problems = []
    uri = experiment.tracking.uri
    store = None if uri is None else _store_path(uri)
    if uri is None or (store is not None and not store.is_absolute()):
        problems.append(f"tracking.uri {uri or '(unset: a sqlite store in the working folder)'} would keep the job's "
                        "runs in its copy of the project: set it to your MLflow server (http://host:5000) or an "
                        "absolute path on storage the cluster shares")
    storage = experiment.ray.storage_path
    if "://" not in storage and not Path(storage).is_absolute():
        problems.append(f"ray.storage_path {storage} would keep the job's checkpoints in its copy of the project: "
                        "set it to storage every node sees (s3://bucket/radlab/ray, or an absolute shared path)")
    return problems


def submit(address: str, experiment: Experiment, yaml_path: Path, overrides: list[str], project: Path,
           entrypoint_num_cpus: float = 0.0) -> str:
    """Submit `radlab run` of the experiment as a job; return its submission id."""
    problems = job_local(experiment)
    if problems:
        raise JobsError("; ".join(problems))
    yaml_path = Path(yaml_path).resolve()
    project = Path(project).resolve()
    if not yaml_path.is_relative_to(project):
        raise JobsError(f"{yaml_path}: the experiment must be inside the project folder {project} to travel with it")
    sets = " ".join(f"--set {shlex.quote(s)}" for s in [*overrides, "ray.address=auto"])
    entrypoint = f"radlab run {shlex.quote(str(yaml_path.relative_to(project)))} {sets}"
    jobs = client(address)
    deadline = time.time() + AGENT_WAIT_S
    while True:
        try:
            return jobs.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id(experiment),
                runtime_env={"working_dir": str(project), "excludes": EXCLUDES, "env_vars": dict(LOOPBACK_ENV)},
                entrypoint_num_cpus=entrypoint_num_cpus,
                metadata={"radlab.experiment": experiment.name, "radlab.digest": experiment.digest()},
            )
        except RuntimeError as err:  # a head that just started has no job agent for a few seconds
            if "No available agent" not in str(err) or time.time() > deadline:
                raise
            time.sleep(1)


def _known(jobs, job_id: str, address: str) -> None:
    """Raise JobsError unless the cluster knows the job (Ray's client answers a RuntimeError)."""
    try:
        jobs.get_job_status(job_id)
    except RuntimeError as err:
        raise JobsError(f"{job_id}: no such job on {address} ({str(err).splitlines()[0]}); "
                        "`radlab jobs list` shows the ids") from None


def follow(address: str, job_id: str) -> Iterator[str]:
    """Yield the job's log as Ray streams it (new lines only), until the job ends."""
    jobs = client(address)
    _known(jobs, job_id, address)  # an unknown id is a plain error here, not a failed log stream
    stream = jobs.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def status(address: str, job_id: str) -> str:
    jobs = client(address)
    _known(jobs, job_id, address)
    return str(jobs.get_job_status(job_id).value)


def list_jobs(address: str) -> list[dict]:
    out = []
    for job in client(address).list_jobs():
        out.append({"id": job.submission_id or job.job_id, "status": str(job.status.value),
                    "experiment": (job.metadata or {}).get("radlab.experiment", ""), "entrypoint": job.entrypoint,
                    "start_time": job.start_time})
    return sorted(out, key=lambda j: j["start_time"] or 0)


def logs(address: str, job_id: str) -> str:
    jobs = client(address)
    _known(jobs, job_id, address)
    return jobs.get_job_logs(job_id)


def stop(address: str, job_id: str) -> bool:
    jobs = client(address)
    _known(jobs, job_id, address)
    return jobs.stop_job(job_id)
