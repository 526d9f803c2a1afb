"""Where a chat runs: what the chat pane talks to (``ChatBackend``), with two kinds.

- ``StandaloneBackend``: the model loaded in this process for chatting only (``leviathan-cockpit
  chat``, or after training). Requests run one at a time on a worker thread it owns.
- ``TrainingBackend``: during training. Requests become jobs on ``Controls``; the training
  thread runs them at its next step boundary on the very model it trains (see
  ``engine.chat.on_training.chat_on_training_model``), then carries on. The UI never waits: results
  come back through the sink. Once training has ended it hands requests to a standalone
  backend on the same base (loaded on first use).

A sink receives ``Started``/``Delta``/``Done``/``Failed`` (engine.chat.chat) from the thread that
generates; it must return at once (post a message, put on a queue).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from engine.chat.adapters import Adapters
from engine.chat.chat import BASE, LIVE, Done, Failed, Request, Sink, Started, generate
from engine.chat.on_training import chat_on_training_model, explain_failure, free_memory
from engine.errors import UserError
from engine.run import checkpoints
from engine.run.rundir import RunDir, run_config_raw


@dataclass
class Target:
    key: str  # "base", "live" or a checkpoint folder
    label: str
    step: int | None = None


def checkpoint_targets(output_dir: str | Path | None) -> list[Target]:
    """Complete checkpoints of a run, newest first."""
    if not output_dir:
        return []
    complete, _ = checkpoints.scan(output_dir)
    return [Target(str(c.path), c.path.name, c.step) for c in reversed(complete)]


class ChatBackend:
    """What the chat pane needs. Subclasses fill in ``submit`` and ``targets``.

    Attributes:
        base: the base model's name or folder (shown in the pane, written to transcripts).
        run_dir: the run folder; transcripts go to ``run_dir/chat/``. None: not saved.
        chat_config: the run config's ``chat`` section (system prompt, presets, defaults) or None.
        default_target: the target preselected in the pane.
    """

    base: str = ""
    run_dir: Path | None = None
    chat_config = None
    default_target: str = BASE

    def targets(self) -> list[Target]:
        raise NotImplementedError

    def submit(self, request: Request, sink: Sink) -> None:
        """Start answering ``request``; returns at once. Results arrive at ``sink``."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class StandaloneBackend(ChatBackend):
    """A model loaded for chat alone. The first request (or ``load()``) loads it.

    Args:
        path: a checkpoint folder, a model folder or a cached hub id.
        base: the base model for a checkpoint (default: from its adapter_config.json).
        run_dir: where transcripts go (None: not saved).
        output_dir: a run's checkpoint folder, listed as targets (default: the checkpoint's parent).
        keep: how many checkpoints stay loaded as adapters beside the first.
    """

    def __init__(
        self,
        path: str,
        base: str | None = None,
        *,
        run_dir: str | Path | None = None,
        output_dir: str | Path | None = None,
        chat_config=None,
        keep: int = 3,
        device: str | None = None,
    ) -> None:
        from engine.model.loading import resolve

        self.path = path
        base_name, adapter = resolve(path, base)  # bad paths fail here, before any loading
        self.base_arg = base
        self.base = base_name
        self.adapter = adapter
        self.default_target = adapter or BASE
        self.output_dir = Path(output_dir) if output_dir else (Path(adapter).parent if adapter else None)
        self.run_dir = Path(run_dir) if run_dir else None
        self.chat_config = chat_config
        self.keep = keep
        self.device = device
        self.loaded = None
        self.adapters: Adapters | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._load_lock = threading.Lock()

    def targets(self) -> list[Target]:
        out = [Target(BASE, "base")]
        listed = checkpoint_targets(self.output_dir)
        out.extend(listed)
        if self.adapter and all(Path(t.key).resolve() != Path(self.adapter).resolve() for t in listed):
            out.insert(1, Target(self.adapter, Path(self.adapter).name))
        return out

    def load(self):
        """Load the model (once); raises UserError on bad input."""
        with self._load_lock:
            if self.loaded is None:
                from engine.model.loading import load_for_inference

                loaded = load_for_inference(self.path, self.base_arg, device=self.device)
                adapters = Adapters(loaded.model, loaded.base, live=None, keep=self.keep + 1)
                if loaded.adapter:
                    # load_for_inference names the first adapter "default"; it stays loaded.
                    adapters.loaded[str(Path(loaded.adapter).resolve())] = "default"
                self.loaded, self.adapters = loaded, adapters
            return self.loaded

    def run(self, request: Request, sink: Sink) -> Done | None:
        """Answer on the calling thread. Bad input and failures go to the sink as ``Failed``."""
        import time

        t0 = time.perf_counter()
        try:
            request.settings.check()
            if LIVE in request.targets:
                raise UserError("`live` weights exist only during training", "pick a checkpoint or base")
            loaded = self.load()
            sink(Started(request.id, list(request.targets)))
            self.adapters.notes = []
            names = self.adapters.names(request.targets)
            answers = generate(
                self.adapters.model, loaded.tokenizer, request, names, sink, self.adapters.notes
            )
            self.adapters.trim()
            done = Done(request.id, answers, None, round(time.perf_counter() - t0, 3), self.adapters.notes)
            sink(done)
            return done
        except Exception as e:
            free_memory()
            sink(explain_failure(e, request.id))
            return None

    def submit(self, request: Request, sink: Sink) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="chat", daemon=True)
            self._thread.start()
        self._queue.put((request, sink))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self.run(*item)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)


class ChatJob:
    """A request waiting for the training thread; ``Controls.run_jobs`` calls it there."""

    def __init__(self, request: Request, sink: Sink, base_name: str) -> None:
        self.request, self.sink, self.base_name = request, sink, base_name

    def __call__(self, model=None, tokenizer=None, step=None, **_) -> None:
        if model is None or tokenizer is None:
            self.sink(
                Failed(
                    self.request.id,
                    "the trainer offered no model to chat with",
                    "chat after training",
                    "error",
                )
            )
            return
        chat_on_training_model(model, tokenizer, self.request, self.sink, base_name=self.base_name, step=step)

    def cancel(self, reason: str) -> None:
        self.sink(
            Failed(self.request.id, f"not answered: {reason}", "ask again: it now runs on a checkpoint")
        )


class TrainingBackend(ChatBackend):
    """Chat with the run being trained, on its own model in memory.

    Args:
        controls: the run's ``Controls`` (the same object given to ``engine.train.train.run``).
        base: the run's base model (``config.base_model``).
        output_dir: the run's checkpoint folder (``config.output_dir``), listed as targets.
        run_dir: the run folder (transcripts go to ``run_dir/chat/``).
        chat_config: the run config's ``chat`` section.
    """

    def __init__(self, controls, *, base: str, output_dir, run_dir=None, chat_config=None) -> None:
        from engine.model.model import resolve_base

        self.controls = controls
        self.base = resolve_base(base)
        self.output_dir = Path(output_dir)
        self.run_dir = Path(run_dir) if run_dir else None
        self.chat_config = chat_config
        self.default_target = LIVE
        self._after: StandaloneBackend | None = None

    @property
    def live(self) -> bool:
        return not self.controls.jobs_closed.is_set()

    def targets(self) -> list[Target]:
        head = [Target(LIVE, "live weights")] if self.live else []
        return [*head, Target(BASE, "base"), *checkpoint_targets(self.output_dir)]

    def submit(self, request: Request, sink: Sink) -> None:
        try:
            request.settings.check()
        except UserError as e:
            sink(Failed(request.id, e.message, e.fix))
            return
        if self._send(request, sink):
            return
        # Training is over: the same question goes to a standalone model of the same base.
        if LIVE in request.targets:
            sink(Failed(request.id, "training has ended: the live weights are gone", "pick a checkpoint"))
            return
        if self._after is None:
            self._after = StandaloneBackend(
                self.base, run_dir=self.run_dir, output_dir=self.output_dir, chat_config=self.chat_config
            )
        self._after.submit(request, sink)

    def _send(self, request: Request, sink: Sink) -> bool:
        """Hand the request to the trainer; False when training has ended."""
        return self.controls.submit(ChatJob(request, sink, self.base))

    def close(self) -> None:
        if self._after is not None:
            self._after.close()


def run_chat_config(run_dir: str | Path | None):
    """The ``chat`` section of a run's resolved config (None when there is none)."""
    if not run_dir:
        return None
    if not RunDir(run_dir).config.is_file():
        return None
    from engine.config.config import ChatConfig

    try:
        return ChatConfig.model_validate(run_config_raw(run_dir).get("chat") or {})
    except Exception:
        return None
