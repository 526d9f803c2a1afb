"""The run log's record kinds, each declared once: what ``events.jsonl`` holds, typed.

Writers keep calling ``RunLog.emit(kind, **fields)`` (the line on disk is exactly what they
pass, ``t`` first, then ``kind``); ``check`` holds each record against its declaration, and
refuses an undeclared kind or field when ``LEVIATHAN_STRICT_RECORDS=1`` (the test suite sets it).
A user's run never dies on it: without the variable the record is written as given.

Readers call ``decode`` on a record (a dict from ``read_events``/``follow``, or a listener's)
and read attributes: a renamed field is then an ``AttributeError`` in a test rather than a
``None`` nobody notices. Decoding is tolerant, so logs written by older or newer code load:
a field this code does not know is ignored, a kind it does not know (or a record whose values
do not fit the declaration) comes back as ``Unknown`` with its fields in ``fields``.

Field types are as loose as what was ever written: a non-finite float is written as the
string ``"nan"``/``"inf"`` (JSON has no NaN), so such fields are ``float | str``.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from engine.errors import UserError

STRICT_ENV = "LEVIATHAN_STRICT_RECORDS"

Num = float | str | None  # a float, or "nan"/"inf" for a non-finite one
Float = float | None
Int = int | None
Str = str | None
Bool = bool | None
Dict = dict[str, Any] | None
List = list[Any] | None


class Record(msgspec.Struct, kw_only=True):
    """What every record has: ``t`` (unix seconds), ``kind`` and, where it applies, ``step``."""

    t: float = 0.0
    kind: str = ""
    step: Int = None


class Unknown(Record):
    """A kind this code does not declare (or values that do not fit its declaration)."""

    fields: dict[str, Any] = msgspec.field(default_factory=dict)


# -- setup ----------------------------------------------------------------------------------


class Prepare(Record):
    """Progress of the data preparation (engine.data.prepare.Progress.rate), then ``done``."""

    rows: Int = None
    tokens: Int = None
    bytes_done: Int = None
    bytes_total: Int = None
    rows_per_s: Float = None
    tokens_per_s: Float = None
    eta_s: Float = None
    elapsed_s: Float = None
    workers: Int = None
    started: Bool = None
    done: Bool = None
    cached: Bool = None
    path: Str = None


class Data(Record):
    rows: Int = None
    val_rows: Int = None
    by_category: Dict = None
    truncated: Int = None
    dropped_too_long: Int = None
    no_labels: Int = None
    cut_before_tokenizing: Int = None
    too_long: Int = None
    lengths: Dict = None
    tokens: Int = None
    prepared: Str = None
    cached: Bool = None
    encoded_rows: Int = None


class Start(Record):
    base_model: Str = None
    adapter: Str = None
    device: Str = None
    dtype: Str = None
    gradient_checkpointing: Bool = None
    gradient_checkpointing_reason: Str = None
    axolotl_defaults_differ: Any = None
    attention: Str = None
    liger: Bool = None
    trainable_params: Int = None
    total_params: Int = None
    flops_per_token: Float = None
    peak_tflops: Float = None
    max_steps: Int = None
    micro_batch_size: Int = None
    gradient_accumulation_steps: Int = None
    world_size: Int = None
    distributed: Str = None
    num_machines: Int = None
    global_batch: Int = None
    ranks: List = None  # [{rank, local_rank, pid, host}] with several processes
    output_dir: Str = None
    setup_s: Float = None
    pid: Int = None


class TrainBegin(Record):
    max_steps: Int = None
    decode_warm_s: Float = None  # the decode kernels run once before the first step (GPU only)


class Resume(Record):
    from_step: Int = None
    path: Str = None
    reason: Str = None  # "nan_rollback" for a rollback within the run
    lr_scale: Float = None


class Gate(Record):
    """The config's gate let this start through (engine.evaluate.gate; main since issue 31)."""

    run: Str = None  # the 10% run whose checklist was asked
    passed: Bool = None
    checks: List = None
    failing: List = None  # [{id, ...}] of the checks that did not pass
    override: Str = None  # --override-gate's reason


class Curriculum(Record):
    rows_per_epoch: Int = None
    examples: Int = None
    categories: Dict = None
    packing: Any = None
    phases: List = None


# -- training -------------------------------------------------------------------------------


class Step(Record):
    loss: Num = None
    lr: Float = None
    grad_norm: Num = None
    epoch: Float = None
    tokens: Int = None
    tokens_per_s: Float = None
    mfu: Float = None
    s_per_step: Float = None
    max_steps: Int = None
    phase: Str = None  # the curriculum phase (the tests' scripted trainer writes it)


class Eval(Record):
    eval_loss: Num = None
    perplexity: Num = None
    epoch: Float = None
    by_category: dict[str, float] | None = None  # each _category's eval loss (engine.train.eval_categories)


class EarlyStopped(Record):
    """eval_loss stopped improving (early_stopping_patience; main since issue 30): the run ends."""

    eval_loss: Num = None
    best_eval_loss: Num = None
    best_step: Int = None
    patience: Int = None
    threshold: Float = None
    message: Str = None


class Skip(Record):
    """A non-finite step that was skipped (engine.train.guard.nan)."""

    loss: Num = None
    grad_norm: Num = None
    streak: Int = None


class Phase(Record):
    epoch: Float = None
    name: Str = None
    index: Int = None
    start_epoch: Float = None
    end_epoch: Float = None
    weights: Dict = None
    previous: Str = None
    resumed: Bool = None


class Mix(Record):
    phase: Str = None
    examples: Dict = None
    tokens: Dict = None
    phase_examples: Dict = None
    target: Dict = None


class Gpu(Record):
    available: Bool = None
    reason: Str = None
    gpus: List = None  # [{index, name, used_mb, total_mb, util, ...}]
    torch_peak_mb: Float = None
    used_mb: Float = None  # the busiest GPU's, for readers that want one gauge
    total_mb: Float = None
    util: Float = None


class Save(Record):
    path: Str = None
    loss: Num = None
    eval_loss: Num = None
    probes_skipped: Str = None  # why the on-save probes did not run (not a scheduled save, stopping)


class CheckpointRemoved(Record):
    path: Str = None
    reason: Str = None


class Probe(Record):
    path: Str = None
    result: Str = None  # its eval/<suite>-checkpoint-N.json
    cut: Str = None  # cut short by a stop, pause or save (the run acted at this same step)
    planned: Int = None  # the prompts it would have run when cut
    suite: Str = None
    passed: Int = None
    total: Int = None
    score: Float = None
    error: Str = None
    seconds: Float = None
    decode: Str = None  # a 4-bit base's path: on its bf16 copy, or in 4-bit and why (engine.chat.base_copy)
    parts: Dict = None  # seconds: setup, answers (decoding, judging, the result file), release


class Probing(Record):
    """A probe suite in progress on a save (the step waits for it): i of n prompts, time left."""

    suite: Str = None
    i: Int = None
    n: Int = None
    seconds_left: Float = None


class Chat(Record):
    jobs: Int = None
    seconds: Float = None


class Control(Record):
    commands: List = None
    flags: Dict = None
    rank_steps: List = None
    between_steps: Bool = None  # read while probes held the step (they are cut short)


class _PauseFields(Record):
    reason: Str = None  # "disk_full" (paused), what freed it (resumed); none: the operator's key
    free_mb: Float = None


class Paused(_PauseFields):
    pass


class Resumed(_PauseFields):
    pass


# -- alerts, notes and the end --------------------------------------------------------------


class _AlertFields(Record):
    rule: Str = None
    level: Str = None
    message: Str = None
    advice: Str = None
    value: Any = None  # the measured value (health rules)
    threshold: Any = None
    rows: List = None  # bad_rows: the first rows skipped
    where: Str = None  # disk_full: "logs" when the run log's disk is full
    free_mb: Float = None
    need_mb: Float = None
    micro_batch_size: Int = None  # oom: the batch it went on with
    gradient_accumulation_steps: Int = None
    rank: Int = None  # rank_failed
    exitcode: Int = None
    failures: List = None
    category: Str = None  # forgetting: the _category whose eval loss rose


class Alert(_AlertFields):
    pass


class AlertResolved(_AlertFields):
    """The rule is healthy again: rule, step and a message saying the value now."""


class Note(Record):
    message: Str = None
    rows: List = None
    traceback: Str = None
    changes: Dict = None  # config changes on a resume


class _EndFields(Record):
    status: Str = None  # completed, stopped, early_stopped, diverged, failed, error
    message: Str = None
    fix: Str = None  # status error: the UserError's fix, apart from its message
    traceback: Str = None
    checkpoint: Str = None
    phase: Str = None
    reason: Str = None
    rank: Int = None
    exitcode: Int = None

    def user_error(self) -> UserError:
        """The trainer's ``UserError`` (status ``error``), rebuilt in the process that reads its log."""
        if self.fix is not None:
            return UserError(self.message or "", self.fix)
        return UserError.from_text(self.message or "")  # written before ``fix`` was a field of its own


class End(_EndFields):
    pass


class RankError(_EndFields):
    """Rank 0's own failure under the multi-process launcher, which then writes the ``end``."""


KINDS: dict[str, type[Record]] = {
    "prepare": Prepare,
    "data": Data,
    "start": Start,
    "train_begin": TrainBegin,
    "resume": Resume,
    "gate": Gate,
    "curriculum": Curriculum,
    "step": Step,
    "eval": Eval,
    "early_stopped": EarlyStopped,
    "skip": Skip,
    "phase": Phase,
    "mix": Mix,
    "gpu": Gpu,
    "save": Save,
    "checkpoint_removed": CheckpointRemoved,
    "probe": Probe,
    "probing": Probing,
    "chat": Chat,
    "control": Control,
    "paused": Paused,
    "resumed": Resumed,
    "alert": Alert,
    "alert_resolved": AlertResolved,
    "note": Note,
    "end": End,
    "rank_error": RankError,
}

_BASE = frozenset(Record.__struct_fields__)


class RecordError(ValueError):
    """A record that does not match its declaration (raised only in strict mode)."""


def strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def problems(record: dict) -> list[str]:
    """What in ``record`` (as written: ``t``, ``kind``, fields) its declaration does not allow."""
    kind = record.get("kind")
    cls = KINDS.get(kind)
    if cls is None:
        return [f"undeclared record kind {kind!r} (declare it in engine/run/records.py)"]
    extra = sorted(set(record) - set(cls.__struct_fields__))
    if extra:
        return [
            f"{kind!r} record: undeclared field(s) {', '.join(extra)} (declare them in engine/run/records.py)"
        ]
    try:
        msgspec.convert(record, cls)
    except msgspec.ValidationError as e:
        return [f"{kind!r} record: {e}"]
    return []


def check(record: dict) -> None:
    """Strict mode: raise ``RecordError`` for a record its declaration does not allow."""
    if strict() and (found := problems(record)):
        raise RecordError("; ".join(found))


def decode(record: dict | Record) -> Record:
    """The typed record for a dict read from a run log (one already typed is returned as is)."""
    if isinstance(record, Record):
        return record
    cls = KINDS.get(record.get("kind"))
    if cls is not None:
        try:
            return msgspec.convert(record, cls)
        except msgspec.ValidationError:
            pass
    return _unknown(record)


def _unknown(record: dict) -> Unknown:
    t, step = record.get("t"), record.get("step")
    return Unknown(
        t=float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0,
        kind=str(record.get("kind") or ""),
        step=step if isinstance(step, int) and not isinstance(step, bool) else None,
        fields={k: v for k, v in record.items() if k not in _BASE},
    )


def decode_all(records: list[dict]) -> list[Record]:
    return [decode(r) for r in records]


def as_float(value) -> float | None:
    """A numeric field as a float (``"nan"``/``"inf"`` as written for non-finite ones), else None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
