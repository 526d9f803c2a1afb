"""lm-eval's code tasks with every program run in the code box.

lm-eval 0.4's ``humaneval*`` and ``mbpp*`` tasks score through the ``evaluate`` library's
``code_eval`` metric (``evaluate.load("code_eval")`` at the import of the task's ``utils.py``),
which runs each program in a ``multiprocessing`` child of the evaluating process with the
user's rights and only a ``reliability_guard`` (and needs the metric's script from the Hub).
While ``boxed_code_eval()`` is entered, ``evaluate.load("code_eval")`` gives ``CodeEval``
instead: the same ``compute`` (pass@k by the unbiased estimator of Chen et al. 2021, and the
per-candidate results), each program run by ``engine.evaluate.sandbox.run_box``.

Other tasks marked unsafe (``cruxeval``, ``longproc``) run code their own way, outside any box:
``unboxed`` names them so that they are refused.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from engine.evaluate.sandbox import outcome, run_box

BOXED = ("humaneval", "mbpp")  # task-name prefixes whose code goes through `code_eval`
# lm-eval's families that run code their own way; by name too, since a group (`longproc`)
# is not marked unsafe itself.
OWN_WAY = ("cruxeval", "longproc")


def unboxed(tasks: list[str], unsafe: list[str] | None = None) -> list[str]:
    """Of ``tasks``, those whose code would run outside the box (``unsafe``: marked so)."""
    marked = tasks if unsafe is None else unsafe
    return [t for t in tasks if (t in marked and not t.startswith(BOXED)) or t.startswith(OWN_WAY)]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k samples out of n (c of them correct) is correct."""
    if n - c < k:
        return 1.0
    p = 1.0
    for i in range(n - c + 1, n + 1):
        p *= 1.0 - k / i
    return 1.0 - p


class CodeEval:
    """``evaluate``'s ``code_eval`` metric (its ``compute`` signature and results), boxed."""

    name = "code_eval"

    def compute(self, references, predictions, k=(1, 10, 100), num_workers=4, timeout=3.0):
        if os.getenv("HF_ALLOW_CODE_EVAL") != "1":
            raise ValueError("code_eval runs model-written code: set HF_ALLOW_CODE_EVAL=1 to allow it")
        jobs = [
            (task, j, cand + "\n" + test)
            for task, (cands, test) in enumerate(zip(predictions, references, strict=True))
            for j, cand in enumerate(cands)
        ]
        with ThreadPoolExecutor(max(1, int(num_workers))) as pool:
            done = list(pool.map(lambda job: _check(*job, float(timeout)), jobs))
        results = defaultdict(list)
        for task, j, res in done:
            results[task].append((j, res))
        total = [len(results[t]) for t in range(len(predictions))]
        correct = [sum(r["passed"] for _, r in results[t]) for t in range(len(predictions))]
        ks = [k] if isinstance(k, int) else list(k)
        scores = {
            f"pass@{kk}": sum(pass_at_k(n, c, kk) for n, c in zip(total, correct, strict=True)) / len(total)
            for kk in ks
            if total and all(n >= kk for n in total)
        }
        return scores, dict(results)


def _check(task: int, j: int, program: str, timeout: float) -> tuple[int, int, dict]:
    r = run_box(program, timeout)
    ok = r.get("exit") == 0 and not r.get("killed") and not r.get("setup_error")
    result = (
        "passed" if ok else "timed out" if r.get("killed") == "timeout" else "failed: " + outcome(r, timeout)
    )
    return task, j, {"task_id": task, "passed": ok, "result": result, "completion_id": j}


@contextlib.contextmanager
def boxed_code_eval():
    """``evaluate.load("code_eval")`` gives ``CodeEval`` (also in task modules already loaded)."""
    import evaluate

    real = evaluate.load

    def load(path, *args, **kwargs):
        return CodeEval() if str(path).rstrip("/").endswith("code_eval") else real(path, *args, **kwargs)

    evaluate.load = load
    swapped = _swap_loaded()
    try:
        yield
    finally:
        evaluate.load = real
        for module, attr, value in swapped:
            setattr(module, attr, value)


def _swap_loaded() -> list[tuple]:
    """Task utils imported before (their metric loaded at import): boxed too, put back after."""
    swapped = []
    for module in list(sys.modules.values()):
        for attr in ("compute_", "pass_at_k"):
            # The module's own dict: getattr on a lazy module would import its submodules.
            value = getattr(module, "__dict__", {}).get(attr) if module is not None else None
            if getattr(value, "name", None) == "code_eval" and not isinstance(value, CodeEval):
                swapped.append((module, attr, value))
                setattr(module, attr, CodeEval())
    return swapped
