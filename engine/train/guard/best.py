"""Best checkpoint: an evaluation with a new best eval_loss at a step that is not a save step
saves a checkpoint there (``save_best``), so retention can keep the best weights."""

from __future__ import annotations

import math

from engine.run import checkpoints


class BestSave:
    def __init__(self, guard) -> None:
        self.g = guard
        self.best: float | None = None

    def reset(self) -> None:
        """The best eval_loss among the checkpoints already in output_dir (a resume keeps it)."""
        best = checkpoints.best(checkpoints.scan(self.g.output_dir)[0])
        self.best = best.meta.get("eval_loss") if best else None

    def on_evaluate(self, args, state, control, metrics):
        loss = (metrics or {}).get("eval_loss")
        if loss is None or not math.isfinite(float(loss)):
            return control
        if self.best is None or float(loss) < self.best:
            self.best = float(loss)
            if self.g.c.save_best and args.save_strategy == "steps" and not control.should_save:
                control.should_save = True
                if state.is_world_process_zero:
                    self.g.log.emit(
                        "note",
                        step=state.global_step,
                        message=f"new best eval_loss {float(loss):.4f} at step {state.global_step}, "
                        "not a save step: saving it so the best checkpoint is kept",
                    )
        return control
