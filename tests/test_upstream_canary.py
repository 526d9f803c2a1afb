"""Canary for an upgrade of transformers, TRL or peft: what we override or pass still exists.

``engine/train/trainer.py`` (and the curriculum trainer) override private ``Trainer`` / ``SFTTrainer``
hooks and read private trainer state; ``engine/train/build.py``, ``engine/train/dist.py`` and
``engine/model/model.py`` pass keyword arguments to ``SFTConfig``, ``LoraConfig`` and
``BitsAndBytesConfig``. An upgrade that renames one fails silently at best (a hook never called)
or deep in a run at worst. These tests read our source with ``ast`` (so new overrides and new
keywords are checked without being listed here) and the real upstream signatures with
``inspect``: nothing is mocked.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import textwrap
from pathlib import Path

import peft
import pytest
import transformers
import trl

VERSIONS = f"transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}"
# Methods of ours on the trainer that upstream does not have (the others must be upstream's).
# ours, not overrides
OURS = {
    "_add_metric",
    "_compute_loss",
    "_flush_tokens",
    "_label_category",
    "_write_log",
    "_lag_now",
    "_lag",
    "_settle_lagged",
    "record_time",
}
TRAINER_MODULES = ("engine.train.trainer", "engine.train.curriculum_trainer")


def _tree(module: str) -> ast.AST:
    """Our module's syntax tree, found by name (read, not imported)."""
    return ast.parse(Path(importlib.util.find_spec(module).origin).read_text())


def _is_trainer_class(node: ast.ClassDef) -> bool:
    return any(getattr(b, "id", None) in ("SFTTrainer", "LeviathanTrainer") for b in node.bases)


def _trainer_classes():
    """(file, class node) for every class of ours that subclasses the trainer."""
    for name in TRAINER_MODULES:
        tree = _tree(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _is_trainer_class(node):
                yield name, node


def _overrides():
    for file, cls in _trainer_classes():
        for node in cls.body:
            if isinstance(node, ast.FunctionDef) and node.name not in OURS and node.name != "__init__":
                yield f"{file}:{cls.name}.{node.name}", node


def _upstream_params(name: str) -> list[inspect.Parameter] | None:
    """The parameters of the nearest upstream definition that names them (TRL's wrappers that
    take ``*args, **kwargs`` pass through to Trainer's)."""
    for klass in trl.SFTTrainer.__mro__:
        fn = klass.__dict__.get(name)
        if fn is None:
            continue
        params = list(inspect.signature(fn).parameters.values())[1:]
        if [p.kind for p in params] != [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]:
            return params
    return [] if hasattr(trl.SFTTrainer, name) else None


def test_the_trainer_hooks_we_override_still_exist_with_our_parameters():
    problems = []
    found = list(_overrides())
    assert len(found) >= 10  # compute_loss, log, the six private hooks, the curriculum's two, ...
    for where, node in found:
        upstream = _upstream_params(node.name)
        if upstream is None:
            problems.append(
                f"{where}: SFTTrainer has no `{node.name}` any more: our override is never called"
            )
            continue
        ours = [a.arg for a in node.args.args[1:]]
        names = [p.name for p in upstream]
        if names[: len(ours)] != ours:
            problems.append(f"{where}: upstream takes ({', '.join(names)}), our override ({', '.join(ours)})")
        if node.args.vararg is None:
            required = [
                p.name for p in upstream[len(ours) :] if p.default is p.empty and p.kind <= p.KEYWORD_ONLY
            ]
            if required:
                problems.append(f"{where}: upstream now also requires {', '.join(required)}")
    assert not problems, f"with {VERSIONS}:\n" + "\n".join(problems)


def test_the_seven_private_hooks_are_the_ones_the_version_note_names():
    private = sorted(
        n.name for w, n in _overrides() if w.startswith("engine.train.trainer:") and n.name.startswith("_")
    )
    assert private == [
        "_get_grad_norm",
        "_load_optimizer_and_scheduler",
        "_maybe_log_save_evaluate",
        "_run_epoch",  # trains nothing once global_step >= max_steps (a resume at the last step)
        "_save_checkpoint",
        "_save_optimizer_and_scheduler",
        "_track_num_input_tokens",
    ], "update the note on transformers/trl in pyproject.toml and this list"


def _source_of(obj) -> str:
    return inspect.getsource(inspect.getmodule(obj))


# Upstream's state we read or set. Private names are found in our code by
# test_every_private_trainer_attribute_we_touch_is_listed: one missing here fails that test.
PRIVATE_STATE = [
    (transformers.Trainer, "self._tr_loss"),  # engine/train/guard/nan.py zeroes it after a skipped step
    (transformers.Trainer, "self._globalstep_last_logged"),  # engine/train/guard/nan.py
    (transformers.Trainer, "self._total_loss_scalar"),  # engine/train/trainer.py adds a lagged step's loss
    (transformers.Trainer, "self.label_smoother"),  # engine/train/trainer.py falls back to TRL's loss
    (transformers.Trainer, "self.compute_loss_func"),
    (trl.SFTTrainer, "self._metrics"),  # engine/train/trainer.py clears TRL's per-step metrics
    (trl.SFTTrainer, "self.aux_loss_enabled"),
    (transformers.TrainingArguments, "self._n_gpu"),  # engine/train/build.py: one GPU per process
]


@pytest.mark.parametrize(("owner", "attribute"), PRIVATE_STATE)
def test_private_trainer_state_we_read_is_still_set_upstream(owner, attribute):
    assert f"{attribute} =" in _source_of(owner), (
        f"{owner.__qualname__} no longer sets `{attribute}` ({VERSIONS}); engine/train/ reads it"
    )


def _private_accesses():
    """(where, name) for each private attribute engine/train/ touches on a trainer (``trainer._x``,
    ``self._x`` in our trainer classes) or on its arguments (``args._x``)."""
    root = Path(importlib.util.find_spec("engine.train").origin).parent
    for f in sorted(root.rglob("*.py")):
        tree = ast.parse(f.read_text())
        classes = [c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and _is_trainer_class(c)]
        in_class = {id(n) for c in classes for n in ast.walk(c)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            name, owner = node.attr, node.value.id
            on_trainer = owner in ("trainer", "args") or (owner == "self" and id(node) in in_class)
            if on_trainer and name.startswith("_") and not name.startswith("__"):
                yield f"{f.relative_to(root.parent.parent)}:{node.lineno}", name


def _ours() -> set[str]:
    """Methods of our trainer classes and the attributes their ``__init__`` sets."""
    names = set(OURS)
    for _, cls in _trainer_classes():
        for node in cls.body:
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
                if node.name == "__init__":
                    names |= {
                        t.attr
                        for a in ast.walk(node)
                        if isinstance(a, (ast.Assign, ast.AnnAssign))
                        for t in (a.targets if isinstance(a, ast.Assign) else [a.target])
                        if isinstance(t, ast.Attribute)
                    }
    return names


def test_every_private_trainer_attribute_we_touch_is_listed():
    found = list(_private_accesses())
    names = {n for _, n in found}
    assert {"_tr_loss", "_globalstep_last_logged", "_metric_sums"} <= names  # the walk sees the guard
    listed = {attribute.removeprefix("self.") for _, attribute in PRIVATE_STATE}
    missing = sorted({f"{where}: {name}" for where, name in found if name not in listed | _ours()})
    assert not missing, "upstream's private state we touch, not in PRIVATE_STATE:\n" + "\n".join(missing)


def test_mask_preparation_still_reads_position_ids_fifth_and_only_for_the_document_scan():
    """engine/model/attention.py hands ``_preprocess_mask_arguments`` no position ids for our
    attention, to skip the packed-document scan (and its host sync)."""
    from transformers import masking_utils

    original = inspect.unwrap(masking_utils._preprocess_mask_arguments)
    params = list(inspect.signature(original).parameters)
    assert params[:3] == ["config", "inputs_embeds", "attention_mask"] and params[4] == "position_ids", (
        f"_preprocess_mask_arguments now takes ({', '.join(params)}) ({VERSIONS})"
    )
    tree = ast.parse(textwrap.dedent(inspect.getsource(original)))
    scans = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.If)
        and any(
            getattr(c.func, "id", None) == "find_packed_sequence_indices"
            for c in ast.walk(n)
            if isinstance(c, ast.Call)
        )
    ]
    assert scans, f"_preprocess_mask_arguments no longer scans position ids ({VERSIONS})"
    inside = {id(n) for s in scans for n in ast.walk(s)}
    elsewhere = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and n.id == "position_ids" and id(n) not in inside
    ]
    assert not elsewhere, f"_preprocess_mask_arguments reads position_ids outside the scan ({VERSIONS})"


def test_the_fused_lm_head_still_gives_what_our_loss_reads():
    from trl.trainer.utils import FusedCausalLMOutput, add_fused_lm_head

    fields = {f.name for f in dataclasses.fields(FusedCausalLMOutput)}
    missing = {"log_probs", "entropy", "is_top1", "label_mask"} - fields
    assert not missing, (
        f"TRL's FusedCausalLMOutput lost {missing} ({VERSIONS}); engine/train/trainer.py reads them"
    )
    assert "fused_lm_head" in _source_of(add_fused_lm_head)
    assert "add_fused_lm_head" in _source_of(trl.SFTTrainer), "SFTTrainer no longer adds the fused LM head"


def _keywords(module: str, callee: str) -> set[str]:
    """The keyword names our code passes to ``callee(...)``."""
    out = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
            if name == callee:
                out |= {k.arg for k in node.keywords if k.arg is not None}
    return out


def _dict_keys(module: str, function: str) -> set[str]:
    """``out["key"] = ...`` keys set in a function that builds keyword arguments."""
    tree = _tree(module)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    keys = set()
    for node in ast.walk(fn):
        key = getattr(node, "slice", None) if isinstance(node, ast.Subscript) else None
        if isinstance(node.ctx if key is not None else None, ast.Store) and isinstance(key, ast.Constant):
            keys.add(key.value)
        if isinstance(node, ast.Dict):
            keys |= {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return keys


def _named_params(target) -> set[str]:
    return {
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def test_the_keywords_we_pass_upstream_are_still_accepted():
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

    checks = [
        ("build.py SFTConfig(...)", _keywords("engine.train.build", "SFTConfig"), _named_params(SFTConfig)),
        ("dist.py trainer_args()", _dict_keys("engine.train.dist", "trainer_args"), _named_params(SFTConfig)),
        (
            "build.py trainer_cls(...)",
            _keywords("engine.train.build", "trainer_cls"),
            _named_params(trl.SFTTrainer.__init__),
        ),
        (
            "model.py LoraConfig(...)",
            _keywords("engine.model.model", "LoraConfig"),
            _named_params(LoraConfig),
        ),
        (
            "model.py BitsAndBytesConfig(...)",
            _keywords("engine.model.model", "BitsAndBytesConfig"),
            _named_params(BitsAndBytesConfig.__init__),
        ),
        (
            "quantize.py BitsAndBytesConfig(...)",
            _keywords("engine.ship.quantize", "BitsAndBytesConfig"),
            _named_params(BitsAndBytesConfig.__init__),
        ),
    ]
    problems = []
    for where, passed, accepted in checks:
        assert passed, f"{where}: no keywords found: the call moved, update this test"
        gone = sorted(passed - accepted)
        if gone:
            problems.append(f"{where}: {', '.join(gone)} no longer accepted")
    assert not problems, f"with {VERSIONS}:\n" + "\n".join(problems)


def test_the_sftconfig_fields_our_trainer_reads_still_exist():
    from trl import SFTConfig

    read = set()
    for node in ast.walk(_tree("engine.train.trainer")):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "args"
        ):
            read.add(node.attr)
    fields = {f.name for f in dataclasses.fields(SFTConfig)} | {
        n for n in dir(SFTConfig) if not n.startswith("__")
    }
    assert read and not read - fields, f"SFTConfig lost {sorted(read - fields)} ({VERSIONS})"
