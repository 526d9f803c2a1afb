"""The post-training steps in the cockpit: from a key to the ship menu, from its choice to a job.

The jobs call the same engine functions as the CLI (``merge``, ``quantize``, ``export`` (gguf,
ollama, vllm), ``push``), and those write the lineage themselves: the folder's ``leviathan_export.json`` and
the run's ``exports.jsonl``, which the checklist reads. So a merge, an nf4 quantization or a
real upload ticks its item with nothing more done here; a push dry run records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cockpit.messages import ShipRequested
from cockpit.widgets.jobs_panel import JobsPanel
from cockpit.widgets.ship_menu import ShipChoice, ShipMenu
from engine.errors import UserError
from engine.run import lineage
from engine.run.rundir import RunDir

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
    from engine.ship import quantize
    from engine.ship.merge import check_checkpoint, check_output

    try:
        if choice.action == "merge":
            if choice.checkpoint is None:
                raise UserError("no complete checkpoint to merge yet", "wait for a save (s saves one now)")
            check_checkpoint(choice.checkpoint)
            if choice.merged_out is None:
                raise UserError("merge into: no folder given", "type a folder for the merged model")
            _must_be_new(choice.merged_out, "type another folder in 'merge into'")
            check_output(choice.merged_out, False, [choice.checkpoint])
            return None
        if choice.model_dir is None:
            raise UserError("model folder: no folder given", "type the merged folder")
        if not choice.model_dir.exists():
            raise UserError(
                f"{choice.model_dir}: no such folder yet", "merge a checkpoint first, or type a merged folder"
            )
        quantize.check_model_dir(choice.model_dir)
        if choice.action == "quantize":
            out = quantize.default_output(choice.model_dir)
            _must_be_new(out, f"remove it, or run `leviathan-cockpit quantize {choice.model_dir} -o OUT`")
        if choice.action == "gguf":
            from engine.ship import gguf

            quants = gguf.check_quants(gguf.menu_quants())  # the [gguf] extra, said before the job
            for path in gguf.planned_files(choice.model_dir, quants).values():
                _must_be_new(
                    path, f"remove it, or run `leviathan-cockpit export gguf {choice.model_dir} --force`"
                )
        if choice.action in ("push", "push_dry"):
            from engine.ship.publish import check_repo_id

            if not choice.repo_id:
                raise UserError("push needs the Hub repository", "type USER/NAME in 'repo id'")
            check_repo_id(choice.repo_id)
    except UserError as e:
        return str(e)
    return None


def _must_be_new(path: Path, fix: str) -> None:
    if path.exists():
        raise UserError(f"{path} already exists; the cockpit never replaces a folder", fix)


def start(app, panel: JobsPanel, choice: ShipChoice, run_dir: Path | None, *, training: bool = False):
    """Start the job for ``choice``; an upload not dry-run yet (same folder, same repo) dry-runs first."""
    if choice.action == "push" and not dry_run_done(panel, choice):
        choice = replace(choice, action="push_dry")
        app.notify("a dry run first: check what would be sent, then choose upload again", timeout=8)
    label, fn, args, kwargs, summary = JOBS[choice.action](choice, run_dir)
    note = SECOND_BASE if training and choice.action == "merge" else ""
    return panel.start(label, fn, args, kwargs, summary=summary, note=note, tag=_tag(choice))


def _tag(choice: ShipChoice) -> tuple:
    return (choice.action, str(choice.model_dir), choice.repo_id)


def dry_run_done(panel: JobsPanel, choice: ShipChoice) -> bool:
    want = _tag(replace(choice, action="push_dry"))
    return any(e.tag == want and e.job.state == "done" for e in panel.entries)


# -- one job per action: (label, engine function, args, kwargs, result -> one line) ----------

Job = tuple[str, Callable[..., Any], tuple, dict, Callable[[Any], str]]


def _merge(c: ShipChoice, run_dir: Path | None) -> Job:
    from engine.ship.merge import merge

    # merge takes an explicit run folder only where it has a log (find_run_dir checks).
    known = run_dir if run_dir is not None and RunDir(run_dir).is_run() else None

    def summary(r) -> str:
        diff = f", logits within {r.max_abs_diff:.1e}" if r.max_abs_diff is not None else ""
        return f"{r.output}: {r.shards} shard(s), {lineage.human_size(r.size_bytes)}, {r.dtype} on {r.device}{diff}"

    return f"merge {c.checkpoint.name}", merge, (c.checkpoint, c.merged_out), {"run_dir": known}, summary


def _quantize(c: ShipChoice, run_dir: Path | None) -> Job:
    from engine.ship.quantize import default_output, quantize

    def summary(r) -> str:
        return f"{r.qtype} model in {r.output} ({lineage.human_size(r.size_bytes)})"

    out = default_output(c.model_dir)
    return f"quantize {c.model_dir.name}", quantize, (c.model_dir, out), {"qtype": "nf4"}, summary


def _ollama(c: ShipChoice, run_dir: Path | None) -> Job:
    from engine.ship.serve import write_modelfile

    return (
        f"ollama {c.model_dir.name}",
        write_modelfile,
        (c.model_dir,),
        {},
        lambda m: f"wrote {m.path}; {m.create_command}",
    )


def _gguf(c: ShipChoice, run_dir: Path | None) -> Job:
    from engine.ship.gguf import export_gguf, menu_quants

    def summary(r) -> str:
        files = ", ".join(f"{f.path.name} {lineage.human_size(f.size_bytes)}" for f in r.files)
        create = f"; {r.modelfile.create_command}" if r.modelfile else ""
        return f"{files}, every tensor verified{create}"

    return f"gguf {c.model_dir.name}", export_gguf, (c.model_dir,), {"quants": menu_quants()}, summary


def _vllm(c: ShipChoice, run_dir: Path | None) -> Job:
    from engine.ship.serve import vllm_command

    return f"vllm {c.model_dir.name}", vllm_command, (c.model_dir,), {}, lambda s: s.command


def _push(c: ShipChoice, run_dir: Path | None, dry_run: bool) -> Job:
    from engine.ship.publish import push

    def summary(r) -> str:
        size = lineage.human_size(r.total_bytes)
        if r.dry_run:
            names = ", ".join(n for n, _ in r.files)
            return f"would upload {len(r.files)} files, {size}, to {r.repo_id}: {names}"
        return f"uploaded {len(r.files)} files, {size}: {r.url}"

    label = f"push {'dry run ' if dry_run else ''}{c.repo_id}"
    return label, push, (c.model_dir, c.repo_id), {"dry_run": dry_run}, summary


JOBS: dict[str, Callable[[ShipChoice, Path | None], Job]] = {
    "merge": _merge,
    "quantize": _quantize,
    "gguf": _gguf,
    "ollama": _ollama,
    "vllm": _vllm,
    "push_dry": lambda c, r: _push(c, r, True),
    "push": lambda c, r: _push(c, r, False),
}
