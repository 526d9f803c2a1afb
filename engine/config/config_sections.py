"""The run config's own sections (not Axolotl's): health thresholds, export, the fault guard,
the curriculum and the chat pane, mounted on RunConfig (``engine.config.config``) by
``SectionKeys`` with the evaluation and checklist sections and the run folder's keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.config.config_datasets import PathText
from engine.config.config_report import KeyError_
from engine.config.evalconfig import ChecklistConfig, EvaluationConfig, GateConfig


class HealthConfig(BaseModel):
    """Thresholds of the guide's health rules (``health:`` in the config); the defaults are
    the guide's numbers. Each rule fires once per episode and re-arms when healthy again."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    """False: no health alerts (GPU sampling still runs)."""
    initial_loss_min: float = 2.0
    """The first logged loss is expected in [initial_loss_min, initial_loss_max] (guide: 2.0-3.0)."""
    initial_loss_max: float = 3.0
    """Above it: a warning, "OK if higher, will decrease"."""
    final_loss_max: float = 1.5
    """Train loss (mean of the last 10 logged) expected below this at the last step (guide,
    10% run: < 1.5)."""
    final_loss_check_data: float = 2.0
    """Above it at the last step the advice is to check the data format (guide: > 2.0)."""
    perplexity_max: float = 3.0
    """Validation perplexity expected below this (guide: < 3.0): a warning above it."""
    perplexity_investigate: float = 4.0
    """Validation perplexity above this is critical (guide: investigate if > 4.0)."""
    perplexity_after_epoch: float = 1.0
    """Perplexity rules apply from this epoch on: earlier, the guide's own table expects more
    (~3.5 at epoch 0.5)."""
    gpu_memory_max_gb: float = 75.0
    """Used memory of any GPU above this (GiB, as nvidia-smi counts) is critical (guide: < 75 GB)."""
    gpu_memory_near: float = 0.9
    """A "nearing the limit" warning from this fraction of gpu_memory_max_gb."""
    gpu_sample_s: float = Field(10.0, gt=0)
    """Seconds between two GPU samples in the run log."""
    smoothing_span: int = Field(50, gt=0)
    """Logged steps over which the train loss is smoothed (EMA span) for the plateau,
    overfitting and underfitting rules."""
    plateau_steps: int = Field(1000, gt=0)
    """Plateau: the smoothed loss has not improved by plateau_min_delta for this many steps."""
    plateau_min_delta: float = Field(0.01, ge=0)
    spike_factor: float = Field(1.5, gt=1)
    """Spike: a logged loss above spike_factor x the median of the recent window."""
    spike_min_delta: float = Field(0.3, ge=0)
    """Spike: the jump must also exceed the median by this much; near a loss of 0.1 a 1.5x ratio is noise."""
    spike_window: int = Field(50, gt=1)
    """Logged steps in the spike rule's recent window (it needs 10 of them, or all, first)."""
    overfit_gap: float = 0.5
    """Overfitting: eval_loss - smoothed train loss above this (guide: > 0.5)."""
    underfit_loss: float = 1.5
    """Underfitting: eval and train loss both above this after underfit_after_epoch (guide: 1.5)."""
    underfit_after_epoch: float = 1.0
    forgetting_evals: int = Field(3, ge=0)
    """Forgetting: one ``_category``'s eval loss has risen over this many evaluations (from the
    one this many before) while the overall eval loss fell over them. 0 turns the rule off."""
    forgetting_min_rise: float = Field(0.02, ge=0)
    """Forgetting: the category's loss must have risen by more than this."""
    expected_loss: list[tuple[float, float]] | None = None
    """The chart's expected train loss: ``[epoch, ceiling]`` pairs, linear between them (a
    small model or a new recipe has its own curve). None: the guide's table for an 8B run."""


class ExportConfig(BaseModel):
    """Serving settings for `leviathan-cockpit export` (Ollama Modelfile); the defaults are the guide's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    system_prompt: str | None = None
    """The Modelfile's SYSTEM prompt (none by default; `export ollama --system` overrides)."""
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_ctx: int = Field(4096, gt=0)
    """Context length Ollama serves with."""


class GuardConfig(BaseModel):
    """What the engine does when a long run meets a fault (``guard:`` in the config).

    NaN/Inf: a step whose loss or gradient norm is not finite is skipped (no optimizer update;
    the step still counts, so the step counter and the LR schedule move on) and raises a
    ``nan`` alert. Out of memory: the step is retried with half the micro batch and twice the
    accumulation (same effective batch). Disk: free space is checked before every save."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    nan_patience: int = Field(3, gt=0)
    """Non-finite steps in a row before ``nan_policy`` acts (each one is skipped)."""
    nan_policy: Literal["rollback", "stop"] = "rollback"
    """rollback: go back to the newest complete checkpoint saved before the bad steps began and
    go on with the learning rate times ``nan_lr_scale``; stop: end the run (status diverged)."""
    nan_lr_scale: float = Field(0.5, gt=0, le=1)
    """Factor on the learning rate at each rollback (it compounds: 0.5, 0.25, ...)."""
    nan_max_rollbacks: int = Field(3, ge=0)
    """Rollbacks allowed in one run; one more streak of non-finite steps stops it."""
    oom_retry: bool = True
    """On CUDA out of memory in a step: retry it with half the micro batch and twice
    gradient_accumulation_steps, kept for the rest of the run and on resume."""
    disk_margin: float = Field(1.25, gt=0)
    """A save starts only with this many times the last checkpoint's size free on the
    output_dir's disk (no checkpoint yet: an estimate from the trainable parameters)."""
    disk_poll_s: float = Field(5.0, gt=0)
    """While paused for disk space: seconds between two looks at the free space."""
    save_best: bool = True
    """When an evaluation finds a new best eval_loss at a step that is not a save step, save a
    checkpoint there too, so the best weights exist on disk and retention keeps them."""


class CurriculumPhase(BaseModel):
    """One phase of the curriculum: a span of training with its own category mix."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    """Shown in the cockpit and in the run log's ``phase`` records."""
    start_epoch: float = Field(ge=0)
    """Where the phase begins, in epochs of training (0.0 is the first step; 1.5 is half-way
    through the second epoch)."""
    end_epoch: float = Field(gt=0)
    """Where it ends (exclusive). Phases may not overlap; a gap trains on the natural mix."""
    weights: dict[str, float] | None = None
    """Share of the examples drawn from each ``_category`` while the phase lasts (made to sum
    to 1). ``"*"`` is one weight for all the categories not named, shared among them by their
    sizes (the rest of the corpus in its natural mix). Without ``"*"``, categories not named are
    left out of the phase. Omitted: the natural mix (every example equally likely, each seen
    once per epoch)."""

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        for cat, w in v.items():
            if not w >= 0:
                raise KeyError_((cat,), f"weight {w!r} is negative", "weights are shares: 0 or more")
        if not any(w > 0 for w in v.values()):
            raise KeyError_((), "every weight is 0", "give at least one category a weight above 0")
        return v


class CurriculumConfig(BaseModel):
    """Phases over epochs with category weights, applied by a sampler over the training set
    (files are not rewritten). Reproducible by ``seed`` and exact on resume."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    phases: list[CurriculumPhase] = Field(min_length=1)
    """In order of ``start_epoch``."""
    mix_every: int = Field(50, gt=0)
    """Steps between the run log's ``mix`` records (the mix of categories seen so far)."""

    @model_validator(mode="after")
    def _ordered(self) -> CurriculumConfig:
        names = set()
        for i, ph in enumerate(self.phases):
            if ph.end_epoch <= ph.start_epoch:
                raise KeyError_(
                    ("phases", i, "end_epoch"),
                    f"end_epoch {ph.end_epoch} is not after start_epoch {ph.start_epoch}",
                    "a phase ends after it starts",
                )
            if i and ph.start_epoch < self.phases[i - 1].end_epoch:
                raise KeyError_(
                    ("phases", i, "start_epoch"),
                    f"phase {ph.name!r} starts at {ph.start_epoch}, before phase "
                    f"{self.phases[i - 1].name!r} ends ({self.phases[i - 1].end_epoch})",
                    "list phases in order, without overlaps",
                )
            if ph.name in names:
                raise KeyError_(
                    ("phases", i, "name"), f"phase name {ph.name!r} is used twice", "name each phase once"
                )
            names.add(ph.name)
        return self


class ChatPresetSpec(BaseModel):
    """One prompt of the chat pane's preset list."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(min_length=1)
    label: str | None = None
    """What the list shows (default: the prompt's start)."""
    group: str = "config"
    """Groups pass/fail marks in the checklist (identity, esoteric, code, ...)."""


class ChatConfig(BaseModel):
    """The chat pane: system prompt, generation defaults, presets added to the guide's own."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    system: str | None = None
    """System prompt the pane starts with (editable there); none by default."""
    temperature: float = Field(0.7, ge=0)
    """0 means greedy decoding."""
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    presets: list[ChatPresetSpec | str] = Field(default_factory=list)
    """Prompts (plain strings, or prompt/label/group) listed after the guide's spot checks."""


class SectionKeys(BaseModel):
    """The run config's own sections and where the run folder goes. A part of ``RunConfig``
    (``engine.config.config``)."""

    logs_dir: PathText = "logs"
    run_name: str | None = None
    health: HealthConfig = Field(default_factory=HealthConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """The identity and inference suites: persona, prompts, suite file, generation length."""
    checklist: ChecklistConfig = Field(default_factory=ChecklistConfig)
    """The validation checklist's items (the guide's lists by default)."""
    export: ExportConfig = Field(default_factory=ExportConfig)
    """Serving settings used after training (`leviathan-cockpit export ollama`)."""
    curriculum: CurriculumConfig | None = None
    """Phases over epochs with ``_category`` weights (see CurriculumConfig); none: every epoch
    is the natural mix."""
    chat: ChatConfig = Field(default_factory=ChatConfig)
    """The chat pane: system prompt, sampling settings and presets (the guide's by default)."""
    guard: GuardConfig = Field(default_factory=GuardConfig)
    """Fault handling: NaN/Inf steps, out of memory, disk space, best checkpoint (see GuardConfig)."""
    gate: GateConfig | None = None
    """The run whose checks must pass before this one starts (the 10% run; see GateConfig)."""

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, v: str | None) -> str | None:
        if v and ("\x00" in v or "/" in v or v in (".", "..")):
            raise ValueError("a run name is one folder name: no '/', no NUL byte, not . or ..")
        return v
