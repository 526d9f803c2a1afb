"""Config sections of the evaluation suites (``evaluation:``) and the checklist (``checklist:``).

Kept apart from ``engine.evaluate.checklist`` and ``engine.evaluate.evaluate`` so those stay importable without
pydantic (the CLI's ``--help`` imports them); ``engine.config.config`` mounts both sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class EvaluationConfig(BaseModel):
    """How the identity and inference suites ask and judge; the defaults are the guide's."""

    model_config = ConfigDict(extra="forbid")

    persona: str = "Leviathan"
    """The name an identity answer must contain."""
    identity_match: Literal["word", "substring", "regex"] = "word"
    """word: the persona as a whole word, any case; substring: anywhere, any case;
    regex: ``identity_pattern`` (Python syntax, searched in the answer)."""
    identity_pattern: str | None = None
    """The regex for identity_match: regex."""
    identity_prompts: str | None = None
    """A JSONL of ``{"prompt": ...}`` lines; default: the guide's five identity prompts."""
    inference_suite: str | None = None
    """A JSONL inference suite; default: the bundled ``engine/assets/inference_suite.jsonl``."""
    max_new_tokens: int = Field(256, gt=0)
    """Tokens generated per answer (greedy)."""
    batch_size: int = Field(8, gt=0)
    """Prompts generated together."""
    code_timeout_s: float = Field(10.0, gt=0)
    """Time limit for a code expectation's program (one expectation may set its own)."""
    system_prompt: str | None = None
    """A system message put before every prompt."""
    lmeval_tasks: list[str] = Field(default_factory=lambda: ["humaneval", "truthfulqa_mc"])
    """lm-evaluation-harness tasks run by ``eval --suite lmeval`` when --tasks is not given."""
    on_save: list[Literal["identity", "inference"]] = Field(default_factory=list)
    """Suites run on every checkpoint as it is saved (probes), on the training model at that step:
    ``[identity, inference]``; ``true`` means both, ``false`` none. Scores go to the run log
    (``probe`` records), the run's ``eval/`` folder and the checkpoint's marker."""
    keep_best: Literal["eval_loss", "identity", "inference"] = "eval_loss"
    """Which checkpoint ``save_total_limit`` keeps besides the newest: the best eval loss (always),
    and with ``identity`` or ``inference`` also the best score of that probe (``on_save``)."""

    @field_validator("on_save", mode="before")
    @classmethod
    def _suites(cls, v):
        if v is True:
            return ["identity", "inference"]
        if v is False or v is None:
            return []
        if isinstance(v, str):
            return [v]
        return v

    @model_validator(mode="after")
    def _best_is_probed(self):
        if self.keep_best != "eval_loss" and self.keep_best not in self.on_save:
            raise ValueError(
                f"keep_best: {self.keep_best} needs that probe: add it to on_save (e.g. on_save: [{self.keep_best}])"
            )
        return self

    @field_validator("identity_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            import re

            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regex: {e}") from None
        return v


class ChecklistItemSpec(BaseModel):
    """One checklist item: an override of a default item (same ``id``) or a new one.

    An item with a ``rule`` is measured automatically; one without is ticked by hand.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str | None = None
    group: str | None = None
    """validation (the 10% run's critical checks) or post_training, or a name of your own."""
    rule: str | None = None
    """An automatic rule (see ``leviathan-cockpit checklist --rules``); none: a manual item."""
    required: bool | None = None
    """Required items that do not pass make ``leviathan-cockpit checklist`` exit 1."""
    enabled: bool = True
    """false drops a default item."""
    min: float | None = None
    """Lower bound of the measured value (scores are fractions: 0.9 = 90%)."""
    max: float | None = None
    """Upper bound of the measured value."""
    suite: str | None = None
    """For rule eval_score: identity or inference."""
    category: str | None = None
    """For rule eval_score on the inference suite: score only this category's prompts."""
    task: str | None = None
    """For rule lmeval: the lm-eval task name."""
    preset_group: str | None = None
    """For rule chat_marks: the chat presets' group whose marked answers count (esoteric, dark, ...)."""
    metric: str | None = None
    """For rule lmeval: the metric (acc, pass@1, ...)."""
    path: str | None = None
    """For rules merged_model / quantized_model: the folder to look at."""
    window: int | None = Field(None, gt=0)
    """For loss rules: how many logged steps are averaged."""

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, v: str | None) -> str | None:
        from engine.config.rule_names import RULE_NAMES as RULES

        if v is not None and v not in RULES:
            raise ValueError(f"unknown rule {v!r}; rules: {', '.join(RULES)}")
        return v


class ChecklistConfig(BaseModel):
    """The validation checklist: the guide's items by default, changed or extended here."""

    model_config = ConfigDict(extra="forbid")

    items: list[ChecklistItemSpec] = Field(default_factory=list)
    """Overrides (by id) and additions to the default items."""
    defaults: bool = True
    """false: only the items listed here."""


GUIDE_GATE_CHECKS = (
    "loss_smooth",
    "no_oom",
    "checkpoints_saved",
    "identity_responds",
    "code_works",
    "esoteric_present",
)


class GateConfig(BaseModel):
    """The run this one waits for: the guide's "ONLY proceed after 10% test passes all validations".

    ``train`` refuses (exit 2, every failing check with its evidence and the command that would
    settle it) until the checks pass on that run's checklist; ``--override-gate "reason"``
    proceeds and writes the reason to this run's log, checklist and model card. Checked on a
    fresh start only: a run already past its gate resumes without it.
    """

    model_config = ConfigDict(extra="forbid")

    run: str
    """The gating run's folder (``logs/<run-name>``), relative to where the command runs."""
    checks: list[str] = Field(default_factory=lambda: list(GUIDE_GATE_CHECKS))
    """Checklist item ids of the gating run that must pass (default: the guide's critical checks:
    loss falls smoothly, no OOM, checkpoints saved, answers as the persona, code works, esoteric
    knowledge present). Any item id of that run's checklist may be listed."""

    @field_validator("checks")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a gate needs at least one check (or remove `gate:`)")
        return v
