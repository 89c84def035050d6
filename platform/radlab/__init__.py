"""radlab: train, judge and serve radiology report models on your own hardware."""

import os

# Nothing about a site's experiments leaves it: MLflow's usage telemetry is off unless the
# environment says otherwise (Ray's usage stats likewise, in radlab.runtime).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
