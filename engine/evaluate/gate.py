"""The gate between the 10% run and the full run: "ONLY proceed after 10% test passes all validations!"

A config with ``gate: {run: logs/<10% run>}`` starts only when that run's checklist passes the
gate's checks (the guide's critical checks by default). A refused start lists every failing check
with its evidence and the command that would settle it; ``--override-gate "reason"`` proceeds,
and the reason goes to this run's log (a ``gate`` record), its checklist (``checklist.json``'s
``gate``) and so its model card. A run already past its gate (its checklist says so) resumes
without being checked again: the 10% run's folder may have moved on since.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.evaluate import checklist
from engine.evaluate.checklist_items import ItemStatus
from engine.run.rundir import RunDir

OVERRIDE_ENV = "LEVIATHAN_OVERRIDE_GATE"  # set by `train --override-gate`; children inherit it


@dataclass
class GateCheck:
    id: str
    title: str
    status: str
    evidence: str
    settle: str


@dataclass
class GateResult:
    run: str
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def failing(self) -> list[GateCheck]:
        return [c for c in self.checks if c.status != "pass"]

    @property
    def passed(self) -> bool:
        return not self.failing


def _newest_checkpoint(run: Path) -> str:
    from engine.run import checkpoints
    from engine.run.rundir import output_dir_of

    out = output_dir_of(run, [])
    last = checkpoints.latest(out) if out else None
    return str(last.path) if last else "CHECKPOINT"


def settle_command(item: ItemStatus, rule: str | None, params: dict, run: Path) -> str:
    """The command that would measure (or tick) this item on the gating run."""
    tick = f"leviathan-cockpit checklist {run} --tick {item.id} --note 'why'"
    if rule is None:
        return tick
    if rule == "eval_score":
        suite = params.get("suite", "inference")
        return (
            f"leviathan-cockpit eval {_newest_checkpoint(run)} --suite {suite} --run-dir {run}  (or: {tick})"
        )
    if rule == "lmeval":
        task = params.get("task", "TASK")
        return (
            f"leviathan-cockpit eval MERGED_MODEL --suite lmeval --tasks {task} --run-dir {run}  (or: {tick})"
        )
    # loss, OOM, checkpoint rules: the 10% run itself has to train (on) to produce the evidence
    return f"leviathan-cockpit train {RunDir(run).config} --headless  (or: {tick})"


def check_gate(gate) -> GateResult:
    """Measure the gating run's checklist now and keep the gate's checks."""
    run = Path(gate.run)
    result = GateResult(str(run))
    if not RunDir(run).events.is_file():
        why = f"{run} has no run log: the gating run has not been trained"
        fix = f"train the 10% run first (its run folder must be {run})"
        result.checks = [GateCheck(c, c, "missing", why, fix) for c in gate.checks]
        return result
    config = checklist.saved_config(run)
    items = checklist.evaluate(run, config, save=False)
    by_id = {i.id: i for i in items}
    unknown = [c for c in gate.checks if c not in by_id]
    if unknown:
        raise UserError(
            f"gate.checks: {', '.join(unknown)} not in the checklist of {run}",
            f"checks are item ids of that run's checklist: {', '.join(by_id)}",
        )
    from engine.evaluate.checklist_items import build_items

    rules = {i.id: (i.rule, i.params) for i in build_items(config)}
    for cid in gate.checks:
        item = by_id[cid]
        evidence = "; ".join(x for x in (item.value, item.detail) if x) or item.status
        if item.ticked:
            evidence = f"ticked by hand{': ' + item.note if item.note else ''}"
        rule, params = rules[cid]
        result.checks.append(
            GateCheck(cid, item.title, item.status, evidence, settle_command(item, rule, params, run))
        )
    return result


def refusal(result: GateResult) -> UserError:
    lines = [f"the gate is closed: {len(result.failing)} of {len(result.checks)} checks of {result.run} fail"]
    for c in result.failing:
        lines += [f"  - {c.id} ({c.title}): {c.status}, {c.evidence}", f"      settle: {c.settle}"]
    return UserError(
        "\n".join(lines),
        'settle each check and start again, or proceed anyway with --override-gate "reason"',
    )


def passed_before(run_dir: Path) -> dict | None:
    """The gate outcome this run already recorded (so a resume is not gated again), or None."""
    entry = checklist.load_state(run_dir).get("gate") if Path(run_dir).is_dir() else None
    return entry if isinstance(entry, dict) and (entry.get("passed") or entry.get("override")) else None


def enforce(config, run_dir: Path, *, fresh: bool, override: str | None = None) -> dict | None:
    """The gate's outcome for this start (a dict for the run log and checklist), or UserError.

    None when the config has no gate, or when the run recorded its gate before (a resume).
    """
    gate = getattr(config, "gate", None)
    if gate is None:
        return None
    if not fresh and passed_before(run_dir):
        return None
    override = override if override is not None else os.environ.get(OVERRIDE_ENV)
    result = check_gate(gate)
    outcome = {
        "run": result.run,
        "passed": result.passed,
        "checks": [c.id for c in result.checks],
        "failing": [asdict(c) for c in result.failing],
    }
    if result.passed:
        return outcome
    if not (override or "").strip():
        raise refusal(result)
    return {**outcome, "override": override.strip()}


def record(run_dir: Path, outcome: dict) -> None:
    """Keep the outcome in the run's checklist state (the checklist and the model card show it)."""

    def change(state):
        state["gate"] = {**outcome, "at": time.time()}

    checklist.update_state(Path(run_dir), change)


def describe(entry: dict | None) -> str | None:
    """One line for the checklist and the model card."""
    if not entry:
        return None
    if entry.get("override"):
        failing = ", ".join(f["id"] for f in entry.get("failing", []))
        return f"gate on {entry.get('run')} OVERRIDDEN ({failing} failing): {entry['override']}"
    return f"gate on {entry.get('run')} passed ({', '.join(entry.get('checks', []))})"
