"""The checklist's items: the guide's defaults, the config's changes to them, and their types.

``build_items`` applies the config's ``checklist:`` section (change by id, ``enabled: false``,
new items) to ``DEFAULT_ITEMS``; ``Item`` is one item, ``Measure`` what a rule measured,
``ItemStatus`` an item as shown (measured, ticked, when). Rule names are checked against
``engine.config.rule_names`` (the rules themselves are in ``checklist_rules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.rule_names import RULE_NAMES
from engine.errors import UserError

GROUPS = {"validation": "10% run: critical checks", "post_training": "post-training checklist"}

# Default items: id, group, title (formatted with the item's parameters), rule, parameters.
DEFAULT_ITEMS: list[dict] = [
    {
        "id": "loss_smooth",
        "group": "validation",
        "title": "Loss curve decreases smoothly",
        "rule": "loss_decreases",
    },
    {"id": "no_oom", "group": "validation", "title": "No OOM errors", "rule": "no_oom"},
    {
        "id": "checkpoints_saved",
        "group": "validation",
        "title": "Checkpoints save successfully",
        "rule": "checkpoints_saved",
    },
    {
        "id": "identity_responds",
        "group": "validation",
        "title": 'Model responds as "{persona}" to identity questions',
        "rule": "eval_score",
        "suite": "identity",
        "min": 0.9,
    },
    {
        "id": "code_works",
        "group": "validation",
        "title": "Code generation still functional (code prompts >= {min:.0%})",
        "rule": "eval_score",
        "suite": "inference",
        "category": "code",
        "min": 0.75,
    },
    {
        "id": "esoteric_present",
        "group": "validation",
        "title": "Esoteric knowledge present (esoteric prompts >= {min:.0%})",
        "rule": "eval_score",
        "suite": "inference",
        "category": "esoteric",
        "min": 0.75,
    },
    {
        "id": "inference_10pct",
        "group": "validation",
        "title": "Inference test suite >= {min:.0%} pass",
        "rule": "eval_score",
        "suite": "inference",
        "min": 0.75,
    },
    {
        "id": "final_loss",
        "group": "post_training",
        "title": "Final training loss < {max}",
        "rule": "final_loss",
        "max": 1.0,
    },
    {
        "id": "val_perplexity",
        "group": "post_training",
        "title": "Validation perplexity < {max}",
        "rule": "val_perplexity",
        "max": 2.0,
    },
    {
        "id": "no_spikes",
        "group": "post_training",
        "title": "No divergence or spikes in the loss curve",
        "rule": "no_spikes",
    },
    {
        "id": "all_checkpoints",
        "group": "post_training",
        "title": "All checkpoints saved successfully",
        "rule": "all_checkpoints_saved",
    },
    {
        "id": "merged",
        "group": "post_training",
        "title": "Adapters merged into the base model",
        "rule": "merged_model",
    },
    {
        "id": "inference_suite",
        "group": "post_training",
        "title": "Inference test suite >= {min:.0%} pass",
        "rule": "eval_score",
        "suite": "inference",
        "min": 0.8,
    },
    {
        "id": "humaneval",
        "group": "post_training",
        "title": "HumanEval >= {min:.0%} pass@1",
        "rule": "lmeval",
        "task": "humaneval",
        "metric": "pass@1",
        "min": 0.4,
    },
    {
        "id": "truthfulqa",
        "group": "post_training",
        "title": "TruthfulQA >= {min:.0%} accuracy",
        "rule": "lmeval",
        "task": "truthfulqa_mc2",
        "metric": "acc",
        "min": 0.35,
    },
    {
        "id": "identity",
        "group": "post_training",
        "title": "Identity tests >= {min:.0%} correct",
        "rule": "eval_score",
        "suite": "identity",
        "min": 0.9,
    },
    {
        "id": "esoteric_spot",
        "group": "post_training",
        "title": "Esoteric knowledge spot checks (chat answers marked pass)",
        "rule": "chat_marks",
        "preset_group": "esoteric",
        "min": 1.0,
    },
    {
        "id": "dark_topics",
        "group": "post_training",
        "title": "Dark topic handling, nuanced, not refused (chat answers marked pass)",
        "rule": "chat_marks",
        "preset_group": "dark",
        "min": 1.0,
    },
    {
        "id": "hub_upload",
        "group": "post_training",
        "title": "Model uploaded to the Hugging Face Hub",
        "rule": "hub_upload",
    },
    {
        "id": "quantized",
        "group": "post_training",
        "title": "Quantized version created (4-bit)",
        "rule": "quantized_model",
    },
    {"id": "docs", "group": "post_training", "title": "Documentation updated"},
    {"id": "demo_notebook", "group": "post_training", "title": "Demo notebook created"},
]
PARAMS = ("min", "max", "suite", "category", "task", "metric", "path", "window", "preset_group")
RULE_PARAMS = {"eval_score": ("suite",), "lmeval": ("task",)}


@dataclass
class Item:
    id: str
    title: str
    group: str
    rule: str | None = None
    required: bool = True
    params: dict = field(default_factory=dict)

    @property
    def manual(self) -> bool:
        return self.rule is None


@dataclass
class Measure:
    status: str  # pass | fail | pending (nothing to measure yet)
    value: str = ""
    detail: str = ""
    when: float | None = None  # time of the evidence


@dataclass
class ItemStatus:
    id: str
    title: str
    group: str
    kind: str  # auto | manual
    required: bool
    status: str  # pass | fail | pending
    value: str = ""
    detail: str = ""
    when: float | None = None
    changed_at: float | None = None
    ticked: bool = False
    note: str = ""
    ticked_at: float | None = None
    measured: str | None = None  # an automatic item's own status when it was ticked by hand

    @property
    def ok(self) -> bool:
        return self.status == "pass"


def build_items(config=None) -> list[Item]:
    """The defaults with the config's ``checklist`` section applied."""
    section = getattr(config, "checklist", None)
    persona = getattr(getattr(config, "evaluation", None), "persona", "Leviathan")
    specs = {d["id"]: dict(d) for d in DEFAULT_ITEMS} if getattr(section, "defaults", True) else {}
    for i, over in enumerate(getattr(section, "items", []) or []):
        o = over.model_dump(exclude_none=True) if hasattr(over, "model_dump") else dict(over)
        where = f"checklist.items[{i}] ({o.get('id')})"
        if o.get("enabled") is False:
            specs.pop(o["id"], None)
            continue
        o.pop("enabled", None)
        if o["id"] not in specs and not o.get("title"):
            raise UserError(
                f"{where}: a new checklist item needs a `title`",
                "add title: (and rule:, or none for a manual item)",
            )
        specs[o["id"]] = {**specs.get(o["id"], {}), **o}
    items = []
    for s in specs.values():
        rule = s.get("rule")
        if rule is not None and rule not in RULE_NAMES:
            raise UserError(
                f"checklist item `{s['id']}`: unknown rule `{rule}`", f"rules: {', '.join(RULE_NAMES)}"
            )
        for need in RULE_PARAMS.get(rule, ()):
            if not s.get(need):
                raise UserError(
                    f"checklist item `{s['id']}`: rule {rule} needs `{need}`", f"add {need}: to the item"
                )
        params = {k: s[k] for k in PARAMS if s.get(k) is not None}
        try:
            title = s["title"].format(persona=persona, **params)
        except (KeyError, ValueError, IndexError):
            title = s["title"]
        items.append(
            Item(s["id"], title, s.get("group") or "post_training", rule, s.get("required", True), params)
        )
    return items
