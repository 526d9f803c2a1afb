"""Weights & Biases (``wandb_project`` set, or ``use_wandb``; Axolotl's ``wandb_*`` keys).

``wandb_mode: offline`` writes under WANDB_DIR (default: the run folder) with no network, for
``wandb sync`` later. The W&B run id (``wandb_run_id``, or one made at the first start) is kept
in the run folder (``trackers.json``): a resume continues the same W&B run. The API key is
W&B's own business (``wandb login``, WANDB_API_KEY): never in the config or the run log. Online
without a key, the tracker fails at once with an alert instead of prompting for one.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.train.sinks import register
from engine.train.sinks._metrics import scalars, step_of, text
from engine.train.sinks._worker import TrackerSink, lacks_library, resuming

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "leviathan.json")


class WandbSink(TrackerSink):
    name = "wandb"
    advice = "check `wandb login` / WANDB_API_KEY and the network, or set `wandb_mode: offline`"

    def open(self, start: dict) -> None:
        import wandb
        from wandb.sdk.lib.runid import generate_id

        c = self.config
        mode = c.wandb_mode or os.environ.get("WANDB_MODE") or "online"
        if mode == "online":
            _check_key()
        run_id = c.wandb_run_id or (self.saved_id("wandb_run_id") if resuming(start) else None)
        run_id = run_id or generate_id()
        self.save_id("wandb_run_id", run_id)
        self.run = wandb.init(
            project=c.wandb_project,
            entity=c.wandb_entity,
            name=c.wandb_name or self.run_dir.name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),
            config=c.model_dump(mode="json"),  # secrets masked
            settings=wandb.Settings(console="off", silent=True),
            reinit="create_new",
        )
        self.exit_code = 1
        if c.wandb_watch and str(c.wandb_watch).lower() not in ("false", "none"):
            self.log.emit(
                "note",
                message="wandb_watch: W&B gradient/parameter histograms are not logged here (they "
                "would run hooks on the training thread); every scalar of the run log is",
            )

    def handle(self, record: dict) -> None:
        step = step_of(record)
        data: dict = dict(scalars(record))
        said = text(record)
        if said:
            data[said[0]] = said[1]
        if data and step is not None and step >= self.run.step:  # W&B drops steps that go back
            self.run.log(data, step=step)
        kind = record.get("kind")
        log_model = str(self.config.wandb_log_model or "").lower()
        if kind == "save" and log_model == "checkpoint" and record.get("path"):
            self._artifact(record["path"], step)
        elif kind == "end":
            self.exit_code = 0 if record.get("status") in ("completed", "stopped", "early_stopped") else 1
            self.run.summary["status"] = record.get("status")
            if log_model == "end" and record.get("checkpoint"):
                self._artifact(record["checkpoint"], step)

    def _artifact(self, path: str, step) -> None:
        import wandb

        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"step": step})
        for name in ADAPTER_FILES:
            if (Path(path) / name).is_file():
                artifact.add_file(str(Path(path) / name))
        self.run.log_artifact(artifact, aliases=[f"step-{step}"])

    def finish(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.finish(exit_code=self.exit_code)


def _check_key() -> None:
    """Online W&B needs an API key; without one wandb would prompt on a terminal (or hang)."""
    from wandb.sdk.lib.wbauth.authenticate import authenticate_session

    if (
        authenticate_session(
            host=os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), source="leviathan", prompt=False
        )
        is None
    ):
        raise RuntimeError(
            "no W&B API key: run `wandb login` or set WANDB_API_KEY (or `wandb_mode: offline`)"
        )


@register("wandb")
def open_wandb(config, run_dir, log):
    if not config.wandb_on or lacks_library(log, "wandb", "wandb_project", "wandb"):
        return None
    return WandbSink(config, run_dir, log)
