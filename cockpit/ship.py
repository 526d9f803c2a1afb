"""The post-training steps in the cockpit: from a key to the ship menu, from its choice to a job.

The menu's lines, their checks and their jobs are the steps' registry (``engine.cli.steps``,
one module a step), which the CLI reads too. The jobs call the same engine functions as the
CLI (``merge``, ``quantize``, ``export``, ``push``), and those write the lineage themselves: the folder's ``leviathan_export.json`` and
the run's ``exports.jsonl``, which the checklist reads. So a merge, an nf4 quantization or a
real upload ticks its item with nothing more done here; a push dry run records nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cockpit.messages import ShipRequested
from cockpit.widgets.jobs_panel import JobsPanel
from cockpit.widgets.ship_menu import ShipMenu
from engine.cli import steps
from engine.cli.steps import ShipChoice
from engine.errors import UserError
from engine.run import lineage

SECOND_BASE = "loads a second copy of the base model beside training"


def open_menu(app, request: ShipRequested) -> None:
    """Push the ship menu for ``request``; its choice starts a job in the app's JobsPanel."""
    source = app.source
    run_dir = Path(source.run_dir) if source.run_dir else None
    defaults = menu_defaults(request, run_dir, source.config.get("output_dir"))
    training = bool(app.training_alive)
    warning = (
        f"Training is running: a merge {SECOND_BASE} (memory; slower steps meanwhile)." if training else ""
    )
    panel = app.query_one(JobsPanel)

    def chosen(choice: ShipChoice | None) -> None:
        if choice is not None:
            start(app, panel, choice, run_dir, training=training)

    app.push_screen(ShipMenu(defaults, check, warning=warning), chosen)


def menu_defaults(request: ShipRequested, run_dir: Path | None, output_dir: str | None) -> ShipChoice:
    from engine.run import rundir
    from engine.ship import merge

    if not output_dir and run_dir is not None:
        output_dir = rundir.output_dir_of(run_dir)
    ckpt = Path(request.checkpoint) if request.checkpoint else pick_checkpoint(output_dir)
    merged_out = merge.default_output(ckpt) if ckpt else None
    made = [Path(r["output"]) for r in lineage.step_outputs(run_dir, "merge") if r.get("output")]
    made = [p for p in made if p.is_dir()]
    # Nothing merged yet: the folder a merge would write (quantize/push then say "merge first").
    return ShipChoice(request.action, ckpt, merged_out, made[0] if made else merged_out)


def pick_checkpoint(output_dir: str | Path | None) -> Path | None:
    """The run's best complete checkpoint (lowest eval loss at its own step), else its newest."""
    from engine.run import checkpoints

    if not output_dir:
        return None
    complete, _ = checkpoints.scan(output_dir)
    found = checkpoints.best(complete) or (complete[-1] if complete else None)
    return found.path if found else None


def check(choice: ShipChoice) -> str | None:
    """What stops ``choice`` from running, said as the CLI says it, or None."""
    try:
        steps.action(choice.action).check(choice)
    except UserError as e:
        return str(e)
    return None


def start(app, panel: JobsPanel, choice: ShipChoice, run_dir: Path | None, *, training: bool = False):
    """Start the job for ``choice``; an upload not dry-run yet (same folder, same repo) dry-runs first."""
    if choice.action == "push" and not dry_run_done(panel, choice):
        choice = replace(choice, action="push_dry")
        app.notify("a dry run first: check what would be sent, then choose upload again", timeout=8)
    label, fn, args, kwargs, summary = steps.action(choice.action).job(choice, run_dir)
    note = SECOND_BASE if training and choice.action == "merge" else ""
    return panel.start(label, fn, args, kwargs, summary=summary, note=note, tag=_tag(choice))


def _tag(choice: ShipChoice) -> tuple:
    return (choice.action, str(choice.model_dir), choice.repo_id)


def dry_run_done(panel: JobsPanel, choice: ShipChoice) -> bool:
    want = _tag(replace(choice, action="push_dry"))
    return any(e.tag == want and e.job.state == "done" for e in panel.entries)
