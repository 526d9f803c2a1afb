"""The `eval` command: arguments, printing, and the lm-eval branch.

The suites themselves are engine/evaluate/evaluate.py (identity, inference) and
engine/evaluate/lmeval.py; the cockpit runs the same functions as jobs.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from engine.evaluate.evaluate import (
    SUITES,
    ResultFile,
    Settings,
    run_suite,
    runs_code,
    suite_cases,
    target_for,
)
from engine.evaluate.lmeval import require, run_lmeval
from engine.evaluate.sandbox import isolation_line
from engine.evaluate.scoring import score_line


def add_eval_args(p) -> None:
    p.add_argument(
        "model", metavar="CHECKPOINT_OR_MODEL", help="a checkpoint-N folder, a merged model folder"
    )
    p.add_argument("--suite", choices=SUITES, default="identity", help="which suite (default identity)")
    p.add_argument(
        "--file",
        metavar="JSONL",
        help="identity prompts or inference suite (default: config's, else built in)",
    )
    p.add_argument(
        "--tasks", nargs="+", metavar="TASK", help="lm-eval tasks (default: the config's lmeval_tasks)"
    )
    p.add_argument("--include-path", metavar="DIR", help="lm-eval: a folder of extra task YAMLs")
    p.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="lm-eval: allow tasks that run model-written code (humaneval)",
    )
    p.add_argument(
        "--limit", type=float, metavar="N", help="lm-eval: at most N examples per task (testing only)"
    )
    p.add_argument(
        "--base", metavar="MODEL", help="base model of a checkpoint (default: from adapter_config.json)"
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="the run the results belong to (default: found from the checkpoint)"
    )
    p.add_argument(
        "--out", metavar="DIR", help="write the JSON result here instead of the run's eval/ folder"
    )
    p.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="tokens per answer (default: config's, 256)"
    )
    p.add_argument("--batch-size", type=int, metavar="N", help="prompts per batch (default: config's, 8)")
    p.add_argument("--quiet", action="store_true", help="print only the score")


def eval_main(args) -> int:
    target = target_for(args.model, args.run_dir, args.out)
    if args.suite == "lmeval":
        return lmeval_main(args, target)
    settings = Settings.from_config(getattr(target.config, "evaluation", None))
    if args.max_new_tokens:
        settings.max_new_tokens = args.max_new_tokens
    if args.batch_size:
        settings.batch_size = args.batch_size
    cases = suite_cases(args.suite, target.config, args.file)  # bad files fail before loading

    from engine.model.loading import load_for_inference

    loaded = load_for_inference(args.model, args.base)

    def show(item: dict) -> None:
        if not args.quiet:
            mark = "PASS" if item["passed"] else "FAIL"
            answer = " ".join(item["answer"].split())[:100]
            why = "; ".join(c["detail"] for c in item["checks"] if not c["passed"])
            print(
                f"{mark} [{item['category']}] {item['id']}: {answer!r}" + (f"  ({why})" if why else ""),
                file=sys.stderr,
            )

    header = {**target.header, "suite": args.suite, "base": loaded.base, "adapter": loaded.adapter}
    header["settings"] = asdict(settings)
    path = target.result_path(args.suite)
    rf = ResultFile(path, header, len(cases))
    if runs_code(cases) and not args.quiet:
        print(isolation_line(), file=sys.stderr)
    hide = [target.run_dir] if target.run_dir else []
    data = run_suite(loaded.model, loaded.tokenizer, args.suite, cases, settings, rf, show, hide=hide)
    if not args.quiet and args.suite == "inference":
        for cat, c in sorted(data["by_category"].items()):
            print(f"  {cat}: {score_line(c['passed'], c['total'])}", file=sys.stderr)
    print(score_line(data["passed"], data["total"]))
    return _say_where(path)


def lmeval_main(args, target) -> int:
    require()
    ev = getattr(target.config, "evaluation", None)
    tasks = args.tasks or (ev.lmeval_tasks if ev else ["humaneval", "truthfulqa_mc"])
    path = target.result_path("lmeval")
    data = run_lmeval(
        args.model,
        tasks,
        out_file=path,
        header=target.header,
        base=args.base,
        include_path=args.include_path,
        allow_code_execution=args.allow_code_execution,
        limit=args.limit,
        batch_size=args.batch_size,
        log=lambda m: print(m, file=sys.stderr),
    )
    for task, t in data["tasks"].items():
        if "value" not in t:
            print(f"{task}: no metric")
        elif "total" in t:
            print(f"{task}: {t['metric']} {score_line(t['passed'], t['total'])}")
        else:
            print(f"{task}: {t['metric']} {t['value']:.4f}")
    return _say_where(path)


def _say_where(path) -> int:
    if path:
        print(f"result: {path}", file=sys.stderr)
    else:
        print(
            "note: no run folder found for this model; pass --run-dir or --out to keep the result",
            file=sys.stderr,
        )
    return 0
