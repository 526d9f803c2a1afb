"""The user's trackers (W&B offline, TensorBoard, MLflow on a file store), each read back with
its own reader after a real tiny run and a resume of it: the loss at each logged step equals the
run log's, and the resume appends to the same tracker run. A tracker that fails is an alert,
never a stopped run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import run_config

from engine.config.config import validate
from engine.run.events import RunLog, dedupe_steps, read_events


def train(model, root: Path, max_steps: int, **over):
    from engine.train.train import run

    raw = run_config(model, root, "tracked", max_steps=max_steps, save_steps=2, **over)
    config, _ = validate(raw, root / "tracked.yaml")
    return run(config, resume="auto")


def run_log_losses(run_dir: Path) -> dict[int, float]:
    records = read_events(run_dir / "events.jsonl").records
    return {r["step"]: r["loss"] for r in dedupe_steps(records)}


def tensorboard_losses(logdir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def wandb_runs(wandb_dir: Path) -> list[tuple[str, list[dict]]]:
    from wandb_offline import read_run

    return [read_run(f) for f in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))]


@pytest.mark.slow
def test_each_tracker_reads_back_the_run_log_and_a_resume_appends(tmp_path, tiny_model, monkeypatch):
    for library in ("tensorboard", "mlflow", "wandb"):  # the `trackers` extra; CI installs it
        pytest.importorskip(library)
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    uri = (tmp_path / "mlruns").as_uri()  # file:///...: MLflow's file store
    keys = dict(
        use_tensorboard=True,
        wandb_project="leviathan-test",
        wandb_mode="offline",
        mlflow_tracking_uri=uri,
        mlflow_experiment_name="tiny",
        val_set_size=16,
        eval_steps=2,
        notify={"webhook": "http://127.0.0.1:9/hooks/SECRET-TOKEN", "on": ["end"], "retries": 0},
    )
    first = train(tiny_model(), tmp_path, 4, **keys)
    second = train(tiny_model(), tmp_path, 8, **keys)  # resumes checkpoint-4
    assert first.status == second.status == "completed"
    run_dir = Path(second.run_dir)
    want = run_log_losses(run_dir)
    assert sorted(want) == list(range(1, 9))
    records = read_events(run_dir / "events.jsonl").records
    trackers = ("tensorboard_failed", "mlflow_failed", "wandb_failed")
    assert not [r for r in records if r["kind"] == "alert" and r.get("rule") in trackers]

    got = tensorboard_losses(run_dir / "tensorboard")
    assert got.keys() == want.keys()
    assert all(math.isclose(got[s], want[s], rel_tol=1e-6) for s in want)  # TensorBoard keeps float32

    ids = json.loads((run_dir / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow_run_id"]]  # one MLflow run, continued
    history = client.get_metric_history(ids["mlflow_run_id"], "train/loss")
    assert {m.step: m.value for m in history} == want and len(history) == len(want)
    evals = {r["step"]: r["eval_loss"] for r in records if r["kind"] == "eval"}
    eval_hist = client.get_metric_history(ids["mlflow_run_id"], "eval/loss")
    assert {m.step: m.value for m in eval_hist} == evals
    assert runs[0].data.params["wandb_project"] == "leviathan-test"
    assert runs[0].data.params["notify.webhook"] == "http://127.0.0.1/***"  # masked
    assert runs[0].info.status == "FINISHED"

    wb = wandb_runs(tmp_path / "wb")
    assert len(wb) == 2 and {run_id for run_id, _ in wb} == {ids["wandb_run_id"]}  # the same W&B run
    logged = {row["_step"]: row["train/loss"] for _, rows in wb for row in rows if "train/loss" in row}
    assert logged == want
    first_steps = {row["_step"] for row in wb[0][1] if "train/loss" in row}
    assert first_steps == {1, 2, 3, 4}

    everything = (run_dir / "events.jsonl").read_text() + (run_dir / "config.yaml").read_text()
    assert "SECRET-TOKEN" not in everything


@pytest.mark.slow
def test_a_failing_tracker_is_an_alert_not_a_stopped_run(tmp_path, tiny_model, monkeypatch):
    # Online W&B with no API key anywhere (a HOME of its own: no ~/.netrc): it cannot start.
    pytest.importorskip("wandb")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    result = train(tiny_model(), tmp_path, 2, wandb_project="leviathan-test")
    assert result.status == "completed"
    records = read_events(Path(result.run_dir) / "events.jsonl").records
    (alert,) = [r for r in records if r["kind"] == "alert" and r.get("rule") == "wandb_failed"]
    assert "wandb login" in alert["message"] and "wandb_mode: offline" in alert["advice"]
    assert records[-1]["kind"] == "end"


def test_a_missing_library_names_the_extra(tmp_path):
    from engine.train.sinks._worker import lacks_library

    log = RunLog(tmp_path / "events.jsonl")
    assert lacks_library(log, "mlflow", "use_mlflow", "no_such_module_here")
    assert not lacks_library(log, "mlflow", "use_mlflow", "json")
    (alert,) = read_events(tmp_path / "events.jsonl").records
    assert alert["rule"] == "mlflow_failed" and "pip install 'leviathan-cockpit[mlflow]'" in alert["advice"]
    assert "`use_mlflow` is set but `no_such_module_here` is not installed" in alert["message"]
