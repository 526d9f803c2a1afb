"""The fault matrix's interruptions: kill -9 and SIGTERM inside each phase of the real commands.

Each cell runs one command (``train --headless``, ``merge``, ``export gguf``) on the fault
matrix's tiny run (tests/faultmatrix.py ``build``: prepared, two steps trained and saved,
merged) in a process of its own, with ``LEVIATHAN_FAULT=kill@PHASE:N`` or ``term@PHASE:N``
(engine/faults.py), so the signal lands inside the phase, then runs the same command again and
checks the three promises:

- nothing that existed is lost: every file of the tree is still there, checkpoint-2 and the
  merged folder byte for byte, the run log's records a prefix of the new log;
- no silent wrong result: no process of the killed one's group left (an orphan worker), no
  partial folder or file left behind after the second run, the second run resumes from a
  complete checkpoint (the engine verifies them) and ends ``completed`` at the last step;
- a clear message and the same command continues: no traceback from either run, and the second
  run exits 0 (no stale lock refuses it).

The processes are forked from the test's own (torch already imported) instead of a new Python
for each: a real process, really signalled, without 5-15 s of imports per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import yaml

from tests import faultmatrix as fm

SIGNALS = {"kill -9": "kill", "SIGTERM": "term"}
LAST = 4  # the train commands go from the tree's checkpoint-2 to step 4 (save and eval at 2, 4)
PHASES = {  # phase -> (engine/faults.py place:N, command); train resumes at step 3
    "preparation": ("prep:1", "train"),
    "model load": ("load:1", "train"),
    "step": ("step:3", "train"),
    "save": ("save:4", "train"),
    "eval": ("eval:4", "train"),
    "merge": ("merge:1", "merge"),
    "export (gguf + Modelfile)": ("export:1", "export"),
}


def args_for(run: fm.Run, command: str) -> list[str]:
    if command == "train":
        cfg = run.root / "m4.yaml"
        if not cfg.exists():  # the tree's config, two more steps, an eval at each save, 2 workers
            raw = yaml.safe_load(run.cfg.read_text())
            raw.update(max_steps=LAST, eval_steps=2, dataset_processes=2)
            cfg.write_text(yaml.safe_dump(raw))
        return ["train", str(cfg), "--headless"]
    if command == "merge":  # over the earlier merge: --force replaces a folder merge wrote
        return ["merge", str(run.out / "checkpoint-2"), "-o", str(run.merged), "--force"]
    return ["export", "gguf", str(run.merged), "-o", str(run.root / "gguf"), "--name", "m"]


def forked(args: list[str], fault: str, log: Path) -> tuple[int, str, bool]:
    """(exit code, output, whether any process of its group outlived it) of ``leviathan-cockpit
    ARGS`` in a forked process of its own group, ``LEVIATHAN_FAULT=fault``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setpgid(0, 0)
            out = open(log, "w", buffering=1)  # noqa: SIM115 - ends with the process
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            for sig in (signal.SIGTERM, signal.SIGHUP):  # as a new process has them
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.environ["LEVIATHAN_FAULT"] = fault
            from cockpit.cli import main
            from engine import faults
            from engine.data import prepare

            faults.reset()
            prepare.PARALLEL_MIN = 0  # the tiny data prepared by worker processes: none may outlive it
            code = main(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:  # noqa: BLE001 - what a user would see
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code or 0)
    _, status = os.waitpid(pid, 0)
    end = time.monotonic() + 5
    while (left := _group(pid)) and time.monotonic() < end:
        time.sleep(0.05)
    for p in left:
        os.kill(p, signal.SIGKILL)  # not left to the next cell
    return os.waitstatus_to_exitcode(status), log.read_text(errors="replace"), bool(left)


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid``: a parent-death signal takes a moment."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(stat.parent.name))
    return out


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()[:12]


def _records(run: fm.Run) -> list[dict]:
    path = run.run_dir / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _leftovers(run: fm.Run) -> list[str]:
    """Hidden partial/temp files or folders (a killed writer's) anywhere in the tree."""
    return sorted(
        str(p.relative_to(run.root))
        for p in run.root.rglob(".*")
        if any(m in p.name for m in (".partial-", ".old-", ".tmp", "-tmp", ".f16-"))
    )


def _said(rc: int, out: str, run: fm.Run, command: str, since: int) -> str:
    if rc < 0:
        return f"killed by {signal.Signals(-rc).name}"
    end = next((r for r in reversed(_records(run)[since:]) if r.get("kind") == "end"), None)
    if command == "train" and end is not None:
        saved = f", {Path(end['checkpoint']).name} saved" if end.get("checkpoint") else ""
        return f"exit {rc}: end {end.get('status')} at step {end.get('step')}{saved}"
    last = [x for x in out.splitlines() if x.strip()]
    return f"exit {rc}: {last[-1][:70] if last else ''}"


def cell(run: fm.Run, backup: Path, phase: str, signal_name: str) -> dict:
    """One interruption: its outcome, the second run's, and the promises it broke; tree restored."""
    place, command = PHASES[phase]
    args = args_for(run, command)
    try:
        if phase == "preparation":  # prepared again from the data files, so the kill lands there
            shutil.rmtree(run.prepared.parent)
        names, log_before = fm._names(run), (run.run_dir / "events.jsonl").read_bytes()
        kept = {p: _tree_digest(p) for p in (run.out / "checkpoint-2", run.merged)}
        n, checkpoints = len(_records(run)), {p.name for p in run.out.iterdir()}
        rc, out, orphan = forked(args, f"{SIGNALS[signal_name]}@{place}", run.root / "first.log")
        broken = []
        if orphan:
            broken.append("ORPHAN: a process of its group outlived it")
        lost = {n for n, _ in names - fm._names(run)} | {
            p.name for p, d in kept.items() if not p.exists() or _tree_digest(p) != d
        }
        if not (run.run_dir / "events.jsonl").read_bytes().startswith(log_before):
            lost.add("events.jsonl records")
        if lost:
            broken.append("LOST " + ", ".join(sorted(lost)))
        first = _said(rc, out, run, command, n)
        partial = [re.sub(r"(-\d+)+(\.gguf)?$", "", Path(p).name) for p in _leftovers(run)]
        if rc < 0:  # what the killed writer left (the next run must not take it for whole)
            partial += sorted({p.name for p in run.out.iterdir()} - checkpoints)
        if partial:
            first += f", left {', '.join(partial)}"
        n2 = len(_records(run))
        rc2, out2, orphan2 = forked(args, "", run.root / "again.log")
        again = _said(rc2, out2, run, command, n2)
        for name, text in (("first", out), ("again", out2)):
            if "Traceback" in text:
                broken.append(f"TRACEBACK ({name}): " + text.strip().splitlines()[-1][:80])
        if rc2 != 0:
            broken.append(f"REFUSED again: {again}")
        if orphan2:
            broken.append("ORPHAN (again)")
        if _leftovers(run):
            broken.append("LEFTOVER " + ", ".join(_leftovers(run))[:80])
        if command == "train":
            again = _resumed(run, n2, again, broken)
        elif rc2 == 0:
            again = _shipped(run, command, broken)
    finally:
        fm.restore(run, backup)
        for extra in ("gguf", "first.log", "again.log"):
            shutil.rmtree(run.root / extra, ignore_errors=True)
            (run.root / extra).unlink(missing_ok=True)
    return {"first": first, "again": again, "broken": broken}


def _resumed(run: fm.Run, since: int, again: str, broken: list[str]) -> str:
    """The second train run: where it resumed from, and whether it completed at the last step."""
    new = _records(run)[since:]
    res = next((r for r in new if r.get("kind") == "resume" and r.get("reason") is None), None)
    end = next((r for r in reversed(new) if r.get("kind") == "end"), {})
    if end.get("status") != "completed" or end.get("step") != LAST:
        broken.append(f"NOT COMPLETED again: {again}")
    if res is None:
        broken.append("STARTED OVER: the second run did not resume")
        return again
    return f"resumed from {res.get('from_step')}, {end.get('status')} at {end.get('step')}"


def _shipped(run: fm.Run, command: str, broken: list[str]) -> str:
    """The second merge or export: its output checked whole (merge's recorded sha256s)."""
    from engine.errors import UserError
    from engine.ship.quantize import check_model_dir

    if command == "export":
        files = sorted(p.name for p in (run.root / "gguf").iterdir())
        return "exit 0: wrote " + ", ".join(files) + " (each tensor checked)"
    try:
        check_model_dir(run.merged)
    except UserError as e:
        broken.append(f"HALF MERGED again: {e}")
    return "exit 0: merged again, files as recorded"


def table(cells: dict) -> str:
    lines = ["| phase | " + " | ".join(SIGNALS) + " |", "|---" * (len(SIGNALS) + 1) + "|"]
    for phase in PHASES:
        row = []
        for s in SIGNALS:
            c = cells.get((phase, s))
            row.append("" if c is None else f"{c['first']} → {c['again']}" + _broken(c))
        lines.append(f"| {phase} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _broken(c: dict) -> str:
    return f" **BROKEN: {'; '.join(c['broken'])}**" if c["broken"] else ""


def main() -> None:
    """``python -m tests.interruptmatrix``: the table, against whichever ``engine`` is on PYTHONPATH."""
    import tempfile

    import tests.conftest  # noqa: F401 - the test environment (offline, one thread)
    from engine.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "run").mkdir()
        run = fm.build(root / "run", build_tiny_model(root / "model", arch="qwen3"))
        fm.snapshot(run, root / "backup")
        cells = {(p, s): cell(run, root / "backup", p, s) for p in PHASES for s in SIGNALS}
        print(table(cells))


if __name__ == "__main__":
    main()
