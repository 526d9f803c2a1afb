"""lm-evaluation-harness on a checkpoint or a merged model (optional: ``pip install lm-eval``).

The model (a LoRA checkpoint on its base, a merged model, a vision-language base that
``AutoModelForCausalLM`` cannot load) is loaded by our loader and evaluated by lm-eval's
``hf`` model with generation through our engine (``engine.evaluate.lmeval_engine``, model class
``leviathan``): the same scores as ``lm_eval --model hf`` (the guide's command), its
generation tasks at the engine's speed. The model loads once; tasks run one after another
and the result file is rewritten after each, so a failure keeps the tasks already done.

Tasks that execute model-written code (``humaneval``, ``mbpp``) run only with
``--allow-code-execution``, which also sets ``HF_ALLOW_CODE_EVAL=1`` as the ``evaluate`` library
requires; their programs run in the code box (``engine.evaluate.code_eval``), and other tasks
that run code their own way (``cruxeval``, ``longproc``) are refused. The guide's
``truthfulqa_mc`` (the old harness's name) runs today's ``truthfulqa_mc1`` and ``truthfulqa_mc2``.
"""

from __future__ import annotations

import difflib
import os
import time
from pathlib import Path

from engine.errors import UserError
from engine.run.rundir import atomic_write_json

ALIASES = {"truthfulqa_mc": ["truthfulqa_mc1", "truthfulqa_mc2"]}
# The metric a task is scored by, in this order of preference.
PRIMARY = ("pass@1", "acc", "exact_match", "acc_norm", "f1", "mcc", "bleu_max", "word_perplexity")


def require() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "lm-evaluation-harness is not installed (needed for --suite lmeval)",
            "pip install lm-eval   (or: pip install 'leviathan-cockpit[eval]')",
        ) from None


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's task index; only the local folder when it holds every task (indexing all is slow)."""
    from lm_eval.tasks import TaskManager

    if include_path:
        if not Path(include_path).is_dir():
            raise UserError(
                f"--include-path {include_path}: no such folder", "give a folder of task YAML files"
            )
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include_path)


def resolve_tasks(tasks: list[str], tm) -> list[str]:
    """Task names as lm-eval knows them; an unknown one is a UserError naming it."""
    out = []
    for t in tasks:
        if t in tm.all_tasks or (t.endswith((".yaml", ".yml")) and Path(t).is_file()):
            out.append(t)
        elif t in ALIASES and all(a in tm.all_tasks for a in ALIASES[t]):
            out.extend(ALIASES[t])
        else:
            close = difflib.get_close_matches(t, tm.all_tasks, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "list the tasks with `lm_eval ls tasks`"
            raise UserError(
                f"lm-eval task `{t}` does not exist", hint + " (local task YAMLs: --include-path DIR)"
            )
    return list(dict.fromkeys(out))


def unsafe(tasks: list[str], tm) -> list[str]:
    return [t for t in tasks if ((getattr(tm.task_index.get(t), "cfg", None) or {}).get("unsafe_code"))]


def model_spec(model_path: str, base: str | None = None) -> tuple[dict, dict]:
    """lm-eval model arguments (our loaded model and tokenizer) and what the result records."""
    from engine.chat.decode import core_model
    from engine.model.loading import load_for_inference

    loaded = load_for_inference(model_path, base)
    record = {
        "model": "leviathan",
        "pretrained": type(core_model(loaded.model)).__name__,
        "base": loaded.base,
        "peft": loaded.adapter,
    }
    return {"pretrained": loaded.model, "tokenizer": loaded.tokenizer}, record


def primary_metric(metrics: dict) -> tuple[str, float] | None:
    plain = {
        k.split(",")[0]: v
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and "_stderr" not in k
        and k != "sample_len"
    }
    for name in PRIMARY:
        if name in plain:
            return name, float(plain[name])
    return next(((k, float(v)) for k, v in plain.items()), None)


def run_lmeval(
    model_path: str,
    tasks: list[str],
    *,
    out_file: Path | None,
    header: dict | None = None,
    base: str | None = None,
    include_path: str | None = None,
    allow_code_execution: bool = False,
    limit: float | None = None,
    batch_size: int | str | None = None,
    device: str | None = None,
    log=print,
) -> dict:
    """Run the tasks; returns (and writes, after every task) the result."""
    require()
    import torch

    tm = task_manager(tasks, include_path)
    names = resolve_tasks(tasks, tm)
    _allow_code(names, tm, allow_code_execution)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = batch_size or ("auto" if device.startswith("cuda") else 1)
    args, record = model_spec(model_path, base)

    import lm_eval

    from engine.evaluate.code_eval import boxed_code_eval
    from engine.evaluate.lmeval_engine import model_class

    data = _result_header(header, names, getattr(lm_eval, "__version__", "?"), record, limit)

    def save():
        if out_file is not None:
            atomic_write_json(out_file, data)

    save()
    name = "(loading the model)"
    try:
        lm = model_class().create_from_arg_obj(args, {"batch_size": batch_size, "device": device})
        for i, name in enumerate(names, 1):
            log(f"lm-eval task {i}/{len(names)}: {name}")
            t0 = time.time()
            with boxed_code_eval():
                res = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=[name],
                    task_manager=tm,
                    limit=limit,
                    log_samples=False,
                    confirm_run_unsafe_code=allow_code_execution,
                )
            data["tasks"].update(_task_entries(res, time.time() - t0))
            save()
    except BaseException as e:
        data.update(status="failed", finished=time.time(), error=f"{type(e).__name__}: {e}")
        save()
        _raise_for_user(e, name)
        raise
    data.update(status="completed", finished=time.time())
    save()
    return data


def _allow_code(names: list[str], tm, allowed: bool) -> None:
    """Refuse tasks that run model-written code unless allowed; allow them in lm-eval if so."""
    risky = unsafe(names, tm)
    if risky and not allowed:
        raise UserError(
            f"lm-eval task {', '.join(risky)} runs code written by the model",
            "pass --allow-code-execution to allow it (run it on a machine you can afford to lose)",
        )
    from engine.evaluate.code_eval import unboxed

    outside = unboxed(names, risky)
    if outside:
        raise UserError(
            f"lm-eval task {', '.join(outside)} runs model-written code its own way, outside the code box",
            "leave it out (the boxed code tasks are humaneval* and mbpp*)",
        )
    if allowed:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"


def _result_header(header: dict | None, names: list[str], version: str, record: dict, limit) -> dict:
    return {
        **(header or {}),
        "suite": "lmeval",
        "status": "running",
        "started": time.time(),
        "finished": None,
        "planned": names,
        "lm_eval_version": version,
        "model_args": record,
        "limit": limit,
        "tasks": {},
    }


def _task_entries(res: dict | None, seconds: float) -> dict:
    """Per task of one ``simple_evaluate`` result: its metrics, sample count, primary metric."""
    out = {}
    for task, metrics in (res or {}).get("results", {}).items():
        n = (res.get("n-samples", {}).get(task) or {}).get("effective")
        entry = {"metrics": metrics, "n": n, "seconds": round(seconds, 1)}
        best = primary_metric(metrics)
        if best:
            entry["metric"], entry["value"] = best
            if n:
                entry["passed"], entry["total"] = round(best[1] * n), n
        out[task] = entry
    return out


def _raise_for_user(e: BaseException, name: str) -> None:
    """The failures a user can fix, as a ``UserError``; anything else is left to propagate."""
    if "marked as unsafe" in str(e):
        raise UserError(str(e), "pass --allow-code-execution") from None
    if _is_offline_error(e):
        raise UserError(
            f"lm-eval could not get the data set of task `{name}` ({type(e).__name__}); nothing is downloaded "
            "at run time here",
            "fetch it once where the Hub is reachable (it lands in the datasets cache), or use a local task YAML",
        ) from None


def _is_offline_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(w in text for w in ("offline", "connectionerror", "couldn't reach", "datasetnotfound"))
