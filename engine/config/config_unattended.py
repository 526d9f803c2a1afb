"""The keys for a run left alone: the user's trackers with Axolotl's key names (W&B,
TensorBoard, MLflow), and the ``notify:`` section (a webhook, a command). A part of
``RunConfig`` (``engine.config.config``); the sinks that act on them are in engine/train/sinks/.

Secrets (a webhook URL holds its token in its path; a command may carry one in its arguments)
are masked wherever the config is written out (``config.yaml``, the start of a run, the model
card): ``model_dump(mode="json")`` gives the masked text, the attribute keeps the real one.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from engine.config.config_report import KeyError_

NOTIFY_EVENTS = ("alert", "resolved", "end", "checkpoint", "eval")
MASK = "***"


def mask_url(url: str | None) -> str | None:
    """The scheme and host of a URL, the rest (where webhook tokens live) masked."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.scheme and parts.hostname:
        return f"{parts.scheme}://{parts.hostname}/{MASK}"
    return MASK


def mask_command(command: str | None) -> str | None:
    """The program a command runs, its arguments (where a token may be) masked."""
    if not command:
        return command
    program = command.split()[0] if command.split() else ""
    return f"{program} {MASK}" if program != command.strip() else program


class NotifyConfig(BaseModel):
    """Being told (``notify:``): events of the run sent to a webhook and/or a command, from a
    background thread (never delaying a step); a failure to send is a ``notify_failed`` alert
    in the run log."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    webhook: str | None = None
    """An http(s) URL that gets one JSON POST per event. Slack's (hooks.slack.com) and Discord's
    (discord.com/api/webhooks) incoming-webhook URLs work as they are: their bodies are
    ``{"text": ...}`` and ``{"content": ...}``; any other URL gets the event itself as JSON.
    Written out masked (scheme and host only)."""
    command: str | None = None
    """A shell command run once per event with the event as JSON on its standard input (e.g.
    ``notify-send "$(jq -r .summary)"``, a mail script). Written out masked (the program only)."""
    on: list[Literal["alert", "resolved", "end", "checkpoint", "eval"]] = Field(
        default_factory=lambda: ["alert", "end"]
    )
    """Which events are sent: alert (a health alert, a failed tracker), resolved (an alert that
    cleared), end (completed, stopped, early_stopped, diverged or failed, with the error's last
    lines), checkpoint (each save), eval (each evaluation)."""
    timeout_s: float = Field(10.0, gt=0)
    """Seconds one attempt may take (the HTTP request, the command)."""
    retries: int = Field(2, ge=0)
    """Attempts after a failed one (1 s, then 2 s, 4 s ... apart)."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data):
        # YAML 1.1 reads the key `on` as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _somewhere(self) -> NotifyConfig:
        if not self.webhook and not self.command:
            raise KeyError_(
                (), "`notify:` has neither `webhook:` nor `command:`", "add one, or remove `notify:`"
            )
        if self.webhook and urlsplit(self.webhook).scheme not in ("http", "https"):
            raise KeyError_(("webhook",), "`webhook` is not an http(s) URL", "write https://...")
        return self

    @field_serializer("webhook", when_used="json")
    def _mask_webhook(self, v: str | None) -> str | None:
        return mask_url(v)

    @field_serializer("command", when_used="json")
    def _mask_command(self, v: str | None) -> str | None:
        return mask_command(v)


class UnattendedKeys(BaseModel):
    """Trackers (Axolotl's keys, the same meaning) and notifications."""

    use_wandb: bool | None = None
    """Log to Weights & Biases (also on when `wandb_project` is set, as Axolotl does). Needs
    `pip install 'leviathan-cockpit[wandb]'`; the API key comes from `wandb login` or
    WANDB_API_KEY, never from the config."""
    wandb_project: str | None = None
    wandb_entity: str | None = None
    """A W&B team name if using a team."""
    wandb_name: str | None = None
    """The W&B run's display name (default: the run name)."""
    wandb_run_id: str | None = None
    """The W&B run id. Unset: one is made at the first start and kept in the run folder
    (``trackers.json``), so a resume continues the same W&B run."""
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    """offline: written under WANDB_DIR (default the run folder) for `wandb sync` later, no
    network; disabled: no W&B at all."""
    wandb_watch: str | None = None
    """`gradients`, `parameters` or `all`: W&B's ``watch`` on the model's trainable layers
    (histograms every 100 steps); false or unset: not watched."""
    wandb_log_model: str | None = None
    """`checkpoint`: each saved checkpoint (the adapter) as a W&B artifact; `end`: the last
    one at the end; false or unset: none."""
    use_tensorboard: bool | None = None
    """TensorBoard event files in ``<run folder>/tensorboard`` (the same folder on resume).
    Needs `pip install 'leviathan-cockpit[tensorboard]'`."""
    use_mlflow: bool | None = None
    """Log to MLflow (also on when `mlflow_experiment_name` is set, as Axolotl does). Needs
    `pip install 'leviathan-cockpit[mlflow]'`."""
    mlflow_tracking_uri: str | None = None
    """Where MLflow writes: a server URL or a `file:` store (default MLflow's, ./mlruns)."""
    mlflow_experiment_name: str | None = None
    mlflow_run_name: str | None = None
    """The MLflow run's name (default: the run name); its id is kept in ``trackers.json`` so a
    resume continues the same MLflow run."""
    notify: NotifyConfig | None = None
    """Events sent to a webhook or a command (see NotifyConfig); none by default."""

    @property
    def wandb_on(self) -> bool:
        return self.wandb_mode != "disabled" and bool(self.use_wandb or self.wandb_project)

    @property
    def mlflow_on(self) -> bool:
        return bool(self.use_mlflow or self.mlflow_experiment_name)
