"""Faults a long run meets, handled where they happen: one module a fault.

- ``nan``: a NaN/Inf optimizer step is skipped; a streak of them rolls back to the newest
  checkpoint before it with a lower learning rate, or stops the run (``diverged``).
- ``oom``: a micro-batch out of device memory runs its step again at half the micro batch and
  twice the accumulation (the same effective batch), kept in the run state for a resume.
- ``disk``: free space is checked before each save; a checkpoint or run log that does not fit
  pauses the run until there is room (headless: exit 2), older checkpoints untouched.
- ``best``: a new best eval_loss off a save step saves a checkpoint there.
- ``core``: the ``Guard`` the trainer's hooks call (engine/train/trainer.py), its callback, the
  run state (``leviathan-state.json``) and the retry of ``trainer.train`` after a rollback.

Everything the guard does is written to the run log. May import run, faults, errors and
engine.train.dist.
"""

from engine.train.guard.core import Guard

__all__ = ["Guard"]
