"""Starting or joining Ray. Locally every Ray listener stays on the loopback interface."""

from __future__ import annotations

import os

from radlab.config import ConfigError, RayConfig

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(config: RayConfig, verbose: bool = True) -> str | None:
    """Join `config.address`, or start an embedded Ray on 127.0.0.1 sized for the workers; return
    the folder of Ray's logs (None when Ray was already started). With `verbose` off, the workers'
    and Ray's own output stays in those logs instead of the console."""
    import ray

    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return None
    address = config.address or os.environ.get("RAY_ADDRESS")  # a Ray job's driver gets RAY_ADDRESS
    if address:
        context = ray.init(address=address, log_to_driver=verbose)
    else:
        cpus = config.num_cpus or max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker) + 1)
        # address="local": a Ray of its own, even where another Ray runs on this machine.
        context = ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=verbose,
                           runtime_env={"env_vars": LOOPBACK_ENV})
    return os.path.join(context.address_info["session_dir"], "logs")


def check_resources(config: RayConfig) -> None:
    """On an embedded Ray (no autoscaler can add nodes), refuse workers that no node can hold, before
    anything starts: Ray would otherwise wait for them forever. Errors name the fields."""
    import ray

    if config.address or os.environ.get("RAY_ADDRESS"):
        return
    need = {"CPU": config.cpus_per_worker, "GPU": 1.0 if config.use_gpu else 0.0}
    if config.accelerator:
        need[f"accelerator_type:{config.accelerator}"] = 0.001
    wanted = config.min_workers or config.workers
    holds = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node["Resources"]
            holds += int(min(have.get(k, 0.0) / v for k, v in need.items() if v) + 1e-9)
    if holds < wanted:
        asked = ", ".join(f"{k}: {v:g}" for k, v in need.items() if v)
        fields = "ray.use_gpu / ray.accelerator" if config.use_gpu or config.accelerator else "ray.cpus_per_worker"
        raise ConfigError(f"ray.workers={wanted} x {{{asked}}}: this machine's Ray can hold {holds} such workers "
                         f"({fields}); lower them, or join a cluster with ray.address / --address")
