"""Where an exported folder came from, and what happened to it after training.

Every folder ``merge`` or ``quantize`` writes carries ``leviathan_export.json``: the checkpoint,
the base model, the run folder and the step that produced it. ``push`` and ``export ollama``
follow it back to the run (its ``config.yaml``, run log and checklist). Each finished step is
also appended to ``logs/<run>/exports.jsonl`` (one JSON object a line) so the checklist can
tick "adapters merged", "quantized", "uploaded" from the run folder alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine.errors import UserError
from engine.run.rundir import CONFIG, EVENTS, RunDir

INFO = "leviathan_export.json"
STEPS_FILE = "exports.jsonl"


def read_info(folder: str | Path) -> dict:
    path = Path(folder) / INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_info(folder: str | Path, info: dict) -> None:
    write_text_atomic(Path(folder) / INFO, json.dumps(info, indent=1, default=str) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write through a temporary name and a rename: the file is whole or absent."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_tree(folder: str | Path) -> None:
    """Every file of a folder on disk before the folder is renamed into place."""
    folder = Path(folder)
    for f in [*folder.rglob("*"), folder]:
        if f.is_file() or f == folder:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def checkpoint_meta(checkpoint: str | Path) -> dict:
    from engine.run.checkpoints import MARKER

    try:
        return json.loads((Path(checkpoint) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def find_run_dir(checkpoint: str | Path | None, explicit: str | Path | None = None) -> Path | None:
    """The run folder (logs/<run>) that produced a checkpoint, or None when it cannot be found.

    Order: an explicit ``--run-dir``; the ``run_dir`` the trainer wrote into the checkpoint's
    marker; a ``logs/*/config.yaml`` near the checkpoint whose ``output_dir`` is its parent.
    """
    if explicit:
        p = Path(explicit)
        if p.is_file() and p.name == EVENTS:
            p = p.parent
        if not RunDir(p).is_run():
            raise UserError(
                f"--run-dir {explicit}: no {EVENTS} there", "give a run folder such as logs/<run-name>"
            )
        return p.resolve()
    if checkpoint is None:
        return None
    ckpt = Path(checkpoint).resolve()
    recorded = checkpoint_meta(ckpt).get("run_dir")
    if recorded and RunDir(recorded).is_run():
        return Path(recorded)
    return _search_run_dir(ckpt)


def _search_run_dir(ckpt: Path) -> Path | None:
    import yaml

    output_dir = ckpt.parent
    roots = [Path.cwd(), *list(ckpt.parents)[:5]]
    seen = set()
    for root in roots:
        logs = root / "logs"
        if logs in seen or not logs.is_dir():
            continue
        seen.add(logs)
        for cfg in sorted(logs.glob(f"*/{CONFIG}")):
            try:
                out = (yaml.safe_load(cfg.read_text()) or {}).get("output_dir")
            except (OSError, yaml.YAMLError):
                continue
            if not out:
                continue
            # A relative output_dir was relative to the directory training ran from.
            for start in (root, Path.cwd()):
                if (start / out).resolve() == output_dir:
                    return cfg.parent.resolve()
    return None


def run_config(run_dir: str | Path | None) -> dict:
    if not run_dir:
        return {}
    import yaml

    try:
        return yaml.safe_load(RunDir(run_dir).config.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def record_step(run_dir: str | Path | None, step: str, **fields) -> None:
    """Append one finished post-training step to the run folder (no run folder: nothing)."""
    if not run_dir or not Path(run_dir).is_dir():
        return
    record = {"t": round(time.time(), 3), "step": step, **fields}
    line = json.dumps(record, default=str) + "\n"
    with open(Path(run_dir) / STEPS_FILE, "a") as f:
        f.write(line)


def read_steps(run_dir: str | Path) -> list[dict]:
    out = []
    try:
        lines = (Path(run_dir) / STEPS_FILE).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def step_outputs(run_dir: str | Path | None, step: str) -> list[dict]:
    """The records of one kind of finished step (``merge``, ``quantize``, ``push``), newest first."""
    if not run_dir:
        return []
    return [r for r in reversed(read_steps(run_dir)) if r.get("step") == step]


def folder_files(folder: str | Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file under a folder, hidden files left out, sorted."""
    root = Path(folder)
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append((rel.as_posix(), f.stat().st_size))
    return out


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
