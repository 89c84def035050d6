"""What a running stage writes to its MLflow run: step metrics and system metrics from rank 0, and
each failed worker group from Ray Train's controller. The driver's `Tracker` writes the rest."""

from __future__ import annotations

import sys
import time

from mlflow import MlflowClient
from mlflow.entities import Metric


class StepLog:
    """Step metrics straight to the stage's MLflow run, with the node's system metrics (CPU, memory,
    disk, network, GPUs where nvidia-ml-py is installed: MLflow's `system/*`) every `system_every_s`.
    Without a run (`run_id` None: ranks other than 0, or a stage run outside MLflow) it writes
    nothing. A resumed attempt replays the steps after its checkpoint; those the attempt before had
    already logged are not logged again."""

    def __init__(self, tracking_uri: str, run_id: str | None, system_every_s: float = 10.0):
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri) if run_id else None
        self.logged_upto = 0
        self.system = None
        if self.client is not None:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self.system = SystemMetricsMonitor(run_id, sampling_interval=system_every_s, resume_logging=True,
                                               tracking_uri=tracking_uri)
            self.system.start()

    def close(self) -> None:
        """Stop sampling the system metrics, logging the last samples."""
        if self.system is not None:
            self.system.finish()

    def resumed(self, step: int, world: int) -> None:
        """Record the restart (the driver shows it) and note how far the attempts before logged."""
        if self.client is not None:
            history = self.client.get_metric_history(self.run_id, "loss")
            self.logged_upto = max((m.step for m in history), default=0)
            self._write({"resumed_at_step": step, "resumed_workers": world}, step)

    def log(self, metrics: dict, step: int) -> None:
        if self.client is not None and step > self.logged_upto:
            self._write(metrics, step)

    def _write(self, metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()
                                                    if k != "step"])


def record_failure(tracking_uri: str, run_id: str, stage: str, cause: str) -> None:
    """A failed worker group in the stage's run: metric worker_group_failures (its count) and tag
    radlab.failure.<n> (its cause). Bookkeeping never stops training: where the store cannot be
    written (a lost node took the controller's working folder with it), the cause goes to stderr
    (Ray's log), and the resumed stage's own resumed_at_step still shows the restart."""
    try:
        client = MlflowClient(tracking_uri)
        count = len(client.get_metric_history(run_id, "worker_group_failures")) + 1
        client.log_metric(run_id, "worker_group_failures", count, step=count)
        client.set_tag(run_id, f"radlab.failure.{count}", cause[:4000])
    except Exception as err:  # noqa: BLE001 - any store error; the restart itself must go on
        print(f"[{stage}] worker group failed ({cause}); not recorded in MLflow: {err!r}", file=sys.stderr)
