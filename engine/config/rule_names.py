"""The checklist's rule names, without the rules.

``engine.config.evalconfig`` validates ``rule:`` keys against these, so the config layer does not import
the checklist (which reads run folders); ``engine.evaluate.checklist_rules.RULES`` maps each name to its function
and a test keeps the two the same.
"""

from __future__ import annotations

RULE_NAMES: tuple[str, ...] = (
    "chat_marks",
    "loss_decreases",
    "no_oom",
    "checkpoints_saved",
    "all_checkpoints_saved",
    "final_loss",
    "val_perplexity",
    "no_spikes",
    "eval_score",
    "lmeval",
    "merged_model",
    "quantized_model",
    "hub_upload",
)
