import json
import os
import subprocess
import sys

PROBE = """
import json, os, ray
from radlab.config import RayConfig
from radlab.runtime import init_ray

init_ray(RayConfig(workers=1, num_cpus=1), verbose=False)
seen = ray.get(ray.remote(lambda: {k: os.environ.get(k) for k in (
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_USAGE_STATS_ENABLED")}).remote())
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
    (a report with a checkpoint and the end of a stage wait for its poll); a value the user set wins."""
    default = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": None}
    assert embedded_ray_sees(default) == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_USAGE_STATS_ENABLED": "0"}
    assert embedded_ray_sees({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1.5"})["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.5"


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
