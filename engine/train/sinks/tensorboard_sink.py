"""TensorBoard (``use_tensorboard: true``): event files in ``<run folder>/tensorboard``.

The same folder on every start of the run; a resume purges the events past its checkpoint's
step (TensorBoard's ``purge_step``), so the retrained steps replace the old ones on the chart.
Written with ``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard`` package.
"""

from __future__ import annotations

import yaml

from engine.run.rundir import RunDir
from engine.train.sinks import register
from engine.train.sinks._metrics import scalars, step_of, text
from engine.train.sinks._worker import TrackerSink, lacks_library, resuming


class TensorBoardSink(TrackerSink):
    name = "tensorboard"

    def open(self, start: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = start["step"] + 1 if resuming(start) else None  # the checkpoint's own step stays
        self.writer = SummaryWriter(log_dir=str(RunDir(self.run_dir).tensorboard), purge_step=purge)
        config = yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False)  # secrets masked
        self.writer.add_text("config", f"```\n{config}\n```", global_step=start.get("step") or 0)

    def handle(self, record: dict) -> None:
        step = step_of(record)
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=step)
        said = text(record)
        if said:
            self.writer.add_text(said[0], said[1], global_step=step)
        if record.get("kind") in ("eval", "save", "end"):
            self.writer.flush()

    def finish(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()


@register("tensorboard")
def open_tensorboard(config, run_dir, log):
    if not config.use_tensorboard:
        return None
    if lacks_library(log, "tensorboard", "use_tensorboard", "tensorboard"):
        return None
    return TensorBoardSink(config, run_dir, log)
