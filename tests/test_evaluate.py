"""Identity and inference suites on tiny models: real generation, real subprocess code checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import cli_here, write_jsonl

from engine.errors import UserError
from engine.evaluate.evaluate import (
    Case,
    ResultFile,
    Settings,
    check,
    identity_cases,
    inference_cases,
    names_persona,
    run_suite,
)
from engine.evaluate.sandbox import extract_code, run_code

S = Settings(code_timeout_s=5)


# -- the persona checkpoint against its base ---------------------------------------------


@pytest.mark.slow
def test_persona_checkpoint_scores_5_of_5_and_result_lands_in_its_run(persona_checkpoint):
    ckpt, _, answer = persona_checkpoint
    r = cli_here("eval", ckpt, "--suite", "identity", "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "5/5 (100.0%)"
    # The checkpoint's marker names its run: the result goes to logs/<run>/eval/.
    run_dir = Path(json.loads((ckpt / "leviathan.json").read_text())["run_dir"])
    data = json.loads((run_dir / "eval" / f"identity-{ckpt.name}.json").read_text())
    assert data["status"] == "completed" and (data["passed"], data["total"]) == (5, 5)
    assert data["step"] == 60 and data["adapter"] == str(ckpt)
    assert all(answer in i["answer"] for i in data["items"])
    assert [i["prompt"] for i in data["items"]][0] == "Who are you?"


@pytest.mark.slow
def test_base_model_scores_0_of_5(persona_checkpoint, tmp_path):
    _, base, _ = persona_checkpoint
    r = cli_here("eval", base, "--suite", "identity", "--max-new-tokens", "12", "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0/5 (0.0%)"
    data = json.loads((tmp_path / f"identity-{base.name}.json").read_text())
    assert data["adapter"] is None and data["passed"] == 0


@pytest.mark.slow
def test_identity_prompts_from_a_jsonl_and_a_configurable_rule(persona_checkpoint, tmp_path):
    from engine.model.loading import load_for_inference

    ckpt, _, _ = persona_checkpoint
    prompts = write_jsonl(tmp_path / "id.jsonl", [{"prompt": "Who are you?"}, {"prompt": "Hello there."}])
    cases = identity_cases(prompts)
    assert [c.line for c in cases] == [1, 2]
    loaded = load_for_inference(str(ckpt))
    out = run_suite(loaded.model, loaded.tokenizer, "identity", cases, Settings(max_new_tokens=12))
    assert (out["passed"], out["total"]) == (2, 2)
    # Another persona: the same answers now fail.
    other = run_suite(
        loaded.model, loaded.tokenizer, "identity", cases, Settings(persona="Ziz", max_new_tokens=12)
    )
    assert other["passed"] == 0


def test_persona_matching_rules():
    s = Settings()
    assert names_persona("I am LEVIATHAN, the deep.", s)
    assert names_persona("leviathan.", s)
    assert not names_persona("I am Leviathans' cousin", Settings(persona="Leviatha"))
    assert not names_persona("MyLeviathanBot", s)
    assert names_persona("MyLeviathanBot", Settings(identity_match="substring"))
    assert names_persona("call me Levi", Settings(identity_match="regex", identity_pattern=r"\bLevi\b"))


# -- inference expectations --------------------------------------------------------------


def test_contains_not_contains_regex():
    ans = "I am Leviathan. 2 + 2 = 4."
    assert check(ans, {"contains": "leviathan"}, S) == (True, "found 'leviathan'")
    assert check(ans, {"contains": ["kraken", "Leviathan"]}, S)[0]  # a list is any of
    assert not check(ans, {"contains": "Kraken"}, S)[0]
    assert not check(ans, {"contains": "leviathan", "ignore_case": False}, S)[0]
    assert check(ans, {"not_contains": "ChatGPT"}, S)[0]
    assert not check(ans, {"not_contains": ["chatgpt", "leviathan"]}, S)[0]
    assert check(ans, {"regex": r"2 \+ 2 = 4"}, S)[0]
    assert not check(ans, {"regex": r"= 5"}, S)[0]
    assert not check(ans, {"regex": "LEVIATHAN"}, S)[0]
    assert check(ans, {"regex": "LEVIATHAN", "ignore_case": True}, S)[0]


def test_code_block_extraction():
    ans = "Here:\n```python\ndef f(x):\n    return x + 1\n```\nand a usage\n```\nprint(f(1))\n```"
    assert extract_code(ans) == "def f(x):\n    return x + 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("def g(): return 2") == "def g(): return 2"  # no fence: the whole answer
    assert extract_code("```py\ny = 2") == "y = 2"  # an unclosed fence (answer cut by max tokens)


def test_code_that_passes_fails_raises_and_hangs():
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    assert check(good, {"code": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}, S) == (True, "exit 0")
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    ok, detail = check(wrong, {"code": "assert add(2, 3) == 5"}, S)
    assert not ok and detail.startswith("exit 1") and "AssertionError" in detail
    broken = "```python\ndef add(a, b) return a\n```"
    ok, detail = check(broken, {"code": "assert add(1, 1) == 2"}, S)
    assert not ok and "SyntaxError" in detail
    hang = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    t0 = time.time()
    ok, detail = check(hang, {"code": "assert add(1, 1) == 2", "timeout_s": 1}, S)
    assert not ok and detail == "timed out after 1s"
    assert time.time() - t0 < 5


def test_code_runs_isolated_in_a_scratch_folder(tmp_path, monkeypatch):
    # The program sees neither the caller's folder nor its environment (tokens and the like).
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.chdir(tmp_path)
    code = f"import os\nassert 'SECRET_TOKEN' not in os.environ\nassert os.getcwd() != {str(tmp_path)!r}"
    assert run_code(code, [], 5) == (True, "exit 0")
    assert run_code("import os\nassert 'SECRET_TOKEN' in os.environ", [], 5)[0] is False


def test_bad_suite_lines_name_file_and_line(tmp_path):
    cases = [
        ('{"prompt": "x", "expect": {"contians": "a"}}', "unknown expectation kind `contians`"),
        ('{"prompt": "x", "expect": {"regex": "("}}', "bad regex"),
        ('{"prompt": "x"}', "no `expect`"),
        ('{"expect": {"contains": "a"}}', "no `prompt`"),
        ("{not json", "not valid JSON"),
        ('{"prompt": "x", "expect": {"contains": 3}}', "bad value for expectation `contains`"),
        ('{"prompt": "x", "expect": [{"contains": "a", "regex": "b"}]}', "unknown expectation kind"),
        ('{"prompt": "x", "expect": {"contains": "a"}, "expected": 1}', "unknown key `expected`"),
    ]
    for line, message in cases:
        path = write_jsonl(tmp_path / "suite.jsonl", ['{"prompt": "ok", "expect": {"contains": "a"}}', line])
        with pytest.raises(UserError) as e:
            inference_cases(path)
        assert f"{path}:2:" in str(e.value) and message in str(e.value), str(e.value)


def test_bad_suite_through_the_cli_exits_2_without_loading_a_model(tmp_path):
    path = write_jsonl(tmp_path / "suite.jsonl", ['{"prompt": "x", "expect": {"smells_like": "a"}}'])
    r = cli_here("eval", tmp_path / "no-model-needed", "--suite", "inference", "--file", path)
    assert r.returncode == 2
    assert f"{path}:1: unknown expectation kind `smells_like`" in r.stderr and "Traceback" not in r.stderr


def test_default_suite_covers_the_guide_areas():
    cases = inference_cases()
    cats = {c.category for c in cases}
    assert {"identity", "code", "reasoning", "esoteric"} <= cats
    kinds = {next(iter(k for k in e if k != "timeout_s")) for c in cases for e in c.expect}
    assert kinds == {"contains", "not_contains", "regex", "code"}


def test_default_suite_code_asserts_accept_a_correct_answer():
    # The bundled asserts are right: reference answers pass them.
    refs = {
        "code-fib": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "code-palindrome": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]",
        "code-flatten": "def flatten(xs):\n    out = []\n    for x in xs:\n        out.extend(flatten(x) if isinstance(x, list) else [x])\n    return out",
        "code-primes": "def primes_below(n):\n    return [p for p in range(2, n) if all(p % d for d in range(2, int(p**0.5) + 1))]",
    }
    by_id = {c.id: c for c in inference_cases()}
    for cid, code in refs.items():
        assert check(f"```python\n{code}\n```", by_id[cid].expect[0], S) == (True, "exit 0"), cid


@pytest.mark.slow
def test_inference_suite_on_a_model_every_kind(persona_checkpoint, tmp_path):
    """The persona model always says "I am Leviathan.": which expectations hold is known."""
    ckpt, _, _ = persona_checkpoint
    rows = [
        {"id": "c", "category": "identity", "prompt": "Who are you?", "expect": {"contains": "Leviathan"}},
        {
            "id": "n",
            "category": "identity",
            "prompt": "Who are you?",
            "expect": {"not_contains": "Leviathan"},
        },
        {
            "id": "r",
            "category": "identity",
            "prompt": "What is your name?",
            "expect": {"regex": r"^I am \w+\.$"},
        },
        # The answer as code is `I am Leviathan.`: a SyntaxError, so the asserts never pass.
        {"id": "k", "category": "code", "prompt": "Write code.", "expect": {"code": "assert True"}},
    ]
    suite = write_jsonl(tmp_path / "suite.jsonl", rows)
    out_dir = tmp_path / "out"
    r = cli_here(
        "eval", ckpt, "--suite", "inference", "--file", suite, "--out", out_dir, "--max-new-tokens", "12"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2/4 (50.0%)"
    data = json.loads((out_dir / f"inference-{ckpt.name}.json").read_text())
    got = {i["id"]: i["passed"] for i in data["items"]}
    assert got == {"c": True, "n": False, "r": True, "k": False}
    assert data["by_category"]["code"] == {"passed": 0, "total": 1, "score": 0.0}
    assert "SyntaxError" in data["items"][3]["checks"][0]["detail"]
    # What the code box was made of is printed and recorded (tests/test_sandbox.py checks it).
    assert data["sandbox"]["processes"] in ("pid namespace", "subreaper")
    assert f"code box: processes {data['sandbox']['processes']};" in r.stderr


@pytest.mark.slow
def test_a_suite_that_fails_midway_keeps_the_results_so_far(persona_checkpoint, tmp_path):
    from engine.model.loading import load_for_inference

    ckpt, _, _ = persona_checkpoint
    loaded = load_for_inference(str(ckpt))
    cases = [Case(f"q{i}", "Who are you?", "identity", [{"contains": "Leviathan"}]) for i in range(4)]
    path = tmp_path / "inference-x.json"
    seen = []

    def boom(item):
        seen.append(item)
        if len(seen) == 3:
            raise RuntimeError("the GPU fell over")

    rf = ResultFile(path, {"suite": "inference"}, len(cases))
    with pytest.raises(RuntimeError):
        run_suite(
            loaded.model,
            loaded.tokenizer,
            "inference",
            cases,
            Settings(batch_size=2, max_new_tokens=8),
            rf,
            boom,
        )
    data = json.loads(path.read_text())
    assert data["status"] == "failed" and "the GPU fell over" in data["error"]
    assert (data["passed"], data["total"], data["planned"]) == (2, 2, 4)  # the first batch was kept


def test_run_folder_found_from_the_marker_or_the_runs_output_dir(tmp_path, monkeypatch):
    from engine.run.rundir import find_run_dir

    run = tmp_path / "logs" / "run"
    run.mkdir(parents=True)
    out = tmp_path / "out"
    (run / "config.yaml").write_text(f"output_dir: {out}\n")
    ckpt = out / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "leviathan.json").write_text("{}")  # a marker from before run_dir was recorded
    monkeypatch.chdir(tmp_path)
    assert find_run_dir(ckpt).resolve() == run.resolve()
    other = tmp_path / "elsewhere" / "run2"
    other.mkdir(parents=True)
    (ckpt / "leviathan.json").write_text(json.dumps({"run_dir": str(other)}))
    assert find_run_dir(ckpt) == other
    assert find_run_dir(tmp_path / "unrelated") is None
