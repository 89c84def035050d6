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
