"""Where a run starts: the checkpoint to resume from, and the checks that it fits this run.

``--resume auto`` takes the newest complete checkpoint whose files are as saved, ``never``
none, a path that one. Folders this engine left torn are set aside, foreign ones named and
left alone, damaged ones renamed ``.corrupt``. A checkpoint trained with another config (the
keys of ``FINGERPRINT_KEYS``), other data or another world size is refused with the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.config.config import DatasetSpec, RunConfig
from engine.data import datafp
from engine.errors import UserError
from engine.run import checkpoints, runstate
from engine.run.events import RunLog
from engine.train import dist

# Keys whose change makes an old checkpoint meaningless for this run.
FINGERPRINT_KEYS = (
    "base_model",
    "adapter",
    "lora_r",
    "lora_alpha",
    "lora_target_linear",
    "lora_target_modules",
    "load_in_4bit",
    "load_in_8bit",
    "sequence_len",
    "sample_packing",
    "seed",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "datasets",
    "val_set_size",
    "train_on_inputs",
    "curriculum",
)


def fingerprint(config: RunConfig) -> dict:
    d = config.model_dump(mode="json")
    return {k: d[k] for k in FINGERPRINT_KEYS}


def plan_resume(
    config: RunConfig,
    paths,
    log: RunLog,
    resume: str,
    notes: list[str],
    force_fresh: bool,
    allow_world_size_change: bool,
) -> checkpoints.Checkpoint | None:
    """The checkpoint this run resumes from (None: from the start), checked against the config
    and the data files' sizes; what the operator should know goes into ``notes``."""
    ckpt = dist.share_from_main(lambda: resume_point(resume, paths.output_dir, log))
    if ckpt is None and resume == "never" and checkpoints.scan(paths.output_dir)[0] and not force_fresh:
        raise UserError(
            f"{paths.output_dir} already holds checkpoints and --resume never was given",
            "choose a new output_dir, remove the old checkpoints, or pass --force to train over them",
        )
    if ckpt is None and resume == "never" and force_fresh and dist.is_main():
        # Old checkpoints would outrank the new run's (resume auto picks the highest step): set aside, not deleted.
        moved = checkpoints.supersede(paths.output_dir)
        if moved:
            notes.append(f"--force: the previous checkpoints were moved to {moved}")
    dist.barrier()
    if ckpt is not None:
        check_compatible(ckpt, config)
        datafp.check_sizes(ckpt.meta.get("data"), [d.path for d in config.datasets], str(ckpt.path))
        notes.append(dist.check_world_size(ckpt, config, allow_world_size_change))
        runstate.record_config_changes(paths.run_dir, config, log)
    return ckpt


def resume_point(resume: str, output_dir: Path, log: RunLog) -> checkpoints.Checkpoint | None:
    """The checkpoint ``resume`` names (auto, never or a path); torn and foreign folders reported."""
    found = checkpoints.classify(output_dir)
    for old, new in checkpoints.set_aside_torn(output_dir, found.torn):
        log.emit(
            "alert",
            rule="torn_checkpoint",
            level="warning",
            message=f"{old} was incomplete (killed while this engine saved or removed it): moved to "
            f"{new}, which is deleted at the next complete save",
            advice="nothing to do: the run resumes from the newest complete checkpoint",
        )
    for f in found.foreign:
        log.emit(
            "alert",
            rule="foreign_checkpoint",
            level="warning",
            message=f"{f}: {checkpoints.why_foreign(f)}; left where it is, not resumed from",
            advice="nothing to do; resume uses the newest checkpoint with a readable leviathan.json "
            "(move that folder out of output_dir when you no longer need it there)",
        )
    if resume == "never":
        return None
    if resume == "auto":
        return _newest_sound(found.complete, log)
    return _named(resume)


def _named(resume: str) -> checkpoints.Checkpoint:
    p = Path(resume)
    if checkpoints.kind_of(p) != "complete":
        raise UserError(
            f"{resume}: not a complete checkpoint folder",
            "use --resume auto, never, or a checkpoint-N folder",
        )
    step = int(p.name.rsplit("-", 1)[-1]) if "-" in p.name else 0
    ckpt = checkpoints.Checkpoint(p, step, json.loads((p / checkpoints.MARKER).read_text()))
    problems = checkpoints.verify(ckpt)
    if problems:
        raise UserError(
            f"{p}: its files are not as saved: " + "; ".join(problems),
            "resume from another checkpoint (--resume auto picks the newest sound one)",
        )
    return ckpt


def _newest_sound(complete: list[checkpoints.Checkpoint], log: RunLog) -> checkpoints.Checkpoint | None:
    """The newest checkpoint whose files are as saved (size and SHA-256 in its marker). A damaged
    one is renamed ``checkpoint-N.corrupt`` (kept, but no longer a checkpoint to resume from or to
    count in retention) and named in an alert."""
    for c in reversed(complete):
        problems = checkpoints.verify(c)
        if not problems:
            return c
        dest = checkpoints.set_aside(c.path, "corrupt")
        older = next((o for o in reversed(complete) if o.step < c.step), None)
        log.emit(
            "alert",
            rule="corrupt_checkpoint",
            level="critical",
            step=c.step,
            message=f"{c.path}: "
            + "; ".join(problems)
            + f". Renamed to {dest.name}; resuming from "
            + (f"checkpoint-{older.step} if it is sound" if older else "the start (no older checkpoint)"),
            advice="check that disk (a file changed after it was written); delete the .corrupt folder "
            "when you have looked at it",
        )
    return None


def check_compatible(ckpt: checkpoints.Checkpoint, config: RunConfig) -> None:
    old = ckpt.meta.get("fingerprint")
    if not old:
        return
    new = fingerprint(config)
    if isinstance(old.get("datasets"), list):  # dataset keys added since then read as their defaults
        old = {**old, "datasets": [_with_spec_defaults(d) for d in old["datasets"]]}
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    if diffs:
        raise UserError(
            f"{ckpt.path} was trained with a different config:\n  " + "\n  ".join(diffs),
            "restore those keys, use --resume never with a new output_dir, or --resume PATH of a matching run",
        )


def _with_spec_defaults(d):
    if not isinstance(d, dict):
        return d
    fields = DatasetSpec.model_fields
    return {**{k: f.default for k, f in fields.items() if not f.is_required()}, **d}
