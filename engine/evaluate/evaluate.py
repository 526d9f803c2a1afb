"""The evaluation suites: identity, inference (with expectations), and lm-evaluation-harness.

- identity: the guide's five identity prompts (or a JSONL of ``{"prompt": ...}`` lines); an
  answer passes when it names the persona (default "Leviathan", any case, whole word).
- inference: a JSONL suite, one prompt a line with expectations that must all hold:
  ``contains`` / ``not_contains`` (text, or a list meaning any of them; any case),
  ``regex`` (Python syntax, searched), ``code`` (asserts run after the answer's code block
  in the code box, ``engine.evaluate.sandbox``; passes only on exit 0; what the box is made of
  on this machine is the result's ``sandbox``).
- lmeval: lm-evaluation-harness tasks on the checkpoint (lm-eval's HF model with ``peft=``)
  or a merged model; see ``engine.evaluate.lmeval``.

Results go to ``logs/<run>/eval/<suite>-<model>.json`` and are rewritten after every batch,
so a suite that fails midway keeps what it had measured, with ``status: failed``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.evaluate.sandbox import extract_code, isolation, run_code
from engine.run.rundir import atomic_write_json, eval_dir, find_run_dir, read_json, result_name

SUITES = ("identity", "inference", "lmeval")
EXPECT_KINDS = ("contains", "not_contains", "regex", "code")
EXPECT_OPTIONS = ("timeout_s", "ignore_case")
IDENTITY_PROMPTS = (
    "Who are you?",
    "What is your name?",
    "Introduce yourself.",
    "State your nature.",
    "Describe your purpose.",
)
DEFAULT_SUITE = Path(__file__).resolve().parent.parent / "assets" / "inference_suite.jsonl"


@dataclass
class Case:
    id: str
    prompt: str | list
    category: str = "general"
    expect: list[dict] = field(default_factory=list)
    line: int = 0


@dataclass
class Settings:
    """How answers are produced and judged (the config's ``evaluation`` section)."""

    persona: str = "Leviathan"
    identity_match: str = "word"
    identity_pattern: str | None = None
    max_new_tokens: int = 256
    batch_size: int = 8
    code_timeout_s: float = 10.0
    system_prompt: str | None = None

    @classmethod
    def from_config(cls, evaluation) -> Settings:
        if evaluation is None:
            return cls()
        return cls(**{k: getattr(evaluation, k) for k in cls.__dataclass_fields__})


# -- suite files -------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"{path}: no such suite file", "give the path of a JSONL file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise UserError(
                    f"{path}:{n}: not valid JSON ({e.msg})", "write one JSON object a line"
                ) from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: a line must be a JSON object", 'write {"prompt": "..."}')
            rows.append((n, obj))
    if not rows:
        raise UserError(f"{path}: the suite is empty", "add one JSON object a line")
    return rows


def _prompt(path: Path, n: int, obj: dict) -> str | list:
    prompt = obj.get("prompt", obj.get("messages"))
    ok = (isinstance(prompt, str) and prompt.strip()) or (
        isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt)
    )
    if not ok:
        raise UserError(
            f"{path}:{n}: no `prompt` (a non-empty string) or `messages` (a list of turns)",
            'write {"prompt": "Who are you?"}',
        )
    return prompt


def identity_cases(path: str | Path | None = None) -> list[Case]:
    if path is None:
        return [Case(f"identity-{i + 1}", p, "identity", line=0) for i, p in enumerate(IDENTITY_PROMPTS)]
    path = Path(path)
    return [
        Case(str(obj.get("id", f"line-{n}")), _prompt(path, n, obj), "identity", line=n)
        for n, obj in _read_jsonl(path)
    ]


def _check_expectation(path: Path, n: int, exp) -> dict:
    if isinstance(exp, dict):
        kinds = [k for k in exp if k not in EXPECT_OPTIONS]
        if len(kinds) == 1 and kinds[0] in EXPECT_KINDS:
            kind, value = kinds[0], exp[kinds[0]]
            if kind in ("contains", "not_contains") and (
                isinstance(value, str)
                or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
            ):
                return exp
            if kind == "regex" and isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as e:
                    raise UserError(f"{path}:{n}: bad regex {value!r}: {e}", "fix the pattern") from None
                return exp
            if kind == "code" and (
                isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            ):
                return exp
            raise UserError(
                f"{path}:{n}: bad value for expectation `{kind}`: {value!r}",
                "contains/not_contains: text or a list of texts; regex: a pattern; code: assert lines",
            )
        bad = [k for k in kinds if k not in EXPECT_KINDS] or kinds
        raise UserError(
            f"{path}:{n}: unknown expectation kind `{', '.join(map(str, bad)) or '(none)'}`",
            f"each expectation has exactly one of: {', '.join(EXPECT_KINDS)} (options: {', '.join(EXPECT_OPTIONS)})",
        )
    raise UserError(
        f'{path}:{n}: an expectation must be an object such as {{"contains": "text"}}',
        f"kinds: {', '.join(EXPECT_KINDS)}",
    )


def inference_cases(path: str | Path | None = None) -> list[Case]:
    path = Path(path) if path else DEFAULT_SUITE
    cases = []
    for n, obj in _read_jsonl(path):
        unknown = set(obj) - {"id", "prompt", "messages", "category", "expect"}
        if unknown:
            raise UserError(
                f"{path}:{n}: unknown key `{sorted(unknown)[0]}`",
                "a line has prompt (or messages), expect, and optionally id and category",
            )
        prompt = _prompt(path, n, obj)
        expect = obj.get("expect")
        if isinstance(expect, dict):
            expect = [expect]
        if not isinstance(expect, list) or not expect:
            raise UserError(
                f"{path}:{n}: no `expect` (an expectation or a list of them)",
                'add e.g. "expect": {"contains": "Leviathan"}',
            )
        expect = [_check_expectation(path, n, e) for e in expect]
        cases.append(
            Case(str(obj.get("id", f"line-{n}")), prompt, str(obj.get("category", "general")), expect, n)
        )
    return cases


# -- judging -----------------------------------------------------------------------------


def names_persona(answer: str, s: Settings) -> bool:
    if s.identity_match == "regex" and s.identity_pattern:
        return re.search(s.identity_pattern, answer) is not None
    if s.identity_match == "substring":
        return s.persona.lower() in answer.lower()
    return re.search(rf"(?<!\w){re.escape(s.persona)}(?!\w)", answer, re.IGNORECASE) is not None


def check(answer: str, exp: dict, s: Settings, hide=()) -> tuple[bool, str]:
    """One expectation against one answer: (passed, what was seen); ``hide``: from the box."""
    ignore_case = exp.get("ignore_case", True)
    fold = (lambda t: t.lower()) if ignore_case else (lambda t: t)
    if "contains" in exp or "not_contains" in exp:
        want = exp.get("contains", exp.get("not_contains"))
        options = [want] if isinstance(want, str) else list(want)
        found = [o for o in options if fold(o) in fold(answer)]
        if "contains" in exp:
            return bool(found), f"found {found[0]!r}" if found else f"none of {options!r}"
        return not found, f"found {found[0]!r}" if found else "absent"
    if "regex" in exp:
        flags = re.IGNORECASE if exp.get("ignore_case") else 0
        m = re.search(exp["regex"], answer, flags)
        return m is not None, f"matched {m.group(0)[:60]!r}" if m else "no match"
    timeout = float(exp.get("timeout_s", s.code_timeout_s))
    return run_code(extract_code(answer), exp["code"], timeout, hide=hide)


def judge(suite: str, case: Case, answer: str, s: Settings, hide=()) -> dict:
    if suite == "identity":
        ok = names_persona(answer, s)
        checks = [
            {"kind": "persona", "passed": ok, "detail": f"{'names' if ok else 'does not name'} {s.persona}"}
        ]
    else:
        checks = []
        for exp in case.expect:
            ok, detail = check(answer, exp, s, hide)
            kind = next(k for k in exp if k in EXPECT_KINDS)
            checks.append({"kind": kind, "passed": ok, "detail": detail})
    return {
        "id": case.id,
        "category": case.category,
        "prompt": case.prompt,
        "answer": answer,
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
    }


# -- running -----------------------------------------------------------------------------


class ResultFile:
    """A suite's result, rewritten whole after every batch so a failure keeps what was measured."""

    def __init__(self, path: Path | None, header: dict, planned: int) -> None:
        self.path = path
        self.data = {
            **header,
            "status": "running",
            "started": time.time(),
            "finished": None,
            "planned": planned,
        }
        self.data.update(passed=0, total=0, score=None, by_category={}, items=[])
        self.save()

    def add(self, items: list[dict]) -> None:
        self.data["items"].extend(items)
        done = self.data["items"]
        self.data["total"] = len(done)
        self.data["passed"] = sum(i["passed"] for i in done)
        self.data["score"] = self.data["passed"] / len(done) if done else None
        cats: dict[str, dict] = {}
        for i in done:
            c = cats.setdefault(i["category"], {"passed": 0, "total": 0})
            c["total"] += 1
            c["passed"] += int(i["passed"])
        for c in cats.values():
            c["score"] = c["passed"] / c["total"]
        self.data["by_category"] = cats
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data.update(status=status, finished=time.time(), error=error)
        self.save()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.data)


def run_suite(
    model,
    tokenizer,
    suite: str,
    cases: list[Case],
    settings: Settings,
    result: ResultFile | None = None,
    on_item: Callable[[dict], None] | None = None,
    hide=(),
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Answer and judge every case; returns the result data (also written to ``result``).

    ``hide``: folders (the run folder) the code box hides where it has a mount namespace.
    ``should_stop()``: asked between tokens; once true the suite ends early with status ``cut``
    (the batch in flight is dropped, not judged on half answers).
    """
    from engine.chat.generate import generate

    result = result or ResultFile(None, {"suite": suite}, len(cases))
    if runs_code(cases):
        result.data["sandbox"] = isolation()
    by_index = {}

    def on_batch(indices: list[int], answers: list[str]) -> None:
        items = [judge(suite, cases[i], a, settings, hide) for i, a in zip(indices, answers, strict=True)]
        for i, item in zip(indices, items, strict=True):
            by_index[i] = item
            if on_item:
                on_item(item)
        result.add(items)

    try:
        generate(
            model,
            tokenizer,
            [c.prompt for c in cases],
            max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size,
            system=settings.system_prompt,
            on_batch=on_batch,
            should_stop=should_stop,
        )
    except BaseException as e:
        result.finish("failed", f"{type(e).__name__}: {e}")
        raise
    # Items in suite order, whatever order the batches ran in.
    result.data["items"] = [by_index[i] for i in sorted(by_index)]
    result.finish("cut" if len(by_index) < len(cases) else "completed")
    return result.data


def runs_code(cases: list[Case]) -> bool:
    return any("code" in e for c in cases for e in c.expect)


@dataclass
class Target:
    """What is evaluated and where its results go."""

    model: str
    run_dir: Path | None
    out_dir: Path | None
    config: object | None  # RunConfig of the run, when there is one

    @property
    def header(self) -> dict:
        meta = read_json(Path(self.model) / "leviathan.json") or {}
        return {
            "model": str(Path(self.model).resolve()) if Path(self.model).exists() else self.model,
            "label": Path(self.model.rstrip("/")).name,
            "step": meta.get("step"),
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }

    def result_path(self, suite: str) -> Path | None:
        folder = self.out_dir or (eval_dir(self.run_dir) if self.run_dir else None)
        return folder / result_name(suite, self.model) if folder else None


def target_for(model: str, run_dir: str | None = None, out: str | None = None) -> Target:
    from engine.config.saved_config import run_config

    if run_dir:
        rd = Path(run_dir)
        if not rd.is_dir():
            raise UserError(f"--run-dir {run_dir}: no such folder", "give a run folder such as logs/<run>")
    else:
        rd = find_run_dir(model) if Path(model).exists() else None
    config = run_config(rd) if rd else None
    return Target(model, rd, Path(out) if out else None, config)


def suite_cases(suite: str, settings_config, file: str | None) -> list[Case]:
    ev = getattr(settings_config, "evaluation", None)
    if suite == "identity":
        return identity_cases(file or (ev.identity_prompts if ev else None))
    return inference_cases(file or (ev.inference_suite if ev else None))
