"""Probes: the evaluation suites run on every checkpoint as it is saved (``evaluation.on_save``).

At a save the weights being trained *are* the checkpoint just written, so the suites run on
the training model in memory, on the training thread, right after the save (no second copy
of the base, no loading): the live adapter, in eval mode, through the generation engine,
with everything training could notice put back afterwards (``engine.chat.on_training.training_untouched``:
RNG states, train/eval modes, ``requires_grad``; the engine's caches are freed after). The
pause is measured and left out of tokens/s like a chat.

Each suite's result is written to the run's ``eval/`` (``<suite>-checkpoint-N.json``, the
same file ``leviathan-cockpit eval`` writes), a ``probe`` record goes to the run log
(``suite``, ``passed``, ``total``, ``score``, ``seconds``), and the scores are added to the
checkpoint's marker so retention can keep the best-scoring checkpoint across restarts.
A probe that fails is a ``probe`` record with ``error``: training goes on.

Probes never hold the run hostage: while they run, ``probing`` records (``step``, ``suite``,
``i`` of ``n`` prompts answered, ``seconds_left`` estimated from the pace so far) say so, and
``cut()`` (the callback's: a stop, pause or save asked meanwhile) is asked between tokens; once
it answers, the batch in flight is dropped, the suite's ``probe`` record says ``cut`` (the
reason) with what was judged so far, the suites after it are left out, and no score of a cut
suite goes to the marker (a part of a suite is not comparable with a whole one).

Model-written code (the inference suite's ``code`` expectations) never runs in the training
process: each program goes to the code box (``engine.evaluate.sandbox``), a small launcher
process started by exec (not a fork of the trainer's memory), with the run folder hidden.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from engine.run import checkpoints


class Probes:
    """What ``CockpitCallback.on_save`` calls; ``suites`` empty means none."""

    def __init__(self, config, run_dir: str | Path, log) -> None:
        ev = config.evaluation
        self.config = config
        self.suites = tuple(ev.on_save)
        self.keep_best = ev.keep_best if ev.keep_best != "eval_loss" else None
        self.run_dir = Path(run_dir)
        self.log = log

    def __bool__(self) -> bool:
        return bool(self.suites)

    def run(self, model, tokenizer, path: str, step: int, cut=None) -> dict[str, float | None]:
        """Run every suite on ``model`` (the checkpoint at ``path``); returns suite -> score.

        ``cut()``: None to go on, else why to stop now (``stop``, ``pause``, ``save``)."""
        scores: dict[str, float | None] = {}
        why: list[str] = []

        def should_stop() -> bool:
            if not why and cut is not None and (reason := cut()):
                why.append(reason)
            return bool(why)

        cut_suites = set()
        for suite in self.suites:
            if should_stop():
                break
            t0 = time.perf_counter()
            try:
                data, planned, decode, parts = self._suite(model, tokenizer, path, step, suite, should_stop)
            except Exception as e:  # a probe never takes training down
                self.log.emit(
                    "probe",
                    step=step,
                    path=str(path),
                    suite=suite,
                    error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                    seconds=round(time.perf_counter() - t0, 3),
                )
                scores[suite] = None
                continue
            cut_by = why[0] if data.get("status") == "cut" else None
            if cut_by:
                cut_suites.add(suite)
            scores[suite] = None if cut_by else data["score"]
            self.log.emit(
                "probe",
                step=step,
                path=str(path),
                suite=suite,
                passed=data["passed"],
                total=data["total"],
                score=data["score"],
                seconds=round(time.perf_counter() - t0, 3),
                result=str(self._result_path(suite, path)),  # the answers (engine.evaluate.learned)
                **({"cut": cut_by, "planned": planned} if cut_by else {}),
                **({"decode": decode} if decode else {}),
                parts=parts,
            )
        _add_to_marker(path, {k: v for k, v in scores.items() if k not in cut_suites})
        return scores

    def _result_path(self, suite: str, path) -> Path:
        from engine.run.rundir import eval_dir, result_name

        return eval_dir(self.run_dir) / result_name(suite, path)

    def _suite(
        self, model, tokenizer, path, step: int, suite: str, should_stop
    ) -> tuple[dict, int, str | None, dict]:
        """One suite on the live model, its result file in the run's ``eval/``: (data, cases
        planned, the path a 4-bit base decoded on, where its seconds went)."""
        t0 = time.perf_counter()
        from engine.chat.generate import base_note, release
        from engine.chat.on_training import training_untouched
        from engine.evaluate.evaluate import ResultFile, Settings, run_suite, suite_cases

        settings = Settings.from_config(self.config.evaluation)
        cases = suite_cases(suite, self.config, None)
        progress = _Progress(self.log, step, suite, len(cases))
        header = {
            "model": str(Path(path).resolve()),
            "label": Path(path).name,
            "step": step,
            "run_dir": str(self.run_dir),
            "suite": suite,
            "base": self.config.base_model,
            "adapter": str(path),
            "settings": asdict(settings),
            "probe": True,
        }
        rf = ResultFile(self._result_path(suite, path), header, len(cases))
        t_setup = time.perf_counter()
        with training_untouched(model):
            try:
                data = run_suite(
                    model,
                    tokenizer,
                    suite,
                    cases,
                    settings,
                    rf,
                    on_item=progress.item,
                    hide=[self.run_dir],
                    should_stop=should_stop,
                )
            finally:
                decode = base_note(model)
                t_answers = time.perf_counter()
                release(model)  # the KV cache, the graphs and a 4-bit base's bf16 copy
        t_end = time.perf_counter()
        parts = {
            "setup": round(t_setup - t0, 3),
            "answers": round(t_answers - t_setup, 3),  # decoding, judging, the result file
            "release": round(t_end - t_answers, 3),
        }
        return data, len(cases), decode, parts

    def best_step(self, output_dir: str | Path) -> int | None:
        """The checkpoint with the highest ``keep_best`` probe score (the newest of equals)."""
        if not self.keep_best:
            return None
        return best_probe_step(output_dir, self.keep_best)


class _Progress:
    """``probing`` records while a suite runs: a first one at 0, then at most one a second."""

    def __init__(self, log, step: int, suite: str, n: int) -> None:
        self.log, self.step, self.suite, self.n = log, step, suite, n
        self.i = 0
        self.t0 = self._last = time.perf_counter()
        self._emit(None)

    def item(self, _item: dict) -> None:
        self.i += 1
        now = time.perf_counter()
        if self.i < self.n and now - self._last < 1.0:
            return
        self._last = now
        pace = (now - self.t0) / self.i
        self._emit(round(pace * (self.n - self.i), 1))

    def _emit(self, left: float | None) -> None:
        self.log.emit("probing", step=self.step, suite=self.suite, i=self.i, n=self.n, seconds_left=left)


def probing_line(r: dict) -> str:
    """A ``probing`` record in words (the cockpit's status, headless's line)."""
    left = r.get("seconds_left")
    eta = f", ~{left:.0f}s left" if isinstance(left, (int, float)) else ""
    return f"probing {r.get('suite')} on step {r.get('step')}: {r.get('i')}/{r.get('n')}{eta}"


def best_probe_step(output_dir: str | Path, suite: str) -> int | None:
    complete, _ = checkpoints.scan(output_dir)
    found = None
    for c in complete:
        score = (c.meta.get("probe") or {}).get(suite)
        if isinstance(score, (int, float)) and math.isfinite(score) and (found is None or score >= found[0]):
            found = (score, c.step)
    return found[1] if found else None


def _add_to_marker(path: str | Path, scores: dict) -> None:
    marker = Path(path) / checkpoints.MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return  # removed or torn meanwhile: nothing to annotate
    meta.pop("completed_at", None)
    checkpoints.mark_complete(path, {**meta, "probe": {**(meta.get("probe") or {}), **scores}})
