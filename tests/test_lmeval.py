"""lm-evaluation-harness on a tiny checkpoint with a local task: our numbers equal lm-eval's own CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_here, write_jsonl

pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'leviathan-cockpit[eval]'")

TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:", "."]
  max_gen_toks: 12
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lmeval-task")
    rows = []
    for a in range(1, 7):
        for b in range(1, 5):
            right = a + b
            choices = [str(right), str(right + 1), f"{a * b + 7} or so", "I am Leviathan."]
            k = (a + b) % 4  # the right answer moves around
            choices[0], choices[k] = choices[k], choices[0]
            rows.append({"question": f"What is {a} plus {b}?", "choices": choices, "answer": k})
    data = write_jsonl(root / "tiny_mc.jsonl", rows)
    (root / "tiny_mc.yaml").write_text(TASK.format(data=data))
    gen = [{"question": r["question"], "answer": r["choices"][r["answer"]]} for r in rows[:10]]
    gen += [{"question": "Who are you?", "answer": "I am Leviathan"}, {"question": "hi", "answer": "hello"}]
    (root / "tiny_gen.yaml").write_text(GEN_TASK.format(data=write_jsonl(root / "tiny_gen.jsonl", gen)))
    return root


@pytest.mark.slow
def test_checkpoint_numbers_equal_lm_eval_cli(persona_checkpoint, task_dir, tmp_path):
    ckpt, base, _ = persona_checkpoint
    out = tmp_path / "ours"
    r = cli_here(
        "eval",
        ckpt,
        "--suite",
        "lmeval",
        "--tasks",
        "tiny_mc",
        "--include-path",
        task_dir,
        "--out",
        out,
        "--batch-size",
        "1",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ours = json.loads((out / f"lmeval-{ckpt.name}.json").read_text())
    assert ours["status"] == "completed" and ours["model_args"]["peft"] == str(ckpt)
    t = ours["tasks"]["tiny_mc"]
    assert r.stdout.strip() == f"tiny_mc: acc {t['passed']}/24 ({100 * t['passed'] / 24:.1f}%)"

    theirs_dir = tmp_path / "theirs"
    args = f"pretrained={base},peft={ckpt},tokenizer={ckpt}"
    p = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", args, "--tasks", "tiny_mc"]
        + [
            "--include_path",
            str(task_dir),
            "--device",
            "cpu",
            "--batch_size",
            "1",
            "--output_path",
            str(theirs_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    theirs = json.loads(next(theirs_dir.rglob("results_*.json")).read_text())["results"]["tiny_mc"]
    for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
        assert t["metrics"][key] == theirs[key], key
    assert t["value"] == theirs["acc,none"] and t["n"] == 24


@pytest.mark.slow
def test_result_feeds_the_checklist(persona_checkpoint, task_dir, tmp_path):
    from engine.evaluate.checklist_items import Item
    from engine.evaluate.checklist_rules import RULES, Sources
    from engine.evaluate.lmeval import run_lmeval

    ckpt, _, _ = persona_checkpoint
    run_dir = tmp_path / "logs" / "run"
    run_dir.mkdir(parents=True)
    data = run_lmeval(
        str(ckpt),
        ["tiny_mc"],
        out_file=run_dir / "eval" / "lmeval-x.json",
        header={"label": "x"},
        include_path=str(task_dir),
    )
    src = Sources(run_dir)
    acc = data["tasks"]["tiny_mc"]["value"]
    item = Item(
        "mc",
        "tiny mc",
        "post_training",
        "lmeval",
        params={"task": "tiny_mc", "metric": "acc_norm", "min": 0.0},
    )
    m = RULES["lmeval"](src, item)
    assert m.status == "pass" and m.value.endswith("acc_norm on x")
    item.params["min"] = acc + 1.01
    item.params["metric"] = "acc"
    assert RULES["lmeval"](src, item).status == "fail"


@pytest.mark.slow
def test_unknown_task_and_unsafe_task_exit_2(persona_checkpoint, task_dir):
    ckpt, _, _ = persona_checkpoint
    r = cli_here("eval", ckpt, "--suite", "lmeval", "--tasks", "tiny_mcc", "--include-path", task_dir)
    assert (
        r.returncode == 2 and "lm-eval task `tiny_mcc` does not exist" in r.stderr and "tiny_mc" in r.stderr
    )
    r = cli_here("eval", ckpt, "--suite", "lmeval", "--tasks", "humaneval")
    assert r.returncode == 2 and "--allow-code-execution" in r.stderr and "Traceback" not in r.stderr
    # A task that runs code its own way (not through code_eval) is refused even when allowed.
    r = cli_here("eval", ckpt, "--suite", "lmeval", "--tasks", "cruxeval_output", "--allow-code-execution")
    assert r.returncode == 2 and "outside the code box" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_vision_language_base_runs_through_our_loader(tiny_model, task_dir, tmp_path):
    """lm-eval's HF model cannot load Qwen3-VL from a path; it gets the model we load."""
    from engine.evaluate.lmeval import run_lmeval

    data = run_lmeval(
        str(tiny_model("qwen3_vl")), ["tiny_mc"], out_file=tmp_path / "r.json", include_path=str(task_dir)
    )
    assert (
        data["status"] == "completed"
        and data["model_args"]["pretrained"] == "Qwen3VLForConditionalGeneration"
    )
    assert data["tasks"]["tiny_mc"]["n"] == 24 and 0 <= data["tasks"]["tiny_mc"]["value"] <= 1


@pytest.mark.parametrize("with_adapter", [True, False])
@pytest.mark.slow
def test_generation_task_gives_hf_backends_greedy_answers(
    persona_checkpoint, task_dir, with_adapter, monkeypatch
):
    """A generate_until task through our engine: the same answers, token for token, and scores as
    lm-eval's own ``hf`` model on the same checkpoint (batched: left-padded rows)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from engine.evaluate.lmeval import model_spec
    from engine.evaluate.lmeval_engine import model_class

    ckpt, base, _ = persona_checkpoint
    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    if with_adapter:
        theirs_lm = HFLM(
            pretrained=str(base), peft=str(ckpt), tokenizer=str(ckpt), batch_size=4, device="cpu"
        )
        args, _ = model_spec(str(ckpt))
    else:
        theirs_lm = HFLM(pretrained=str(base), batch_size=4, device="cpu")
        args, _ = model_spec(str(base))
    ours_lm = model_class().create_from_arg_obj(args, {"batch_size": 4, "device": "cpu"})
    import engine.chat.generate

    batches = []
    real = engine.chat.generate.run_rows
    monkeypatch.setattr(
        engine.chat.generate,
        "run_rows",
        lambda m, rows, **kw: batches.append(len(rows)) or real(m, rows, **kw),
    )

    def run(lm):
        res = lm_eval.simple_evaluate(
            model=lm, tasks=["tiny_gen", "tiny_mc"], task_manager=tm, log_samples=True
        )
        answers = [s["resps"] for s in res["samples"]["tiny_gen"]]
        return res["results"], answers

    ours, ours_answers = run(ours_lm)
    theirs, theirs_answers = run(theirs_lm)
    assert ours_answers == theirs_answers and len(ours_answers) == 12
    assert sum(batches) == 12 and max(batches) == 4  # generated by the engine, in batches
    assert any(a[0][0].strip() for a in ours_answers)  # something was generated
    for task in ("tiny_gen", "tiny_mc"):
        for key, value in theirs[task].items():
            if isinstance(value, float):
                assert ours[task][key] == value, (task, key)
