"""YAML -> a validated run config, with Axolotl's key names.

A user brings their Axolotl file unchanged. Every key is one of:

- honoured: a field of ``RunConfig`` below, applied exactly;
- mapped or noted: a known Axolotl key reached the engine's own way, or with no effect on the
  result (``engine.config.axolotl_keys`` says which and why); a note says so in the run log and on stderr;
- unsupported: a known Axolotl key that would change training and that we do not do;
  refused by name with the reason (exit 2), never silently ignored;
- unknown: refused, with "did you mean ..." where a key of related meaning is close.

An empty value means "not set". Every problem of a file comes in one report (``config_report``).

Paths: a relative dataset or model path is looked up first in the config file's folder,
then in the current directory (Axolotl's own rule, so configs used from a project root
keep working). A relative ``output_dir`` or ``logs_dir`` is taken from the current
directory, as Axolotl does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, PrivateAttr, ValidationError, model_validator

from engine.config.axolotl_keys import NOTED_KEYS, UNSUPPORTED_KEYS, translate
from engine.config.config_datasets import DatasetSpec
from engine.config.config_dist import (
    FSDP_OPTIONS,
    DistributedConfig,
    DistributedKeys,
    FsdpConfig,
    check_deepspeed_json,
)
from engine.config.config_model import ModelKeys
from engine.config.config_report import KeyError_, Problem, explain, key_lines, report, suggest
from engine.config.config_report import where as _where
from engine.config.config_sections import (
    ChatConfig,
    ChatPresetSpec,
    CurriculumConfig,
    CurriculumPhase,
    ExportConfig,
    GuardConfig,
    HealthConfig,
    SectionKeys,
)
from engine.config.config_training import TrainingKeys
from engine.config.config_unattended import NotifyConfig, UnattendedKeys
from engine.config.yamlload import BOOLEAN_FIX, boolean_problems, load_yaml
from engine.errors import UserError

__all__ = [
    "FSDP_OPTIONS",
    "NOTED_KEYS",
    "UNSUPPORTED_KEYS",
    "ChatConfig",
    "ChatPresetSpec",
    "CurriculumConfig",
    "CurriculumPhase",
    "DatasetSpec",
    "DistributedConfig",
    "ExportConfig",
    "FsdpConfig",
    "GuardConfig",
    "HealthConfig",
    "KeyError_",
    "NotifyConfig",
    "RunConfig",
    "load_config",
    "validate",
]


class RunConfig(DistributedKeys, UnattendedKeys, SectionKeys, TrainingKeys, ModelKeys):
    """A run's config, every key honoured; its parts by concern, in the order the resolved
    config (``config.yaml``) is written: the model, training, our sections, trackers and
    notifications, several GPUs."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    _defaults_differ: list[str] = PrivateAttr(default_factory=list)
    """Keys left out whose Axolotl default differs from ours (``check`` and the start record say so)."""

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise KeyError_(("load_in_8bit",), "load_in_4bit and load_in_8bit: choose one", "drop one")
        if self.adapter == "qlora" and self.load_in_8bit:
            raise KeyError_(("load_in_8bit",), "adapter: qlora quantizes to 4 bits", "drop load_in_8bit")
        if self.chat_template == "jinja" and not self.chat_template_jinja:
            raise KeyError_(
                ("chat_template",),
                "chat_template: jinja needs chat_template_jinja",
                "add `chat_template_jinja:`",
            )
        for a, b in (("evals_per_epoch", "eval_steps"), ("saves_per_epoch", "save_steps")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise KeyError_((a,), f"`{a}` and `{b}` both set the same interval", "keep one of them")
        fsdp_ac = self.fsdp_config is not None and self.fsdp_config.activation_checkpointing
        if self.gradient_checkpointing == "offload" and fsdp_ac:
            raise KeyError_(
                ("gradient_checkpointing",), "offload and FSDP's activation checkpointing", "keep one"
            )
        if self.curriculum is not None and self.max_steps is None:
            last = len(self.curriculum.phases) - 1
            if self.curriculum.phases[last].start_epoch >= self.num_epochs:
                raise KeyError_(
                    ("curriculum", "phases", last, "start_epoch"),
                    f"the phase starts at epoch {self.curriculum.phases[last].start_epoch} "
                    f"but training ends at num_epochs {self.num_epochs:g}",
                    "start it earlier or raise num_epochs",
                )
        if self.early_stopping_patience and not self.val_set_size:
            raise KeyError_(
                ("early_stopping_patience",),
                "early stopping watches eval_loss, and no rows are held out for evaluation",
                "set `val_set_size` (and `eval_steps` or `evals_per_epoch`), or remove early_stopping_patience",
            )
        if self.early_stopping_patience and not (self.eval_steps or self.evals_per_epoch):
            raise KeyError_(
                ("early_stopping_patience",),
                "early stopping watches eval_loss, and no evaluation interval is set",
                "set `eval_steps` or `evals_per_epoch`",
            )
        if self.deepspeed and self.uses_fsdp:
            raise KeyError_(
                ("deepspeed",), "deepspeed and fsdp/fsdp_config are two ways to shard", "choose one"
            )
        if self.fsdp is not None and not isinstance(self.fsdp, bool):
            for i, opt in enumerate(self.fsdp):
                if opt not in FSDP_OPTIONS:
                    raise KeyError_(
                        ("fsdp", i), f"`{opt}` is not an fsdp option", f"use {', '.join(FSDP_OPTIONS)}"
                    )
        if self.fsdp_config is not None and self.fsdp_config.activation_checkpointing:
            if self.gradient_checkpointing is True:
                raise KeyError_(
                    ("gradient_checkpointing",),
                    "gradient_checkpointing and fsdp_config.activation_checkpointing are both on",
                    "keep fsdp_config.activation_checkpointing (FSDP's own) and drop gradient_checkpointing",
                )
            self.gradient_checkpointing = False  # FSDP checkpoints activations itself
        return self


KNOWN_KEYS = sorted(set(RunConfig.model_fields) | set(NOTED_KEYS) | set(UNSUPPORTED_KEYS))


def _resolve_path(value: str, base: Path) -> str:
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of a user that does not exist
        return value
    if p.is_absolute():
        return str(p)
    for root in (base, Path.cwd()):
        if (root / p).exists():
            return str((root / p).resolve())
    return value


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[RunConfig, list[str]]:
    """Read and validate a config; returns it with the notes on keys that have no effect."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: no such config file", "give the path of an Axolotl-style YAML file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = file.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(
            f"{file}:{line}: not UTF-8 text (byte {e.start})", "save the config as UTF-8"
        ) from None
    except OSError as e:
        raise UserError(
            f"{file}: cannot read the config ({e.strerror})", "check the path and its permissions"
        ) from None
    try:
        raw = load_yaml(text, file)  # duplicate keys refused, with both lines
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise UserError(
            f"{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the YAML syntax"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{file}: the top level must be a mapping of keys", "write `key: value` lines")
    return validate(raw, file, text, overrides)


VALIDATIONS = [0]
"""How many configs this process has validated (a start validates its config once: tests read it)."""


def validate(
    raw: dict, file: Path, text: str = "", overrides: dict[str, Any] | None = None
) -> tuple[RunConfig, list[str]]:
    """All of a config's problems in one UserError; else the config and its notes."""
    VALIDATIONS[0] += 1
    lines = key_lines(text)
    t = translate(raw, set(RunConfig.model_fields))
    notes = [f"{_where(str(file), lines, loc)}: {text}" for loc, text in t.notes]
    problems = []
    for loc, message, fix in t.problems:
        if message.startswith("unknown key"):
            close = suggest(str(loc[-1]), KNOWN_KEYS)
            fix = f"did you mean `{close}`?" if close else "see README.md for the keys"
        problems.append(Problem(_where(str(file), lines, loc), message, fix))
    data = {**t.data, **(overrides or {})}
    problems += [Problem(w, m, BOOLEAN_FIX) for w, m in boolean_problems(data, RunConfig, file, text)]
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        problems += explain(e, RunConfig, file, lines)
    if problems:
        raise report(problems)
    config._defaults_differ = t.omitted_defaults
    base = file.resolve().parent
    for ds in config.datasets:
        ds.path = _resolve_path(ds.path, base)
    config.base_model = _resolve_path(config.base_model, base)
    if config.lora_model_dir:
        config.lora_model_dir = _resolve_path(config.lora_model_dir, base)
    if config.deepspeed:
        config.deepspeed = _resolve_path(config.deepspeed, base)
        check_deepspeed_json(config.deepspeed, _where(str(file), lines, ("deepspeed",)))
    return config, notes


def dump_resolved(config: RunConfig, path: str | Path) -> None:
    """The resolved config in the run folder, written whole or not at all."""
    import os

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
