"""The cockpit's messages: run-log records turned into what the panels handle.

Sources only fill a queue; the app drains it on a timer and posts these messages to every
panel (``bubble=False``: each panel handles the kinds it cares about, nothing climbs the
DOM). Loss points are never coalesced: every one goes on the chart. Gauges are: a newer GPU
sample or skipped-line count replaces an older one still waiting in a panel's queue
(``can_replace``), so a busy panel draws the latest value once instead of every stale one.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from engine.run import records as declared


class _OneRecord:
    """A message that carries one run-log record: ``record`` as written, ``typed`` as declared.

    Decoded once: ``to_messages`` asks before the app copies the message to each panel, and the
    copies share it (decoding costs a few microseconds a record; a long run's log has millions).
    """

    record: dict

    @property
    def typed(self) -> declared.Record:
        if "_typed" not in self.__dict__:
            self.__dict__["_typed"] = declared.decode(self.record)
        return self.__dict__["_typed"]


@dataclass
class StepsLogged(Message, bubble=False):
    """Step records in log order (loss, lr, grad_norm, epoch, tokens_per_s, ...)."""

    records: list[dict]

    @property
    def typed(self) -> list[declared.Record]:
        if "_typed" not in self.__dict__:  # decoded once, as _OneRecord's
            self.__dict__["_typed"] = declared.decode_all(self.records)
        return self.__dict__["_typed"]


@dataclass
class EvalLogged(_OneRecord, Message, bubble=False):
    record: dict


@dataclass
class CheckpointSaved(_OneRecord, Message, bubble=False):
    record: dict


@dataclass
class ProbeScored(_OneRecord, Message, bubble=False):
    record: dict  # a `probe` record: a suite's score on a saved checkpoint


@dataclass
class CheckpointRemoved(_OneRecord, Message, bubble=False):
    record: dict


@dataclass
class AlertRaised(_OneRecord, Message, bubble=False):
    """An ``alert`` record: rule, level, message, advice (from ``engine/train/health.py`` and the engine)."""

    record: dict


@dataclass
class AlertResolved(_OneRecord, Message, bubble=False):
    """An ``alert_resolved`` record: the rule is healthy again (rule, step, the value now)."""

    record: dict


@dataclass
class RunChanged(_OneRecord, Message, bubble=False):
    """A record about the run's course: start, train_begin, data, resume, paused, resumed,
    phase and mix (curriculum), note, end."""

    record: dict


@dataclass
class GpuSampled(Message, bubble=False):
    """One GPU sample: ``gpus`` as ``engine.model.gpu.sample()`` gives them, and torch's own peak."""

    gpus: list[dict]
    torch_peak_mb: float | None = None
    source: str = "log"
    """``log``: a ``gpu`` record of the run; ``local``: sampled by this process."""
    reason: str = ""
    """Why there are no GPUs to show (``engine.model.gpu``'s "no NVIDIA GPU: ..."), when there are none."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


@dataclass
class LinesSkipped(Message, bubble=False):
    """Torn or foreign lines skipped in a followed run log so far (a running count)."""

    count: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LinesSkipped)


@dataclass
class WriterState(Message, bubble=False):
    """Whether the process writing an attached run log is alive (its run lock's pid)."""

    alive: bool

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, WriterState)


@dataclass
class ControlRequested(Message, bubble=False):
    """The operator asked for something that happens at the next step boundary."""

    action: str
    """pause, resume, save, eval or stop."""


@dataclass
class OpenCheckpoint(Message):
    """A checkpoint chosen in the table: the app hands it to the chat pane."""

    path: str


@dataclass
class ShipRequested(Message):
    """A post-training step asked for (the checkpoint table's M, the checklist's g): the app
    opens the ship menu with ``action`` highlighted."""

    action: str
    """merge, quantize, ollama, vllm, push_dry or push."""
    checkpoint: str | None = None
    """The checkpoint to merge; None: the run's best (lowest eval loss), else its newest."""


@dataclass
class JobEnded(Message, bubble=False):
    """A background job (engine.run.jobs) finished, well or not: re-measure what it may have made."""

    job: object


_RUN_KINDS = {
    "start",
    "train_begin",
    "data",
    "prepare",
    "resume",
    "paused",
    "resumed",
    "phase",
    "probing",
    "mix",
    "curriculum",
    "note",
    "end",
}


def to_messages(records: list[dict]) -> list[Message]:
    """Messages for a batch of records, in log order; runs of steps become one message.

    Only the newest GPU sample of a batch is kept: the panel shows the latest gauge.
    """
    out: list[Message] = []
    steps: list[dict] = []
    gpu: dict | None = None
    for r in records:
        kind = r.get("kind")
        if kind == "step":
            steps.append(r)
            continue
        if kind == "gpu":
            gpu = r
            continue
        if steps:
            out.append(StepsLogged(steps))
            steps = []
        if kind == "eval":
            out.append(EvalLogged(r))
        elif kind == "save":
            out.append(CheckpointSaved(r))
        elif kind == "probe":
            out.append(ProbeScored(r))
        elif kind == "checkpoint_removed":
            out.append(CheckpointRemoved(r))
        elif kind == "alert":
            out.append(AlertRaised(r))
        elif kind == "alert_resolved":
            out.append(AlertResolved(r))
        elif kind in _RUN_KINDS:
            out.append(RunChanged(r))
    if steps:
        out.append(StepsLogged(steps))
    if gpu is not None:
        out.append(gpu_message(gpu))
    for m in out:
        getattr(m, "typed", None)  # decoded here, once for every panel's copy
    return out


def gpu_message(record: dict, source: str = "log") -> GpuSampled:
    """A ``gpu`` record (engine.model.gpu.GpuSampler) as a message."""
    r = declared.decode(record)
    if not isinstance(r, declared.Gpu):
        return GpuSampled([], None, source, "")
    return GpuSampled(
        [g for g in r.gpus or [] if isinstance(g, dict)],
        r.torch_peak_mb,
        source,
        r.reason or "",
    )
