"""MLflow: a file store in <run>/mlruns unless MLFLOW_TRACKING_URI names another; experiment
MLFLOW_EXPERIMENT_NAME, else mimreg; the run id kept in <run>/loggers.json."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mimreg.engine.loggers import flat, read_ids, safe_key, store_id

PARAM_CHARS = 500  # MLflow's older stores refuse longer parameter values


class MlflowLogger:
    def __init__(self, run_dir: Path):
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store: no server, no database package; MLflow >= 3.7 asks for this opt-in
            uri = (run_dir / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = read_ids(run_dir).get("mlflow")
        self.resumed = self.run_id is not None
        if self.run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "mimreg")
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id
            store_id(run_dir, "mlflow", self.run_id)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(safe_key(k), v, now, step) for k, v in values.items()])

    def log_config(self, config: dict) -> None:
        """The whole config as config.json; as parameters once (MLflow refuses a parameter's new value)."""
        from mlflow.entities import Param

        self.client.log_dict(self.run_id, config, "config.json")
        if not self.resumed:
            params = [Param(safe_key(k), v[:PARAM_CHARS]) for k, v in flat(config).items()]
            for start in range(0, len(params), 100):  # log_batch takes at most 100 parameters
                self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_image(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="analysis")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
