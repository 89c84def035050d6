"""Starting or joining Ray. Locally every Ray listener stays on the loopback interface."""

from __future__ import annotations

import os

from radlab.config import RayConfig

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(config: RayConfig) -> None:
    """Join `config.address`, or start an embedded Ray on 127.0.0.1 sized for the workers."""
    import ray

    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")  # a Ray job's driver gets RAY_ADDRESS
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    cpus = config.num_cpus or max(os.cpu_count() or 1, int(config.workers * config.cpus_per_worker) + 1)
    # address="local": a Ray of its own, even where another Ray runs on this machine.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": LOOPBACK_ENV})
