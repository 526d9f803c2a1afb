"""The fault matrix: every file the engine writes and later reads, under every corruption.

One real tiny run is built once (``build``): the data prepared (rows, index, meta, fingerprint
memo), two steps trained and saved (run log, control file, checkpoint), the checklist ticked by
hand, a chat transcript, the checkpoint merged. Each cell damages one artifact one way
(``FAULTS``), runs what reads it back (``ARTIFACTS``: the engine's own readers, as the CLI calls
them), twice (the same command again), observes the outcome, and restores the tree.

An outcome is one of:

- ``same``: the reader's result equals the undamaged one, nothing said (the damage did not matter);
- ``note``: equal result and a note naming the damage (e.g. rebuilt from the data files);
- ``exit 2``: a clear refusal (``UserError``) naming the file; nothing trained on the damage;
- ``SILENT``: a different result and no word: a silent wrong result;
- ``TRACEBACK``: any other exception.

``python -m tests.faultmatrix`` prints the table (markdown); it runs against whatever ``engine``
is first on ``PYTHONPATH`` (that is how the "before" column of the closing note was made).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534
FAULTS = ("truncate", "bit flip", "zero block", "delete", "symlink", "other owner", "others write")


def damage(path: Path, fault: str, decoy: Path) -> None:
    """``fault`` done to ``path`` as a disk, a copy tool or another user would."""
    data = path.read_bytes() if path.is_file() else b""
    mid = len(data) // 2
    if fault == "truncate":
        path.write_bytes(data[:mid])
    elif fault == "bit flip" and data:
        b = bytearray(data)
        b[mid] ^= 0x10
        path.write_bytes(bytes(b))
    elif fault == "bit flip":
        path.write_bytes(b"\x10")  # an empty file: one stray byte
    elif fault == "zero block":
        b = bytearray(data)
        start = max(0, mid - 2048)
        b[start : start + 4096] = bytes(len(b[start : start + 4096]))
        path.write_bytes(bytes(b))
    elif fault == "delete":
        path.unlink()
    elif fault == "symlink":  # another file put in its place by a link (its bytes: the same)
        decoy.write_bytes(data)
        path.unlink()
        os.symlink(decoy, path)
    elif fault == "other owner":
        os.chown(path, NOBODY, NOBODY)
    elif fault == "others write":
        os.chmod(path, 0o666)
    else:
        raise ValueError(fault)


@dataclass
class Run:
    """The pristine tree and what reading it needs."""

    root: Path
    config: object
    cfg: Path
    tokenizer: object
    run_dir: Path
    out: Path
    prepared: Path
    merged: Path


def build(root: Path, model: Path) -> Run:
    """A real tiny run in ``root``: prepared, trained two steps, ticked, chatted, merged."""
    import yaml

    from engine.config.config import validate
    from engine.evaluate import checklist
    from engine.model.model import load_tokenizer
    from engine.run.chat_log import Transcript
    from engine.run.control_file import append_command
    from tests.conftest import DEMO_DATA, base_config, cli_here

    data = root / "data.jsonl"
    data.write_bytes(DEMO_DATA.read_bytes())
    raw = base_config(model, data, output_dir=str(root / "out"), logs_dir=str(root / "logs"))
    raw.update(
        run_name="m", max_steps=2, save_steps=2, val_set_size=0.1, dataset_prepared_path=str(root / "prep")
    )
    cfg = root / "m.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = root / "logs" / "m"
    append_command(run_dir, "save")  # the cockpit's command of the finished job
    checklist.tick(run_dir, "docs", note="README written")
    t = Transcript(run_dir, base=str(model))
    t._append(
        {"kind": "exchange", "id": "r1-0", "t": 1.0, "prompt": "hi", "answer": "hello", "checkpoint": "x"}
    )
    t.mark("r1-0", "pass")
    r = cli_here("merge", root / "out" / "checkpoint-2", "-o", root / "merged")
    assert r.returncode == 0, r.stderr[-3000:]
    config = validate(raw, cfg)[0]
    folder = next(p for p in (root / "prep").iterdir() if p.is_dir() and not p.name.startswith("."))
    return Run(root, config, cfg, load_tokenizer(str(model)), run_dir, root / "out", folder, root / "merged")


# -- the readers ---------------------------------------------------------------------------------


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name not in skip:
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:12]


def read_prepared(run: Run):
    from engine.data import prepare

    p = prepare.prepare(run.config, run.tokenizer, workers=1)
    rows = [tuple(r["input_ids"]) + tuple(r["mask"]) for r in p.train] if p.train is not None else []
    order = {k: tuple(int(x) for x in v) for k, v in p.index.items()} if getattr(p, "index", None) else {}
    result = hashlib.sha256(repr((rows, order)).encode()).hexdigest()[:12]
    return result, "; ".join(getattr(p, "notes", []))


def read_run_log(run: Run):
    from engine.evaluate import checklist
    from engine.run.events import RunLog

    log = RunLog(run.run_dir / "events.jsonl")  # what a resumed trainer does first
    log.emit("note", message="resumed")
    log.close()
    notes: list[str] = []
    items = checklist.evaluate(run.run_dir, save=False, notes=notes)
    return tuple((i.id, i.status, i.value) for i in items), "; ".join(notes)


def read_control(run: Run):
    from engine.run.control import Controls
    from engine.run.control_file import ControlFile, append_command

    reader = ControlFile(run.run_dir / "control.jsonl")  # the trainer's, at its start
    append_command(run.run_dir, "pause")  # the cockpit's
    return tuple(c["command"] for c in reader.poll(Controls())), ""


def read_checkpoint(run: Run):
    from engine.run.events import RunLog
    from engine.train.resume import resume_point

    log = RunLog(run.root / "resume-events.jsonl")
    try:
        ckpt = resume_point("auto", run.out, log)
    finally:
        log.close()
    said = [json.loads(x) for x in (run.root / "resume-events.jsonl").read_text().splitlines()]
    alerts = "; ".join(r.get("message", "") for r in said if r.get("kind") == "alert")
    return (ckpt.step if ckpt else None, _digest(ckpt.path) if ckpt else None), alerts


def read_checklist(run: Run):
    from engine.evaluate import checklist

    notes: list[str] = []  # what `checklist` prints
    items = checklist.evaluate(run.run_dir, notes=notes)
    return tuple((i.id, i.status, i.ticked, i.note) for i in items), "; ".join(notes)


def read_chat(run: Run):
    from engine.run.chat_log import chat_damage, read_exchanges

    said = "; ".join(chat_damage(run.run_dir))
    return tuple((r["id"], r.get("answer"), r.get("mark")) for r in read_exchanges(run.run_dir)), said


def read_merged(run: Run):
    import torch
    from transformers import AutoModelForCausalLM

    from engine.ship.quantize import check_model_dir

    check_model_dir(run.merged)
    model = AutoModelForCausalLM.from_pretrained(run.merged, dtype=torch.float32)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().numpy().tobytes())
    return h.hexdigest()[:12], ""


# artifact -> (path in the tree, reader)
ARTIFACTS = {
    "prepared rows (rows.arrow)": (lambda r: r.prepared / "rows.arrow", read_prepared),
    "prepared index (train_order.npy)": (lambda r: r.prepared / "train_order.npy", read_prepared),
    "prepared meta.json": (lambda r: r.prepared / "meta.json", read_prepared),
    "fingerprint memo": (lambda r: r.prepared.parent / "fingerprints.json", read_prepared),
    "run log (events.jsonl)": (lambda r: r.run_dir / "events.jsonl", read_run_log),
    "control file (control.jsonl)": (lambda r: r.run_dir / "control.jsonl", read_control),
    "checkpoint weights": (lambda r: r.out / "checkpoint-2" / "adapter_model.safetensors", read_checkpoint),
    "checkpoint marker (leviathan.json)": (
        lambda r: r.out / "checkpoint-2" / "leviathan.json",
        read_checkpoint,
    ),
    "checklist state (checklist.json)": (lambda r: r.run_dir / "checklist.json", read_checklist),
    "chat transcript": (lambda r: next((r.run_dir / "chat").glob("*.jsonl")), read_chat),
    "merged weights": (lambda r: r.merged / "model.safetensors", read_merged),
}
TREES = ("prep", "out", "logs", "merged")  # what a cell may change; restored after each


def observe(reader, run: Run, pristine) -> str:
    from engine.errors import UserError

    try:
        result, said = reader(run)
    except UserError as e:
        return "exit 2: " + str(e).splitlines()[0][:90]
    except Exception as e:  # noqa: BLE001 - what the user would see as a traceback
        return f"TRACEBACK: {type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}"
    if result == pristine:
        return f"note: {said[:90]}" if said else "same"
    return f"note (result differs): {said[:80]}" if said else "SILENT"


def cell(run: Run, backup: Path, artifact: str, fault: str, pristine: dict) -> tuple[str, str]:
    """(first outcome, the same command again) of one fault on one artifact; the tree restored."""
    where, reader = ARTIFACTS[artifact]
    try:
        path = where(run)
        before = _names(run, skip=path)
        damage(path, fault, run.root / "decoy")
        first = observe(reader, run, pristine[artifact])
        again = observe(reader, run, pristine[artifact])
        lost = before - _names(run)
        if lost:  # a file that existed (other than the damaged one) is gone, not even set aside
            first = f"LOST {', '.join(sorted(n for n, _ in lost))[:80]}; {first}"
    finally:
        restore(run, backup)
    return first, again


def _names(run: Run, skip: Path | None = None) -> set[tuple[str, int]]:
    """(name, n-th) of every file in the trees: a file renamed aside (checkpoint-2.corrupt/...)
    still counts, one deleted does not."""
    from collections import Counter

    names = Counter(
        p.name
        for t in TREES
        for p in (run.root / t).rglob("*")
        if (p.is_file() or p.is_symlink()) and p != skip
    )
    return {(n, i) for n, c in names.items() for i in range(c)}


def snapshot(run: Run, backup: Path) -> None:
    for name in TREES:
        shutil.copytree(run.root / name, backup / name, symlinks=True)


def restore(run: Run, backup: Path) -> None:
    for name in TREES:
        shutil.rmtree(run.root / name, ignore_errors=True)
        shutil.copytree(backup / name, run.root / name, symlinks=True)
    for extra in ("decoy", "resume-events.jsonl"):
        (run.root / extra).unlink(missing_ok=True)


def pristine_results(run: Run, backup: Path) -> dict:
    out = {}
    for artifact, (_, reader) in ARTIFACTS.items():
        out[artifact] = reader(run)[0]
        restore(run, backup)
    return out


def matrix(run: Run, backup: Path, artifacts=None) -> dict[tuple[str, str], tuple[str, str]]:
    pristine = pristine_results(run, backup)
    return {(a, f): cell(run, backup, a, f, pristine) for a in (artifacts or ARTIFACTS) for f in FAULTS}


def short(outcome: str) -> str:
    return outcome.split(":")[0] if outcome.startswith(("exit 2", "TRACEBACK", "note")) else outcome


def table(cells: dict) -> str:
    artifacts = list(dict.fromkeys(a for a, _ in cells))
    lines = ["| artifact | " + " | ".join(FAULTS) + " |", "|---" * (len(FAULTS) + 1) + "|"]
    for a in artifacts:
        row = []
        for f in FAULTS:
            first, again = cells[(a, f)]
            row.append(short(first) + ("" if short(again) == short(first) else f" → {short(again)}"))
        lines.append(f"| {a} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    import tempfile

    from engine.model.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model = build_tiny_model(root / "model", arch="qwen3")
        (root / "run").mkdir()
        run = build(root / "run", model)
        snapshot(run, root / "backup")
        cells = matrix(run, root / "backup")
        print(table(cells))
        print()
        for (a, f), (first, again) in cells.items():
            if first != "same":
                print(f"- {a} / {f}: {first}" + (f" | again: {again}" if again != first else ""))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
