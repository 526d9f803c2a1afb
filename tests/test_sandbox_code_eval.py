"""lm-eval's code tasks through the code box: ``evaluate``'s ``code_eval`` replaced while lm-eval
runs, exercised through lm-eval's own HumanEval task module (offline: no metric download)."""

from __future__ import annotations

import importlib
import socket
import sys

import pytest

from engine.evaluate.code_eval import CodeEval, boxed_code_eval, pass_at_k, unboxed


def test_pass_at_k_matches_the_closed_form():
    # 1 - C(n-c, k) / C(n, k), written out for n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(3, 2, 2) == 1.0


def test_compute_scores_and_boxes_each_candidate(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    control = tmp_path / "control.jsonl"
    control.write_text("")
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    escape_net = (
        f"import socket\nsocket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=2)\n"
    )
    escape_file = f"open({str(control)!r}, 'a').write('stop')\n"
    refs = ["assert add(2, 3) == 5", "assert sub(3, 1) == 2"]
    preds = [
        ["def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"],
        ["def sub(a, b):\n    return a - b", escape_net + escape_file + "def sub(a, b):\n    return a - b"],
    ]
    scores, results = CodeEval().compute(references=refs, predictions=preds, k=[1, 2, 3], num_workers=2)
    # Per task 1 of 2 candidates passes (the escaping one fails in the box): pass@1 = 1/2, pass@2 = 1.
    assert scores == {"pass@1": pytest.approx(0.5), "pass@2": pytest.approx(1.0)}
    assert [r["passed"] for _, r in sorted(results[1], key=lambda x: x[0])] == [True, False]
    assert control.read_text() == ""
    with pytest.raises(BlockingIOError):
        srv.accept()
    srv.close()


def test_compute_needs_the_permission(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ValueError, match="HF_ALLOW_CODE_EVAL"):
        CodeEval().compute(references=["assert True"], predictions=[["pass"]], k=[1])


@pytest.mark.slow
def test_lm_eval_humaneval_scores_through_the_box(monkeypatch, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    sys.modules.pop("lm_eval.tasks.humaneval.utils", None)
    with boxed_code_eval():
        utils = importlib.import_module("lm_eval.tasks.humaneval.utils")  # its import runs a check
        assert isinstance(utils.compute_, CodeEval)
        leak = f"assert open({str(secret)!r}).read() == 's3cret'\n"
        got = utils.pass_at_k(
            ["assert inc(1) == 2"],
            [["def inc(x):\n    return x + 1", leak + "def inc(x):\n    return x + 1"]],
            k=[1],
        )
    assert got == {"pass@1": pytest.approx(0.5)}  # the candidate that reads the secret fails
    import evaluate

    assert evaluate.load.__module__ == "evaluate.loading"  # put back


def test_tasks_that_run_code_their_own_way_are_named():
    assert unboxed(["humaneval", "humaneval_instruct", "mbpp", "cruxeval_output", "longproc_x"]) == [
        "cruxeval_output",
        "longproc_x",
    ]
    # A group is not marked unsafe itself: refused by its family's name.
    assert unboxed(["longproc", "humaneval", "tiny_mc"], unsafe=["humaneval"]) == ["longproc"]


def test_task_modules_loaded_before_are_boxed_and_lazy_modules_left_unasked(monkeypatch):
    import types

    from engine.evaluate import code_eval

    class Metric:  # what `evaluate.load("code_eval")` gives a task module at its import
        name = "code_eval"

    asked = []

    def forwards(name):  # a lazy alias module: asking it imports (and here fails)
        asked.append(name)
        raise ModuleNotFoundError("No module named 'torchvision'")

    task = types.ModuleType("fake_task_utils")
    task.compute_ = Metric()
    alias = types.ModuleType("transformers.models.fake.image_processing_fake_fast")
    alias.__getattr__ = forwards
    for m in (task, alias):
        monkeypatch.setitem(sys.modules, m.__name__, m)
    swapped = code_eval._swap_loaded()
    try:
        assert [(m, a) for m, a, _ in swapped] == [(task, "compute_")]
        assert isinstance(task.compute_, CodeEval) and asked == []
    finally:
        for module, attr, value in swapped:
            setattr(module, attr, value)
