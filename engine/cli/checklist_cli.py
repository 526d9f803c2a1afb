"""``leviathan-cockpit checklist RUN_DIR``: the checklist measured now, printed, ticked by hand."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

from engine.evaluate.checklist import evaluate, failing, load_state, run_folder, saved_config, tick
from engine.evaluate.checklist_items import GROUPS, ItemStatus
from engine.evaluate.gate import describe

GLYPH = {"pass": "[x]", "fail": "[!]", "pending": "[ ]"}


def _ago(t: float | None) -> str:
    if not t:
        return ""
    s = max(0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def format_items(items: list[ItemStatus]) -> str:
    lines = []
    for group in dict.fromkeys(i.group for i in items):
        lines.append(f"{GROUPS.get(group, group)}:")
        for i in (i for i in items if i.group == group):
            tail = i.value
            if i.ticked:
                tail = (
                    "ticked by hand"
                    + (f": {i.note}" if i.note else "")
                    + (f" (measured: {i.measured})" if i.measured else "")
                )
            elif i.status != "pass" and i.detail and not i.value:
                tail = i.detail
            opt = "" if i.required else " (optional)"
            when = _ago(i.ticked_at if i.ticked else i.when)
            lines.append(
                f"  {GLYPH[i.status]} {i.title}{opt}"
                + (f"  -- {tail}" if tail else "")
                + (f"  [{when}]" if when else "")
            )
    done = sum(i.ok for i in items)
    bad = failing(items)
    lines.append(f"{done}/{len(items)} passed; {len(bad)} required item(s) not passed")
    return "\n".join(lines)


def add_checklist_args(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (logs/<run-name>)")
    p.add_argument(
        "--group", choices=sorted(GROUPS), help="only this group (validation: the 10%% run's gate)"
    )
    p.add_argument("--tick", metavar="ID", help="tick an item by hand")
    p.add_argument("--untick", metavar="ID", help="take a tick back")
    p.add_argument("--note", metavar="TEXT", help="a note for --tick")
    p.add_argument("--json", action="store_true", help="print the items as JSON")


def checklist_main(args) -> int:
    run_dir = run_folder(args.run_dir)
    config = saved_config(run_dir)
    if args.tick:
        tick(run_dir, args.tick, args.note, True, config)
    if args.untick:
        tick(run_dir, args.untick, None, False, config)
    notes: list[str] = []  # damage found and what was restored (engine.run.seal, checklist_state)
    items = evaluate(run_dir, config, notes=notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.group:
        items = [i for i in items if i.group == args.group]
    if args.json:
        import json

        print(json.dumps([asdict(i) for i in items], indent=1))
    else:
        gate = describe(load_state(run_dir).get("gate"))
        print((f"{gate}\n" if gate else "") + format_items(items))
    if failing(items):
        print(f"{len(failing(items))} required item(s) not passed", file=sys.stderr)
        return 1
    return 0
