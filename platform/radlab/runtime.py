"""Starting or joining Ray. Locally every Ray listener stays on the loopback interface."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from radlab.config import ConfigError, RayConfig, cpu_has_native_bf16

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default);
# a report with a checkpoint waits for that poll, and so does the end of every stage. On the
# embedded Ray a poll is a local call, so it polls every 0.25 s: 3-4 s less per stage of one
# checkpoint on two cores. Each worker group also gets a process of its own that watches for nodes
# being drained (a cloud reclaiming a spot node); the embedded Ray is this one machine, which
# nothing drains, and that process starts while the workers import their libraries: without it
# those imports took 4.4 s instead of 5.6 s on two cores (README, Benchmarks). A value already in
# the environment is kept; a cluster's Ray keeps both of Ray Train's defaults.
EMBEDDED_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def embedded_ray_env() -> dict[str, str]:
    """The variables every process of an embedded Ray gets."""
    return LOOPBACK_ENV | {key: os.environ.get(key, value) for key, value in EMBEDDED_TRAIN_ENV.items()}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def embedded_ray_options(num_cpus: int, env: dict[str, str] | None = None) -> dict:
    """`ray.init` arguments of an embedded Ray on this machine. Its dashboard runs on 127.0.0.1, on
    a port of its own named to every process as RAY_API_SERVER_ADDRESS: Ray Train's placement group
    cleaner asks that state API every second whether a stage's controller still lives, and removes
    the stage's workers when it does not. Without the address named, Ray looks for an API among
    all the Rays on the machine: with none it finds nothing (and a stopped sweep trial's stage held
    its CPUs until the driver ended), and once another Ray with a dashboard was started beside a
    run, the run's cleaner asked that Ray, which knew no such controller, and removed the workers
    of a stage in training."""
    port = free_loopback_port()
    env = embedded_ray_env() | (env or {}) | {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    return {"address": "local", "num_cpus": num_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "runtime_env": {"env_vars": env}}


DASHBOARD_PORT_TRIES = 3


def start_embedded_ray(num_cpus: int, env: dict[str, str] | None = None, **init_args):
    """`ray.init` of an embedded Ray (address "local": a Ray of its own, even where another Ray runs
    on this machine). The dashboard's port is chosen free, and another process may bind it before
    Ray does (two runs started at once): Ray then refuses before starting anything, and it is
    started again on another port, saying so on stderr; a refusal of anything else is raised."""
    import ray

    for attempt in range(1, DASHBOARD_PORT_TRIES):
        options = embedded_ray_options(num_cpus, env)
        try:
            return ray.init(**options, **init_args)
        except ValueError as err:
            if "already occupied" not in str(err):
                raise
            print(f"Ray's dashboard port {options['dashboard_port']} was taken by another process before Ray "
                  f"started (attempt {attempt} of {DASHBOARD_PORT_TRIES}); starting Ray on another port",
                  file=sys.stderr, flush=True)
    return ray.init(**embedded_ray_options(num_cpus, env), **init_args)


def end_on_sigterm() -> None:
    """SIGTERM (a scheduler, `kill`) ends the command like Ctrl-C, so its runs are marked KILLED;
    set after Ray starts, whose core worker installs a handler of its own that aborts the process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextmanager
def own_signal_handlers() -> Iterator[None]:
    """Run a block that may install signal handlers of its own (Ray Train's fit handles SIGINT),
    and put back the command's handlers after it: an interrupt during evaluation or registration
    must end the command, not be "gracefully aborted" and ignored. Only the main thread has them
    (a sweep trial runs in a thread of its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def init_ray(config: RayConfig, verbose: bool = True, embedded_env: dict[str, str] | None = None) -> str | None:
    """Join `config.address`, or start an embedded Ray on 127.0.0.1 sized for the workers (see
    `start_embedded_ray`); return the folder of Ray's logs (None when Ray was already started).
    With `verbose` off, the workers' and Ray's own output stays in those logs instead of the
    console. `embedded_env`: variables for every process of an embedded Ray."""
    import ray

    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return None
    address = config.address or os.environ.get("RAY_ADDRESS")  # a Ray job's driver gets RAY_ADDRESS
    # Quiet, the driver's own Ray messages (start-up notes, warnings) go to a file beside the
    # workers' logs; only errors reach the console.
    level = logging.INFO if verbose else logging.ERROR
    if address:
        context = ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        cpus = config.num_cpus or max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker) + 1)
        context = start_embedded_ray(cpus, embedded_env, log_to_driver=verbose, logging_level=level)
    end_on_sigterm()  # after Ray: its core worker installs an aborting SIGTERM handler of its own
    logs = os.path.join(context.address_info["session_dir"], "logs")
    if not verbose:
        driver = logging.getLogger("ray")
        for handler in driver.handlers:
            handler.setLevel(logging.ERROR)
        for earlier in [h for h in driver.handlers if getattr(h, "radlab_driver_log", False)]:
            driver.removeHandler(earlier)  # a Ray started again in this process logs to its own folder
            earlier.close()
        to_file = logging.FileHandler(os.path.join(logs, "radlab-driver.log"), encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        to_file.radlab_driver_log = True
        driver.addHandler(to_file)
        driver.setLevel(logging.INFO)
    return logs


def check_resources(config: RayConfig, reserved_cpu: float = 0.0) -> None:
    """On an embedded Ray (no autoscaler can add nodes), refuse workers that no node can hold, before
    anything starts: Ray would otherwise wait for them forever. `reserved_cpu` is taken by something
    else for the whole run (a sweep's trial actors). Errors name the fields."""
    import ray

    if config.joins_cluster:
        return
    need = {"CPU": config.cpus_per_worker, "GPU": 1.0 if config.use_gpu else 0.0}
    if config.accelerator:
        need[f"accelerator_type:{config.placement_accelerator}"] = 0.001
    wanted = config.min_workers or config.workers
    holds = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = {**node["Resources"], "CPU": node["Resources"].get("CPU", 0.0) - reserved_cpu}
            holds += int(min(have.get(k, 0.0) / v for k, v in need.items() if v) + 1e-9)
    if holds < wanted:
        asked = ", ".join(f"{k}: {v:g}" for k, v in need.items() if v)
        fields = ("ray.use_gpu / ray.accelerator / ray.gpu_memory_gb" if config.use_gpu or config.accelerator
                  else "ray.cpus_per_worker")
        beside = f" beside {reserved_cpu:g} CPU its trials' actors take" if reserved_cpu else ""
        raise ConfigError(f"ray.workers={wanted} x {{{asked}}}: this machine's Ray can hold {holds} such workers"
                         f"{beside} ({fields}); lower them, or join a cluster with ray.address / --address")


def cluster_precision(config: RayConfig, timeout_s: float = 60) -> str:
    """What `precision: auto` resolves to on a cluster's CPUs, once joined: bf16 where every alive
    node that can hold a worker (`cpus_per_worker`) computes in it natively (avx512_bf16 or AMX),
    else fp32 (emulated bf16 is slower than fp32); each such node is asked by a task pinned to it.
    Nodes an autoscaler adds later are not seen: with none there yet, it refuses."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [node["NodeID"] for node in ray.nodes()
             if node.get("Alive") and node["Resources"].get("CPU", 0.0) >= config.cpus_per_worker]
    if not nodes:
        raise ConfigError(f"ray.precision auto: no node of the cluster can hold a worker of "
                          f"{config.cpus_per_worker:g} CPUs yet to ask; set ray.precision: fp32, or bf16 where "
                          f"the workers' CPUs have avx512_bf16 or AMX")
    ask = ray.remote(num_cpus=0)(cpu_has_native_bf16)
    asked = [ask.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes]
    answered, _ = ray.wait(asked, num_returns=len(asked), timeout=timeout_s)
    if len(answered) < len(asked):
        raise ConfigError(f"ray.precision auto: {len(asked) - len(answered)} of the cluster's {len(asked)} nodes that can "
                          f"hold a worker did not say within {timeout_s:g} s whether their CPUs have avx512_bf16 or "
                          f"AMX; set ray.precision: fp32, or bf16 where they have")
    return "bf16" if all(ray.get(asked)) else "fp32"
