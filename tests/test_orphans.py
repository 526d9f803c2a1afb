"""kill -9 of ``train`` or ``preprocess`` during data preparation: no worker outlives it, and the
run's locks are free for the next start (real processes, a real SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.run.runlock import OutputLock, RunLock
from tests.conftest import DEMO_DATA, ROOT, base_config
from tests.wait import wait_for


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waits for its reaper, holds nothing


def _config(tmp_path: Path, model) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text(DEMO_DATA.read_text() * 200)  # ~15 MB: over PARALLEL_MIN, a while to prepare
    raw = base_config(model, data, output_dir=str(tmp_path / "out"), logs_dir=str(tmp_path / "logs"))
    raw.update(run_name="orphans", dataset_processes=2, max_steps=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train", "--headless"], ["preprocess"]])
def test_kill_9_during_preparation_leaves_no_orphans_and_no_lock(tmp_path, tiny_model, command):
    cfg = _config(tmp_path, tiny_model("qwen3"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cockpit.cli", command[0], str(cfg), *command[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        workers = wait_for(
            lambda: len(_children(proc.pid)) >= 2 and _children(proc.pid),
            180,
            "the preparation's worker processes",
            running=proc,
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    for w in workers:
        wait_for(lambda w=w: not _alive(w), 10, f"worker {w} to die with its parent")
    run_dir, out = tmp_path / "logs" / "orphans", tmp_path / "out"
    with RunLock(run_dir), OutputLock(out, run_dir):  # taken at once: nobody holds them
        pass


_FORKS = """
import os, signal, sys, time
from engine.run.runlock import RunLock
with RunLock(sys.argv[1]):
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1), os.dup2(null, 2)  # the test's pipes: closed, so it reads to the end
        time.sleep(120)  # a forked helper that does not die with its parent
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_lock_is_held_by_its_owner_not_by_forked_children(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", _FORKS, str(tmp_path / "run")], env=env, capture_output=True, text=True
    )
    child = int(r.stdout.split()[0])
    try:
        assert _alive(child)
        with RunLock(tmp_path / "run"):  # the owner is dead: its lock is free though its child lives
            pass
    finally:
        os.kill(child, signal.SIGKILL)
