"""The one TrainerCallback: trainer events -> run log records, operator commands -> control.

It only translates. Records are appended to the run log and handed to listeners that
must not block; commands are flags read here at step boundaries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from transformers import TrainerCallback

from engine.run import checkpoints
from engine.run.events import RunLog
from engine.train import dist
from engine.train.commands import Agreed, CommandSource


class CockpitCallback(TrainerCallback):
    def __init__(
        self,
        log: RunLog,
        commands: CommandSource,
        *,
        save_total_limit: int | None,
        meta: dict,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        probes=None,
        before_first_step: Callable[[], float | None] | None = None,
    ) -> None:
        self.probes = probes  # engine.evaluate.probes.Probes: suites run on each checkpoint as it is saved
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.log = log
        self.commands = commands
        self.controls = commands.controls
        self.save_total_limit = save_total_limit
        self.meta = meta
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None  # the marker says which step its eval_loss is from
        self.best: tuple[float, int] | None = None  # (eval_loss, step)
        self._mark_t = time.time()
        self._mark_tokens = 0
        self._mark_step = 0
        self._phase_end = time.time()  # end of the last log/eval: a save that follows starts then
        self.status = "completed"
        self._pause_pending = False  # asked: the trainer holds once this step's record is written
        self._held_since: float | None = None  # paused since (None: not paused)
        self._saved_step: int | None = None  # a stop right after a save does not save the step twice
        self._polled = 0.0  # when the control file was last read during probes
        self._polled_after_save: int | None = None  # the save's step whose keys were acted on
        # The decode warm-up, run at the first train begin: its seconds, or None where none ran.
        self.before_first_step = before_first_step
        # When the step being recorded ended (LeviathanTrainer.record_time: a record written a
        # step late keeps its own step's time, so that tokens/s stays true).
        self.clock: Callable[[], float] = time.time

    # -- progress -------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        # Once a process: a NaN rollback's train() again finds the kernels compiled.
        ready, self.before_first_step = self.before_first_step, None
        warm_s = ready() if ready is not None else None
        self._mark_t = time.time()  # the warm-up is not training time
        self._mark_tokens = state.num_input_tokens_seen
        self._mark_step = state.global_step
        warm = {"decode_warm_s": round(warm_s, 2)} if warm_s is not None else {}
        self.log.emit("train_begin", step=state.global_step, max_steps=state.max_steps, **warm)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self._step_record(state, logs)

    def _step_record(self, state, logs) -> None:
        now = self.clock()
        dt = max(now - self._mark_t, 1e-9)
        tokens = state.num_input_tokens_seen
        steps = state.global_step - self._mark_step
        loss = float(logs["loss"])
        self.last_loss = loss
        tps = (tokens - self._mark_tokens) / dt
        self.log.emit(
            "step",
            step=state.global_step,
            loss=loss,
            lr=logs.get("learning_rate"),
            grad_norm=_num(logs.get("grad_norm")),
            epoch=round(state.epoch or 0.0, 4),
            tokens=tokens,
            tokens_per_s=round(tps, 1),
            mfu=round(tps * self.flops_per_token / self.peak_flops, 4) if self.peak_flops else None,
            s_per_step=round(dt / steps, 4) if steps else None,
            max_steps=state.max_steps,
        )
        self._mark_t, self._mark_tokens, self._mark_step = now, tokens, state.global_step
        self._phase_end = time.time()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero or not metrics or "eval_loss" not in metrics:
            return
        loss = float(metrics["eval_loss"])
        self.last_eval_loss = loss
        self.last_eval_step = state.global_step
        if math.isfinite(loss) and (self.best is None or loss < self.best[0]):
            self.best = (loss, state.global_step)
        self.log.emit(
            "eval",
            step=state.global_step,
            eval_loss=loss,
            perplexity=math.exp(loss) if loss < 50 else float("inf"),
            epoch=round(state.epoch or 0.0, 4),
            **_by_category(metrics),
        )
        # Time spent evaluating is not training time.
        self._exclude(float(metrics.get("eval_runtime") or 0.0))
        self._phase_end = time.time()

    def on_save(self, args, state, control, **kwargs):
        dist.barrier()  # every rank's files (its RNG state, its shard) are on disk before the marker
        self._saved_step = state.global_step
        if not state.is_world_process_zero:
            return
        path = f"{args.output_dir}/checkpoint-{state.global_step}"
        checkpoints.mark_complete(
            path,
            {
                **self.meta,
                "step": state.global_step,
                "epoch": state.epoch,
                "loss": self.last_loss,
                "eval_loss": self.last_eval_loss,
                "eval_step": self.last_eval_step,
                "tokens": state.num_input_tokens_seen,
            },
        )
        checkpoints.clear_torn(args.output_dir)  # a complete save: the torn ones set aside can go
        skip = self._probe_skip(args, state) if self.probes else None
        self.log.emit(
            "save",
            step=state.global_step,
            path=path,
            loss=self.last_loss,
            eval_loss=self.last_eval_loss,
            **({"probes_skipped": skip} if skip else {}),
        )
        if self.probes and not skip:  # on the weights just saved, at this step boundary
            self.probes.run(
                kwargs.get("model"),
                kwargs.get("processing_class"),
                path,
                state.global_step,
                cut=lambda: self._probe_cut(state.global_step),
            )
        best_steps = [self.best[1]] if self.best else []
        if self.probes and (probe_best := self.probes.best_step(args.output_dir)) is not None:
            best_steps.append(probe_best)
        for removed in checkpoints.retain(args.output_dir, self.save_total_limit, best_steps):
            self.log.emit("checkpoint_removed", step=state.global_step, path=str(removed))
        self._exclude(time.time() - self._phase_end)  # saving (and probing) is not training time

    def _probe_skip(self, args, state) -> str | None:
        """Why the probes do not run at this save (None: they do). Only the saves ``save_steps``
        schedules and the last step's are probed: a best-eval save, a manual save or a stop's
        would run the suites again a few steps after the last ones, holding the run meanwhile."""
        if self.controls.stop.is_set():
            return "stopping"
        every = int(getattr(state, "save_steps", 0) or args.save_steps or 0)
        scheduled = str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps" and every > 0
        if scheduled and state.global_step % every == 0:
            return None
        if state.max_steps and state.global_step >= state.max_steps:
            return None
        return "not a scheduled save"

    def _probe_cut(self, step: int) -> str | None:
        """A key that cuts running probes short: the run acts on it once they stop (``_after_save``)."""
        c = self.controls
        if time.monotonic() - self._polled > 0.2:
            self._polled = time.monotonic()
            if commands := self.commands.read_file():  # rank 0 (probes run there), no collective
                self.log.emit("control", step=step, commands=commands, between_steps=True)
        for name, event in (("stop", c.stop), ("pause", c.pause), ("save", c.save_now)):
            if event.is_set():
                return name
        return None

    # -- commands -------------------------------------------------------------------------

    def on_step_end(self, args, state, control, **kwargs):
        self._run_jobs(state, kwargs)
        agreed = self.commands.poll(state.global_step)  # every rank, the same flags
        if agreed.pause and not agreed.stop:
            # Pause once this step's record is written (``hold``), so that the screen shows the
            # step the run is paused at; what is asked meanwhile acts on this same step.
            control.should_log = True
            self._pause_pending = True
        self._apply(agreed, state, control)
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True  # the last step is always kept, whatever save_steps says
        return control

    def pauses_here(self) -> bool:
        """This step boundary will hold (``hold``): its record is to be written before it."""
        return self._pause_pending or self._held_since is not None

    def hold(self, trainer) -> bool:
        """The trainer's pause at a step boundary, after its log, eval and save (every rank,
        together). Waits until resumed or stopped, answering chat meanwhile; True when a save or
        an eval asked while paused is to run now (the trainer runs the boundary again and calls
        back, still paused), or a stop's checkpoint."""
        state, control = trainer.state, trainer.control
        if self._after_save(trainer):
            return True
        if not self._pause_pending and self._held_since is None:
            return False
        if self._held_since is None:
            self._pause_pending = False
            self._held_since = time.time()
            self.log.emit("paused", step=state.global_step)
        jobs = {"model": trainer.model, "processing_class": trainer.processing_class}
        t0 = time.time()
        agreed = self.commands.wait_paused(
            state.global_step, between=lambda: self._run_jobs(state, jobs, paused=True)
        )
        self._exclude(time.time() - t0)  # paused time is not training time (a save's is its own)
        self._phase_end = time.time()
        self._apply(agreed, state, control)
        if agreed.pause and not agreed.stop:
            return True  # a save or an eval now; paused again after it
        self._held_since = None
        if not agreed.stop:
            self.log.emit("resumed", step=state.global_step)
        return bool(control.should_save or control.should_evaluate)

    def _after_save(self, trainer) -> bool:
        """Keys pressed while this boundary's save (and its probes) ran act here, not a step later
        (a step of the guide's config is seconds long): a pause holds at the step just saved, a
        stop ends there (its checkpoint is written), a save says the step is saved already, and
        chat asked meanwhile is answered. Every rank polls once per save, probed or not (a
        collective at the same point: each knows the step it saved; only rank 0 has ``probes``).
        True: an eval asked meanwhile runs now (this boundary again)."""
        state, control = trainer.state, trainer.control
        step = state.global_step
        if self._saved_step != step or self._polled_after_save == step or control.should_training_stop:
            return False  # no save here, keys already read after it, or the run is ending (a stop's save)
        self._polled_after_save = step
        self._run_jobs(state, {"model": trainer.model, "processing_class": trainer.processing_class})
        agreed = self.commands.poll(step)
        if agreed.pause and not agreed.stop and self._held_since is None and self._mark_step == step:
            self._pause_pending = True  # else (this step not logged) at the next step, logged, as ever
        self._apply(agreed, state, control)
        return bool(control.should_evaluate) and not agreed.stop

    def _apply(self, agreed: Agreed, state, control):
        c = self.controls
        if agreed.save and c.take(c.save_now):
            if self._saved_step == state.global_step:  # asked again while paused: nothing new to keep
                self.log.emit(
                    "note", step=state.global_step, message=f"checkpoint-{state.global_step} is saved already"
                )
            else:
                control.should_save = True
        if agreed.eval and c.take(c.eval_now):
            control.should_evaluate = True
        if agreed.stop:
            self.status = "stopped"
            control.should_save = control.should_save or self._saved_step != state.global_step
            control.should_training_stop = True
        return control

    def _exclude(self, seconds: float) -> None:
        """Leave time spent not training out of the next tokens/s (the token count is untouched)."""
        self._mark_t += max(seconds, 0.0)

    def on_train_end(self, args, state, control, **kwargs):
        self.controls.close_jobs("training has ended")

    def _run_jobs(self, state, kwargs, paused: bool = False) -> None:
        # Chat jobs: on this thread, between optimizer steps, with the model in memory.
        t0 = time.time()
        n = self.controls.run_jobs(
            model=kwargs.get("model"), tokenizer=kwargs.get("processing_class"), step=state.global_step
        )
        if n:
            seconds = time.time() - t0
            if not paused:  # paused time is left out as a whole
                self._exclude(seconds)  # chat time is not training time
            self.log.emit("chat", step=state.global_step, jobs=n, seconds=round(seconds, 3))


def _by_category(metrics) -> dict:
    """``by_category`` (category -> eval loss, engine.train.eval_categories) where the eval has it."""
    cats = metrics.get("eval_by_category")
    return {"by_category": {k: float(v) for k, v in cats.items()}} if cats else {}


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
