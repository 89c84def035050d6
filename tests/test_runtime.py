import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, os, ray
from radlab.config import RayConfig
from radlab.runtime import init_ray

init_ray(RayConfig(workers=1, num_cpus=1), verbose=False)
seen = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in (
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_USAGE_STATS_ENABLED")}).remote())
print(json.dumps(seen))
ray.shutdown()
"""


def embedded_ray_sees(env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_embedded_ray_polls_train_workers_often_unless_the_environment_says_otherwise():
    """Ray Train's controller, which runs in Ray's processes, polls every 0.25 s on the embedded Ray
    (a report with a checkpoint and the end of a stage wait for its poll) and starts no preemption
    watcher (tests/train/test_stages.py checks none ran); a value the user set wins."""
    default = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": None, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": None}
    assert embedded_ray_sees(default) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                                          "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    mine = embedded_ray_sees({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"})
    assert mine["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5" and mine["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"


STATE_PROBE = """
import ray
from ray.util.state import get_actor
from radlab.config import RayConfig
from radlab.runtime import init_ray

init_ray(RayConfig(workers=1, num_cpus=1), verbose=False)


@ray.remote(num_cpus=0)
class Alive:
    def ping(self):
        return 1


alive = Alive.remote()
ray.get(alive.ping.remote())
ask = ray.remote(num_cpus=0)(lambda actor_id: get_actor(actor_id, timeout=30).state)
print(ray.get(ask.remote(alive._actor_id.hex())))
ray.shutdown()
"""


def test_the_processes_of_an_embedded_ray_ask_its_own_state_api():
    """Ray Train's placement group cleaner, a process of the run's Ray, asks Ray's state API every
    second whether the stage's controller still lives, and removes the stage's workers when the
    answer is no. Without an address, Ray looks for that API among every Ray on the machine: it
    failed where the run's Ray was the only one (no API), and once another Ray with a dashboard
    started beside it (a test cluster, here), it asked that Ray, which knew no such controller, and
    a stage in training lost its workers. Every process of an embedded Ray finds its own."""
    done = subprocess.run([sys.executable, "-c", STATE_PROBE], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "ALIVE"


PORT_RACE_PROBE = """
import json, os, socket
import ray
import radlab.runtime as runtime
from radlab.config import RayConfig

taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
chosen = [taken.getsockname()[1]]
choose = runtime.free_loopback_port
runtime.free_loopback_port = lambda: chosen.pop() if chosen else choose()  # another process got there first
runtime.init_ray(RayConfig(workers=1, num_cpus=1), verbose=False)


@ray.remote(num_cpus=0)
def ask_the_state_api():
    from ray.util.state import list_nodes

    return os.environ["RAY_API_SERVER_ADDRESS"], len(list_nodes(timeout=30))


api, nodes = ray.get(ask_the_state_api.remote())
print(json.dumps({"taken": taken.getsockname()[1], "api": api, "nodes": nodes}))
ray.shutdown()
"""


def test_an_embedded_ray_whose_dashboard_port_was_taken_starts_on_another_and_says_so():
    """Two runs started at once may choose the same free port for their dashboards: the second Ray
    refuses the port before starting anything, and is started on another, which every process of
    it is told, with a line on stderr saying why."""
    done = subprocess.run([sys.executable, "-c", PORT_RACE_PROBE], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert not seen["api"].endswith(f":{seen['taken']}") and seen["nodes"] == 1
    assert (f"Ray's dashboard port {seen['taken']} was taken by another process before Ray started (attempt 1 of 3); "
            "starting Ray on another port") in done.stderr


def test_precision_auto_refuses_a_cluster_whose_nodes_do_not_answer_in_time(ray_session):
    """The nodes are asked by tasks; where they do not answer within the wait (a node whose raylet
    hangs), the run is refused with what to set instead of waiting on."""
    from radlab.config import ConfigError, RayConfig, cpu_has_native_bf16
    from radlab.runtime import cluster_precision

    with pytest.raises(ConfigError, match=r"ray.precision auto: 1 of the cluster's 1 nodes that can hold a worker did "
                                          r"not say within 0 s .*; set ray.precision: fp32"):
        cluster_precision(RayConfig(workers=1, cpus_per_worker=1), timeout_s=0)
    # The session's Ray is one node on this machine: given the time, it answers with this CPU's flags.
    assert cluster_precision(RayConfig(workers=1, cpus_per_worker=1)) == ("bf16" if cpu_has_native_bf16() else "fp32")
