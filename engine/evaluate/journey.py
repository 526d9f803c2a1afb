"""Where the guide's sequence stands: sample drawn, 10% run, gate, full run, merged, evaluated,
quantized, shipped. Each step's state comes from what exists on disk (the run folders and their
run logs, the gate's checks on the 10% run, ``exports.jsonl`` of the full run, its eval results),
with the key or the command that does the next one.

The journey is seen from one run: a run whose config has ``gate: {run: ...}`` is the full run and
its gate names the 10% run; any other run is taken as the 10% run, and the full run is the one a
config (``configs/*.yaml`` or ``*.yaml`` here) gates on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.errors import UserError
from engine.run import lineage
from engine.run.rundir import RunDir, eval_dir, run_config_raw

TAIL_BYTES = 65536
STEPS = ("sample", "ten", "gate", "full", "merged", "evaluated", "quantized", "shipped")


@dataclass
class Step:
    id: str
    title: str
    state: str  # done, running, failed, todo
    detail: str
    next: str  # the key or command that does it (or settles it); "" when done


@dataclass
class Journey:
    steps: list[Step]
    ten_dir: Path | None
    full_dir: Path | None
    full_config: Path | None

    def step(self, sid: str) -> Step:
        return next(s for s in self.steps if s.id == sid)

    @property
    def can_start_full(self) -> bool:
        """The gate has passed, a gated config is known and its run has not started."""
        return (
            self.step("gate").state == "done"
            and self.full_config is not None
            and self.step("full").state == "todo"
        )


def run_status(run_dir: Path | None) -> tuple[str, str]:
    """(state, detail) of a run folder from the tail of its run log: the last start or end record."""
    import json

    if run_dir is None or not RunDir(run_dir).events.is_file():
        return "todo", "no run log yet"
    path = RunDir(run_dir).events
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - TAIL_BYTES))
        lines = f.read().splitlines()
    step = None
    for line in reversed(lines):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        step = step if step is not None else r.get("step")
        if r.get("kind") == "end":
            status = r.get("status") or "ended"
            state = "done" if status == "completed" else "failed" if status == "failed" else "stopped"
            return state, f"{status} at step {r.get('step', step)}"
        if r.get("kind") == "start":
            break
    from engine.run.runlock import lock_holder

    at = f"at step {step}" if step is not None else "starting"
    if lock_holder(run_dir) is not None:
        return "running", f"{at}, training"
    return "stopped", f"{at}, no end record and no trainer holds the run (killed?)"


def _gated_config(ten_dir: Path, search: list[Path]) -> Path | None:
    for folder in search:
        for p in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                raw = yaml.safe_load(p.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            gate = raw.get("gate") if isinstance(raw, dict) else None
            if isinstance(gate, dict) and gate.get("run") and _same(Path(gate["run"]), ten_dir):
                return p
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def full_run_dir(config_path: Path) -> Path:
    """Where ``train CONFIG`` puts the run folder: the config's logs_dir (./logs) / run_name."""
    raw = yaml.safe_load(config_path.read_text()) or {}
    return Path(raw.get("logs_dir") or "logs") / (raw.get("run_name") or config_path.stem)


def journey(config: dict, run_dir: Path | None, search: list[Path] | None = None) -> Journey:
    gate = config.get("gate") if isinstance(config.get("gate"), dict) else None
    full_config = None
    if gate and gate.get("run"):
        ten_dir, full_dir, ten_config = Path(gate["run"]), run_dir, run_config_raw(gate["run"])
    else:
        ten_dir, full_dir, ten_config = run_dir, None, config
        if run_dir is not None:
            full_config = _gated_config(Path(run_dir), search or [Path("configs"), Path(".")])
            if full_config is not None:
                full_dir = full_run_dir(full_config)
                gate = (yaml.safe_load(full_config.read_text()) or {}).get("gate")
    steps = [_sample(ten_config, ten_dir)]
    state, detail = run_status(ten_dir)
    steps.append(
        Step("ten", "10% run", state, f"{ten_dir}: {detail}", "" if state == "done" else _train(ten_dir))
    )
    steps.append(_gate(gate, ten_dir, full_dir))
    state, detail = run_status(full_dir)
    start = "F (start it from here)" if full_config else "leviathan-cockpit train configs/leviathan_full.yaml"
    steps.append(
        Step(
            "full",
            "full run",
            state,
            f"{full_dir or '(no gated config found)'}: {detail}",
            "" if state == "done" else start if state == "todo" else _train(full_dir),
        )
    )
    steps += _after(full_dir)
    return Journey(
        steps, Path(ten_dir) if ten_dir else None, Path(full_dir) if full_dir else None, full_config
    )


def _train(run_dir) -> str:
    return (
        f"leviathan-cockpit train {RunDir(run_dir).config}" if run_dir else "leviathan-cockpit train CONFIG"
    )


def _sample(ten_config: dict, ten_dir) -> Step:
    paths = [d.get("path") for d in ten_config.get("datasets") or [] if isinstance(d, dict) and d.get("path")]
    missing = [p for p in paths if not Path(p).exists()]
    if ten_dir is not None and RunDir(ten_dir).events.is_file() or (paths and not missing):
        return Step("sample", "sample drawn", "done", ", ".join(paths) or "the 10% run's data", "")
    out = missing[0] if missing else "SAMPLE.jsonl"
    cmd = f"leviathan-cockpit sample CORPUS.jsonl -o {out} --fraction 0.1 --by _category --seed 42"
    return Step("sample", "sample drawn", "todo", f"missing: {', '.join(missing) or 'no dataset'}", cmd)


def _gate(gate: dict | None, ten_dir, full_dir) -> Step:
    from engine.config.evalconfig import GateConfig
    from engine.evaluate.gate import check_gate, describe, passed_before

    if full_dir is not None and (before := passed_before(Path(full_dir))):
        state = "done" if before.get("passed") else "overridden"
        return Step("gate", "gate", state, describe(before) or "", "")
    if ten_dir is None or not RunDir(ten_dir).events.is_file():
        return Step("gate", "gate", "todo", "waits for the 10% run", "")
    try:
        result = check_gate(GateConfig(**{**(gate or {}), "run": str(ten_dir)}))
    except (UserError, ValueError) as e:  # the 10% run's config.yaml or the gate's checks are wrong
        message, _, fix = str(e).partition(UserError.FIX)
        return Step("gate", "gate", "failed", " ".join(message.split()), fix.strip())
    if result.passed:
        return Step("gate", "gate", "done", f"all {len(result.checks)} checks pass", "")
    failing = ", ".join(f"{c.id} ({c.status})" for c in result.failing)
    first = result.failing[0]
    return Step(
        "gate",
        "gate",
        "failed",
        f"{len(result.failing)} of {len(result.checks)} fail: {failing}",
        f"3 (checklist); settle {first.id}: {first.settle}",
    )


def _after(full_dir) -> list[Step]:
    def done_by(kind: str) -> dict | None:
        found = lineage.step_outputs(full_dir, kind) if full_dir else []
        return found[0] if found else None

    merged = done_by("merge")
    merged_path = (merged or {}).get("output") or "MERGED"
    results = sorted(eval_dir(full_dir).glob("*.json")) if full_dir and eval_dir(full_dir).is_dir() else []
    quant = done_by("quantize") or done_by("export_gguf")
    shipped = done_by("push") or done_by("export_ollama")
    return [
        _done_or(
            "merged",
            "merged",
            merged,
            "output",
            "M on the dashboard (merge), or leviathan-cockpit merge CHECKPOINT",
        ),
        Step(
            "evaluated",
            "evaluated",
            "done" if results else "todo",
            ", ".join(p.stem for p in results) or "no eval results",
            "" if results else f"leviathan-cockpit eval {merged_path} --run-dir {full_dir or 'RUN'}",
        ),
        _done_or(
            "quantized",
            "quantized",
            quant,
            "output",
            f"M (quantize), or leviathan-cockpit quantize {merged_path}",
        ),
        _done_or("shipped", "shipped", shipped, "url", f"M (push), or leviathan-cockpit push {merged_path}"),
    ]


def _done_or(sid: str, title: str, record: dict | None, key: str, next_cmd: str) -> Step:
    if record:
        return Step(sid, title, "done", str(record.get(key) or record.get("name") or record.get("step")), "")
    return Step(sid, title, "todo", "not yet", next_cmd)
