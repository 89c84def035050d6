"""radlab: train, judge and serve radiology report models on your own hardware."""

import logging
import os

# Nothing about a site's experiments leaves it: MLflow's usage telemetry is off unless the
# environment says otherwise (Ray's usage stats likewise, in radlab.runtime).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# MLflow announces every new local store ("Creating initial MLflow database tables..."); a run's
# console says where its store is instead.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
