"""MLflow (``use_mlflow``, or ``mlflow_experiment_name`` set, as Axolotl does): metrics by step,
the resolved config as parameters, alerts and the end as text artifacts, the run's status.

The MLflow run id is kept in the run folder (``trackers.json``): a resume logs into the same
MLflow run (its parameters that changed, such as max_steps, become ``resumed.*`` tags, since
MLflow parameters cannot change). Through ``MlflowClient`` (no global active run), on this
sink's thread.
"""

from __future__ import annotations

import os
import time

from engine.train.sinks import register
from engine.train.sinks._metrics import flat, scalars, step_of, text
from engine.train.sinks._worker import TrackerSink, lacks_library, resuming

FINAL = {"completed": "FINISHED", "early_stopped": "FINISHED", "stopped": "KILLED"}


class MlflowSink(TrackerSink):
    name = "mlflow"

    def open(self, start: dict) -> None:
        from mlflow.tracking import MlflowClient

        c = self.config
        uri = c.mlflow_tracking_uri
        if uri and (uri.startswith("file:") or "://" not in uri):
            # A file store asked for by name: MLflow 3 keeps it only behind this switch.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri or None)
        self.status = "FAILED"
        run_id = self.saved_id("mlflow_run_id") if resuming(start) else None
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
        else:
            name = c.mlflow_experiment_name or "leviathan"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            run_id = self.client.create_run(
                exp_id, run_name=c.mlflow_run_name or self.run_dir.name
            ).info.run_id
            self.save_id("mlflow_run_id", run_id)
        self.run_id = run_id
        self._params(flat(c.model_dump(mode="json")))  # secrets masked

    def _params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        have = self.client.get_run(self.run_id).data.params
        new = [Param(k, v[:6000]) for k, v in params.items() if k not in have]
        changed = [
            RunTag(f"resumed.{k}", v[:5000]) for k, v in params.items() if k in have and have[k] != v[:6000]
        ]
        for i in range(0, len(new), 100):  # MLflow takes 100 parameters a batch
            self.client.log_batch(self.run_id, params=new[i : i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def handle(self, record: dict) -> None:
        from mlflow.entities import Metric

        step = step_of(record) or 0
        ms = int(float(record.get("t", time.time())) * 1000)
        metrics = [Metric(k, v, ms, step) for k, v in scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        said = text(record)
        if said:
            kind = record["kind"]
            self.client.log_text(self.run_id, said[1], f"{said[0]}/step-{step:08d}-{kind}-{ms}.txt")
        if record.get("kind") == "end":
            self.status = FINAL.get(record.get("status"), "FAILED")
            self.client.set_tag(self.run_id, "leviathan.status", str(record.get("status")))

    def finish(self) -> None:
        if getattr(self, "run_id", None):
            self.client.set_terminated(self.run_id, status=self.status)


@register("mlflow")
def open_mlflow(config, run_dir, log):
    if not config.mlflow_on or lacks_library(log, "mlflow", "use_mlflow", "mlflow"):
        return None
    return MlflowSink(config, run_dir, log)
