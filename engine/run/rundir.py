"""The run folder (``logs/<run>/``): what lives in it, named in one place, and how to find it.

``RunDir(path)`` names each file and folder of the layout; modules that need a run-folder path ask
it instead of spelling the name. A checkpoint names its run in its ``leviathan.json`` marker
(``run_dir``); older checkpoints and plain model folders are matched by the ``output_dir`` of the
runs' ``config.yaml``. Evaluation results are ``eval/<suite>-<model>.json``.

Standard library (and yaml) only: the trainer, the cockpit and the CLI all read run folders, and
none of them should pay for the config schema or torch to do it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

MARKER = "leviathan.json"  # engine.run.checkpoints.MARKER, kept here without its imports

EVENTS = "events.jsonl"  # the run log (engine.run.events)
CONFIG = "config.yaml"  # the resolved config, written at start
CONTROL = "control.jsonl"  # commands to the trainer (engine.run.control_file)
HEARTBEAT = "heartbeat"  # touched by the trainer when its log is quiet (engine.run.heartbeat)
LOCK = ".lock"  # one writer per run folder (engine.run.runlock); holds the writer's pid
CHECKLIST = "checklist.json"  # the checklist's state (engine.evaluate.checklist)
CHECKLIST_LOCK = ".checklist.lock"  # serialises its read-modify-write (cockpit and CLI)
CHAT = "chat"  # chat logs and the live chat bridge's replies
EVAL = "eval"  # evaluation results
LIVE = "live"  # under chat/: the live chat bridge's reply files (engine.chat.chat_bridge)
LAUNCH_LOG = "launch.log"  # the launched processes' stdout and stderr (engine.cli.launcher)
LAUNCH_CONFIG = "launch-config.json"  # the config the launcher checked, for its trainers (saved_config)
JOBS_LOG = "jobs.log"  # the cockpit's background jobs' output
COCKPIT_LOG = "cockpit-output.log"  # what the cockpit's own code printed while the screen was up
TRACKERS = "trackers.json"  # the W&B and MLflow run ids a resume continues (engine.train.sinks)
TENSORBOARD = "tensorboard"  # TensorBoard's event files (use_tensorboard)
OUTPUT_LOCK = ".leviathan-lock"  # not in the run folder: in its output_dir (engine.run.runlock)


@dataclass(frozen=True)
class RunDir:
    """One run folder's layout. Paths only: nothing is created or read here."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is welcome too

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def events(self) -> Path:
        return self.path / EVENTS

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def control(self) -> Path:
        return self.path / CONTROL

    @property
    def trackers(self) -> Path:
        return self.path / TRACKERS

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def heartbeat(self) -> Path:
        return self.path / HEARTBEAT

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    @property
    def checklist(self) -> Path:
        return self.path / CHECKLIST

    @property
    def checklist_lock(self) -> Path:
        return self.path / CHECKLIST_LOCK

    @property
    def chat(self) -> Path:
        return self.path / CHAT

    @property
    def chat_live(self) -> Path:
        return self.path / CHAT / LIVE

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def launch_log(self) -> Path:
        return self.path / LAUNCH_LOG

    @property
    def launch_config(self) -> Path:
        return self.path / LAUNCH_CONFIG

    @property
    def jobs_log(self) -> Path:
        return self.path / JOBS_LOG

    @property
    def cockpit_log(self) -> Path:
        return self.path / COCKPIT_LOG

    def is_run(self) -> bool:
        """A run folder is one with a run log."""
        return self.events.is_file()


def atomic_write_json(path: str | Path, data) -> None:
    """Write whole or not at all: a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_config_raw(run_dir: str | Path) -> dict:
    """The run's resolved config as plain data (``{}`` when the folder has none)."""
    import yaml

    path = RunDir(run_dir).config
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def output_dir_of(run_dir: str | Path, records: list[dict] | None = None) -> Path | None:
    """Where the run's checkpoints go: its start record, else its config.yaml."""
    for r in reversed(records or []):
        if r.get("kind") == "start" and r.get("output_dir"):
            return Path(r["output_dir"])
    out = run_config_raw(run_dir).get("output_dir")
    return Path(out) if out else None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def find_run_dir(model_path: str | Path, search: list[str | Path] | None = None) -> Path | None:
    """The run folder a checkpoint (or a model folder made from one) belongs to, or None."""
    model_path = Path(model_path)
    meta = read_json(model_path / MARKER) or {}
    if meta.get("run_dir") and Path(meta["run_dir"]).is_dir():
        return Path(meta["run_dir"])
    roots = [Path(p) for p in (search or [])] + [Path("logs"), model_path.parent.parent / "logs"]
    for root in roots:
        if not root.is_dir():
            continue
        for cfg in sorted(root.glob(f"*/{CONFIG}")):
            out = run_config_raw(cfg.parent).get("output_dir")
            if out and (_same(Path(out), model_path.parent) or _same(Path(out), model_path)):
                return cfg.parent
    return None


def eval_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).eval


def result_name(suite: str, model_path: str | Path) -> str:
    """``<suite>-<model folder>.json``: one file per suite and model, rewritten on a re-run."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(model_path).rstrip("/")).name) or "model"
    return f"{suite}-{label}.json"


def read_eval_results(run_dir: str | Path) -> list[dict]:
    """Every readable result in ``eval/``, oldest first (by the time it finished or started)."""
    out = []
    folder = eval_dir(run_dir)
    if not folder.is_dir():
        return out
    for f in folder.glob("*.json"):
        data = read_json(f)
        if data and isinstance(data.get("suite"), str):
            data["_file"] = str(f)
            out.append(data)
    out.sort(key=lambda d: d.get("finished") or d.get("started") or 0)
    return out
