"""Deploying the report application with Ray Serve from the command line (`radlab serve`): the
application's args from a Serve config and the options given, auth wherever the listener is not
loopback, the deployment itself (with the replica's own error where it fails), and a one-off
request for `radlab serve --once`."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import httpx
import ray
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from radlab.config import ConfigError, RayConfig, TrackingConfig, is_loopback_host, read_yaml
from radlab.errors import RadlabError
from radlab.runtime import init_ray
from radlab.serve.app import report_app
from radlab.tracking.runs import check_model_reference, tracking_uri

APP_NAME = "radlab"
LOCAL_SERVE = Path("serving/local.yaml")


class DeployError(RadlabError):
    """The application did not deploy, or did not answer a request; the message says why."""


def deploy_failure(app_name: str) -> str:
    """Why an application failed to deploy, from Serve's status (the replica's own error)."""
    status = serve.status().applications.get(app_name)
    if status is None:
        return f"application {app_name} is not known to Serve"
    return "\n".join([status.message] + [d.message for d in status.deployments.values() if d.message])


class HealthWatch:
    """While an application serves: each change of a deployment's health, as lines to print. Serve
    restarts a replica that died (a crash, a kill, out of memory) on its own; the console says so
    (UNHEALTHY with Serve's reason, then HEALTHY again) instead of the restart going unseen. Serve's
    controller not answering is said once, not raised: its replicas and HTTP proxy serve on without
    it, and the command ending would take the embedded Ray, and them, with it."""

    def __init__(self, app_name: str):
        self.app_name, self.unanswered = app_name, False
        self.seen = self._health()

    def _health(self) -> dict[str, tuple[str, str, dict]]:
        status = serve.status().applications.get(self.app_name)
        return {} if status is None else {name: (d.status.value, d.message, dict(d.replica_states))
                                          for name, d in status.deployments.items()}

    def changes(self) -> list[str]:
        try:
            now = self._health()
        except (RayError, RayServeException, ConnectionError, TimeoutError) as err:
            said, self.unanswered = self.unanswered, True
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            return [] if said else [f"Serve's controller did not answer ({type(err).__name__}: {first}): the "
                                    "replicas serve on, but a restart or a change of health goes unsaid until it "
                                    "answers again"]
        lines = ["Serve's controller answers again"] if self.unanswered else []
        self.unanswered = False
        for name, (health, message, replicas) in now.items():
            before = self.seen.get(name)
            if before is not None and before[0] != health:
                states = ", ".join(f"{count} {state}" for state, count in sorted(replicas.items())) or "no replicas"
                lines.append(f"{self.app_name}/{name}: {before[0]} -> {health}{f': {message}' if message else ''} "
                             f"(replicas: {states})")
        self.seen = now
        return lines


TOKEN_ENV = "RADLAB_SERVE_TOKEN"


def read_serve_config(path: Path) -> tuple[dict, str, dict]:
    """(the first application's args, the HTTP host, its deployment's ray_actor_options) of a Serve
    config file; ConfigError naming the file for one that is not UTF-8, not YAML, or holds no
    application."""
    raw = read_yaml(path)
    applications = raw.get("applications") if isinstance(raw, dict) else None
    if not applications or not isinstance(applications[0], dict):
        raise ConfigError(f"{path}: a Serve config needs applications: [{{import_path: ..., args: ...}}]")
    http = raw.get("http_options") or {}
    deployments = applications[0].get("deployments") or [{}]
    actor = deployments[0].get("ray_actor_options") if isinstance(deployments[0], dict) else None
    return dict(applications[0].get("args") or {}), str(http.get("host", "127.0.0.1")), dict(actor or {})


def with_auth_for(host: str, args: dict) -> dict:
    """The application's args for an HTTP listener on `host`: on loopback as given; on any other
    host auth is on, with the token in `args.api_key_env` (RADLAB_SERVE_TOKEN where unset), which
    must hold one."""
    if is_loopback_host(host):
        return args
    variable = args.get("api_key_env") or TOKEN_ENV
    if not os.environ.get(variable):
        raise ConfigError(f"host {host} is not loopback, so requests need a bearer token: export {variable}=<token> "
                          "(args.api_key_env names another variable)")
    return {**args, "api_key_env": variable}


def application_args(model: str | None, config: Path | None, host: str | None) -> tuple[dict, str, dict]:
    """(the application's args, the host to listen on, the replica's ray_actor_options): a Serve
    config's (serving/local.yaml where none is named and it exists), `model` over its args.model,
    the host given, else the config's, else loopback. A registry reference that names nothing fails
    here, before anything deploys."""
    if config is not None and not config.is_file():
        raise ConfigError(f"--config {config}: no such Serve config file")
    config = config or (LOCAL_SERVE if LOCAL_SERVE.is_file() else None)
    args, config_host, actor_options = read_serve_config(config) if config else ({}, "127.0.0.1", {})
    host = host or config_host
    args = with_auth_for(host, args)
    if model:
        args["model"] = model
    args.setdefault("tracking_uri", tracking_uri(TrackingConfig()))
    if "model" not in args:
        raise ConfigError("--model is required (or a --config whose application has args.model)")
    if args["model"].startswith("models:/"):
        check_model_reference(args["model"], args["tracking_uri"])
    return args, host, actor_options


def throughput_serving_env(port: int, replicas: int = 1, verbose: bool = False) -> dict[str, str]:
    """Ray Serve's throughput-optimized mode, for the processes of an embedded Ray: above all direct
    ingress, where each replica of an ingress deployment answers HTTP itself, on a port of
    [port, port + replicas), instead of behind Serve's HTTP proxy (on 2 cores the HTTP path alone
    serves 3x the requests/s at concurrency 32; see the README's serving benchmark). The replica's
    port is the one asked for, so a replica Serve restarts takes it again at once (no quarantine),
    and a replica that stops has no load balancer to wait for (no 30 s draining period). On a
    cluster a load balancer would have to find the replicas' ports, so there Serve's proxy stays.
    `verbose`: the replicas' Serve logs (access logs) go to stderr too, which the mode turns off,
    and so reach the console."""
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + replicas), "RAY_SERVE_PORT_QUARANTINE_S": "0",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
            "RAY_SERVE_LOG_TO_STDERR": "1" if verbose else "0"}


def check_port_free(host: str, port: int) -> None:
    """Refuse, before Ray starts, a port another program listens on: the replica could not take it
    (Serve would retry it and fail with its own traceback). Probed as a server binds (SO_REUSEADDR),
    so a port in TIME_WAIT after an earlier run is free."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise DeployError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); another server "
                              "holds it: stop it or choose another --port") from None


def deploy(args: dict, actor_options: dict, host: str, port: int, verbose: bool = False) -> tuple[str, str | None]:
    """Start Ray (local unless RAY_ADDRESS says otherwise) and Serve on `host`:`port`, deploy the
    application and wait until it answers; return (its URL, the folder of Ray's own logs where
    they are kept off the console). On a Ray of its own the one replica answers on `port` itself
    (`throughput_serving_env`); joining a running Ray, Serve's proxy does. A replica that fails to
    start is a DeployError with its error, and Serve is left running for whatever else it serves."""
    embedded = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if embedded:
        check_port_free(host, port)
    serving_env = throughput_serving_env(port, verbose=verbose) if embedded else None
    logs = init_ray(RayConfig(), verbose, embedded_env=serving_env)
    if not verbose:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the driver's own Serve notes
    # With direct ingress Serve's proxy, which no request then passes, listens on a port the system picks.
    serve.start(http_options={"host": host, "port": 0 if embedded else port})
    try:
        serve.run(report_app(args, actor_options), name=APP_NAME, route_prefix="/", blocking=False)
    except RuntimeError:
        failure = deploy_failure(APP_NAME)
        serve.delete(APP_NAME)
        raise DeployError(f"deploy failed\n{failure}") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}", logs


def undeploy() -> None:
    """Delete this application (on a cluster, others keep serving) and disconnect from Ray."""
    serve.delete(APP_NAME)
    ray.shutdown()


def report_once(url: str, image: Path, indication: str, args: dict) -> dict:
    """POST one image to /v1/reports, with the bearer token where the args ask for one; the answer."""
    key = os.environ.get(args["api_key_env"], "") if args.get("api_key_env") else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with open(image, "rb") as fh:
        reply = httpx.post(f"{url}/v1/reports", files={"image": (image.name, fh)}, data={"indication": indication},
                           headers=headers, timeout=120)
    if reply.status_code != 200:
        raise DeployError(f"{reply.status_code} {reply.text}")
    return reply.json()
