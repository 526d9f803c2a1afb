"""The checklist: every automatic rule on scripted run logs, manual ticks, persistence, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cli_here

from engine.config.config import validate
from engine.errors import UserError
from engine.evaluate import checklist
from engine.evaluate.checklist_items import ItemStatus, build_items
from engine.evaluate.evaluate import ResultFile
from engine.run import lineage
from engine.run.checkpoints import begin_save, mark_complete
from engine.run.events import RunLog


class Run:
    """A scripted run folder: a run log written by the real writer, checkpoints, eval results."""

    def __init__(self, root: Path, config: dict | None = None) -> None:
        self.dir = root / "logs" / "run"
        self.dir.mkdir(parents=True)
        self.out = root / "out"
        self.out.mkdir()
        self.log = RunLog(self.dir / "events.jsonl")
        self.config = None
        if config is not None:
            raw = {
                "base_model": "m",
                "datasets": [{"path": "d.jsonl"}],
                "output_dir": str(self.out),
                **config,
            }
            (self.dir / "config.yaml").write_text(yaml.safe_dump(raw))
            self.config, _ = validate(raw, self.dir / "config.yaml")
        self.log.emit("start", step=0, output_dir=str(self.out))

    def steps(self, losses, start: int = 1):
        for i, loss in enumerate(losses, start):
            self.log.emit("step", step=i, loss=loss)
        return self

    def save(self, step: int, complete: bool = True) -> Path:
        path = self.out / f"checkpoint-{step}"
        begin_save(path)  # as the engine saves: flagged first, so a save cut short is a torn one
        (path / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            mark_complete(path, {"step": step})
        self.log.emit("save", step=step, path=str(path))
        return path

    def result(self, suite: str, label: str, items: list[tuple[str, bool]], status="completed"):
        rf = ResultFile(
            self.dir / "eval" / f"{suite}-{label}.json", {"suite": suite, "label": label}, len(items)
        )
        rf.add(
            [
                {"id": str(i), "category": c, "prompt": "", "answer": "", "passed": ok, "checks": []}
                for i, (c, ok) in enumerate(items)
            ]
        )
        rf.finish(status)

    def check(self, item_id: str) -> ItemStatus:
        return next(i for i in checklist.evaluate(self.dir, self.config) if i.id == item_id)


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


DOWN = [2.6 - 0.02 * i for i in range(60)]  # 2.6 -> 1.42, smooth


# -- run log rules -----------------------------------------------------------------------


def test_loss_decreases(tmp_path):
    assert Run(tmp_path / "a").steps(DOWN).check("loss_smooth").status == "pass"
    assert Run(tmp_path / "b").steps(DOWN[::-1]).check("loss_smooth").status == "fail"
    spiky = list(DOWN)
    spiky[40] = 4.0
    item = Run(tmp_path / "c").steps(spiky).check("loss_smooth")
    assert item.status == "fail" and "spikes at steps 41" in item.detail
    assert Run(tmp_path / "d").steps([2.0]).check("loss_smooth").status == "pending"


def test_loss_value_and_when(run):
    item = run.steps(DOWN).check("loss_smooth")
    assert item.value == "2.55 -> 1.47" and item.when is not None


def test_no_oom(tmp_path):
    assert Run(tmp_path / "a").check("no_oom").status == "pending"
    assert Run(tmp_path / "b").steps(DOWN).check("no_oom").status == "pass"
    r = Run(tmp_path / "c").steps(DOWN[:3])
    r.log.emit(
        "end", status="failed", message="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    item = r.check("no_oom")
    assert item.status == "fail" and "CUDA out of memory" in item.detail
    r = Run(tmp_path / "d").steps(DOWN[:3])
    r.log.emit("end", status="failed", message="ValueError: something else")
    assert r.check("no_oom").status == "pass"


def test_checkpoints_saved(tmp_path):
    r = Run(tmp_path / "a").steps(DOWN[:10])
    assert r.check("checkpoints_saved").status == "pending"
    r.save(10)
    item = r.check("checkpoints_saved")
    assert item.status == "pass" and item.value == "1 saved, newest checkpoint-10 complete"
    r = Run(tmp_path / "b").steps(DOWN[:10])
    r.save(10, complete=False)  # killed while saving: no marker
    assert r.check("checkpoints_saved").status == "fail"


def test_all_checkpoints_saved(tmp_path):
    r = Run(tmp_path / "a").steps(DOWN[:30])
    for s in (10, 20, 30):
        r.save(s)
    # Retention removes the oldest, and says so in the log: still all saved.
    import shutil

    shutil.rmtree(r.out / "checkpoint-10")
    r.log.emit("checkpoint_removed", step=30, path=str(r.out / "checkpoint-10"))
    item = r.check("all_checkpoints")
    assert item.status == "pass" and item.value == "3 saved: 2 on disk, 1 removed by retention"

    r = Run(tmp_path / "b").steps(DOWN[:30])
    for s in (10, 20):
        r.save(s)
    shutil.rmtree(r.out / "checkpoint-20")  # gone without a retention record
    item = r.check("all_checkpoints")
    assert item.status == "fail" and "missing checkpoint-20" in item.detail

    r = Run(tmp_path / "c").steps(DOWN[:30])
    r.save(10)
    r.save(20, complete=False)
    item = r.check("all_checkpoints")
    assert item.status == "fail" and "torn checkpoint-20" in item.detail


def test_final_loss(tmp_path):
    assert Run(tmp_path / "a").check("final_loss").status == "pending"
    item = Run(tmp_path / "b").steps([2.0] * 10 + [0.9] * 10).check("final_loss")
    assert item.status == "pass" and item.value == "0.9"
    item = Run(tmp_path / "c").steps([2.0] * 10 + [1.2] * 10).check("final_loss")
    assert item.status == "fail" and item.value == "1.2"


def test_final_loss_keeps_the_last_record_of_a_step_after_resume(run):
    run.steps([2.0] * 20)
    run.log.emit("resume", from_step=10)
    run.steps([0.5] * 10, start=11)  # steps 11-20 again, on the continuing curve
    assert run.check("final_loss").value == "0.5"


def test_val_perplexity(tmp_path):
    assert Run(tmp_path / "a").steps(DOWN).check("val_perplexity").status == "pending"
    r = Run(tmp_path / "b").steps(DOWN)
    r.log.emit("eval", step=20, eval_loss=1.0, perplexity=math.e)
    r.log.emit("eval", step=40, eval_loss=0.6, perplexity=math.exp(0.6))
    assert r.check("val_perplexity").status == "pass"
    r.log.emit("eval", step=60, eval_loss=0.9, perplexity=math.exp(0.9))
    item = r.check("val_perplexity")
    assert item.status == "fail" and item.value == "2.46"


def test_no_spikes(tmp_path):
    assert Run(tmp_path / "a").steps(DOWN).check("no_spikes").status == "pass"
    spiky = list(DOWN)
    spiky[30] = 5.0
    assert Run(tmp_path / "b").steps(spiky).check("no_spikes").status == "fail"
    nan = list(DOWN)
    nan[50] = float("nan")  # the run log writes it as the string "nan"
    item = Run(tmp_path / "c").steps(nan).check("no_spikes")
    assert item.status == "fail" and "non-finite loss at steps 51" in item.detail
    item = Run(tmp_path / "d").steps(DOWN[::-1]).check("no_spikes")
    assert item.status == "fail" and "loss rose" in item.detail
    r = Run(tmp_path / "e").steps(DOWN)
    r.log.emit("alert", rule="spike", level="warning", message="loss jumped")
    assert r.check("no_spikes").status == "fail"
    # Noise near zero loss is not a spike.
    assert Run(tmp_path / "f").steps([0.02, 0.01] * 30).check("no_spikes").status == "pass"


# -- eval results ------------------------------------------------------------------------


def test_eval_score_rules(run):
    assert run.check("identity").status == "pending"
    run.result("identity", "checkpoint-10", [("identity", True)] * 4 + [("identity", False)])
    item = run.check("identity")
    assert item.status == "fail" and item.value == "4/5 (80%) on checkpoint-10"
    run.result("identity", "checkpoint-20", [("identity", True)] * 5)
    assert run.check("identity").value == "5/5 (100%) on checkpoint-20"
    assert run.check("identity_responds").status == "pass"
    # A run that failed midway does not count.
    run.result("identity", "checkpoint-30", [("identity", False)], status="failed")
    assert run.check("identity").status == "pass"


def test_eval_score_by_category(run):
    items = [("code", True)] * 3 + [("code", False)] + [("esoteric", True)] * 2 + [("reasoning", False)] * 4
    run.result("inference", "checkpoint-10", items)
    assert run.check("code_works").status == "pass"  # 3/4 >= 75%
    assert run.check("esoteric_present").value == "2/2 (100%) on checkpoint-10"
    assert run.check("inference_suite").status == "fail"  # 5/10 < 80%


def test_lmeval_rules(run):
    assert run.check("humaneval").status == "pending"
    data = {
        "suite": "lmeval",
        "label": "merged",
        "status": "completed",
        "finished": 1.0,
        "tasks": {
            "humaneval": {
                "metrics": {"pass@1,create_test": 0.43, "pass@1_stderr,create_test": 0.03},
                "metric": "pass@1",
                "value": 0.43,
            },
            "truthfulqa_mc2": {
                "metrics": {"acc,none": 0.31, "acc_stderr,none": 0.01},
                "metric": "acc",
                "value": 0.31,
            },
        },
    }
    (run.dir / "eval").mkdir(exist_ok=True)
    (run.dir / "eval" / "lmeval-merged.json").write_text(json.dumps(data))
    item = run.check("humaneval")
    assert item.status == "pass" and item.value == "43.0% pass@1 on merged"
    assert run.check("truthfulqa").status == "fail"


# -- files -------------------------------------------------------------------------------


def _model_folder(path: Path, quant: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps({"model_type": "qwen3", **({"quantization_config": quant} if quant else {})})
    )
    (path / "model.safetensors").write_bytes(b"x")
    return path


def test_merged_model(tmp_path):
    r = Run(tmp_path / "a")
    assert r.check("merged").status == "pending"
    _model_folder(r.out / "merged")
    assert r.check("merged").status == "pass"  # anywhere else: test_products_recorded_by_...


def test_quantized_model(tmp_path):
    r = Run(tmp_path / "a")
    assert r.check("quantized").status == "pending"
    _model_folder(r.out / "merged-nf4", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    assert r.check("quantized").status == "pass"
    r = Run(tmp_path / "b")
    _model_folder(r.out / "merged-nf4")  # not quantized at all
    assert r.check("quantized").status == "fail"


def test_hub_upload(run):
    assert run.check("hub_upload").status == "pending"
    lineage.record_step(run.dir, "push", repo_id="user/leviathan-8b-v1")
    assert run.check("hub_upload").status == "pass"


def test_products_recorded_by_the_post_training_steps(tmp_path):
    """merge / quantize / push append to exports.jsonl (engine.run.lineage): that alone ticks the items."""
    r = Run(tmp_path / "a")
    merged = _model_folder(tmp_path / "models" / "lev-merged")
    lineage.record_step(r.dir, "merge", output=str(merged), checkpoint="c")
    assert r.check("merged").status == "pass" and r.check("merged").value == str(merged)
    shutil.rmtree(merged)  # the folder is the evidence, not the record
    assert r.check("merged").status == "pending"

    int8 = _model_folder(tmp_path / "models" / "lev-int8", {"load_in_8bit": True})
    lineage.record_step(r.dir, "quantize", output=str(int8), type="int8")
    assert r.check("quantized").status == "pending"  # the item asks for 4 bits
    nf4 = _model_folder(tmp_path / "models" / "lev-nf4", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"})
    lineage.record_step(r.dir, "quantize", output=str(nf4), type="nf4")
    lineage.record_step(r.dir, "quantize", output=str(int8), type="int8")  # a newer int8 changes nothing
    assert r.check("quantized").status == "pass"

    assert r.check("hub_upload").status == "pending"
    lineage.record_step(r.dir, "push", repo_id="me/lev", url="https://huggingface.co/me/lev")
    item = r.check("hub_upload")
    assert item.status == "pass" and item.value == "https://huggingface.co/me/lev"


# -- manual items, persistence, config ---------------------------------------------------


def test_manual_tick_survives_a_restart(run):
    assert run.check("docs").status == "pending"
    r = cli_here("checklist", run.dir, "--tick", "docs", "--note", "README updated")
    assert r.returncode == 1  # other required items still fail
    assert "[x] Documentation updated  -- ticked by hand: README updated" in r.stdout
    # A fresh process (a restarted cockpit, an attach) reads the same state.
    state = json.loads((run.dir / "checklist.json").read_text())
    assert state["items"]["docs"]["ticked"] is True and state["items"]["docs"]["note"] == "README updated"
    item = run.check("docs")
    assert item.status == "pass" and item.note == "README updated" and item.ticked_at
    checklist.tick(run.dir, "docs", done=False)
    assert run.check("docs").status == "pending"
    assert not list(run.dir.glob("*.tmp")) and not list(run.dir.glob(".*.tmp"))


def test_an_automatic_item_ticked_by_hand_keeps_its_measurement(run):
    checklist.tick(run.dir, "hub_upload", note="uploaded by hand")
    item = run.check("hub_upload")
    assert item.status == "pass" and item.measured == "pending" and item.ticked


def test_changed_at_survives_re_evaluation(run):
    run.steps(DOWN)
    first = run.check("loss_smooth").changed_at
    assert run.check("loss_smooth").changed_at == first
    run.steps([9.0] * 30, start=61)
    assert run.check("loss_smooth").changed_at > first


def test_config_overrides_and_additions(tmp_path):
    r = Run(
        tmp_path,
        {
            "checklist": {
                "items": [
                    {"id": "final_loss", "max": 1.5},
                    {"id": "docs", "enabled": False},
                    {"id": "model_card", "title": "Model card reviewed", "group": "post_training"},
                    {
                        "id": "ppl3",
                        "title": "Perplexity under 3",
                        "rule": "val_perplexity",
                        "max": 3.0,
                        "required": False,
                    },
                ]
            },
            "evaluation": {"persona": "Ziz"},
        },
    )
    r.steps([1.2] * 10)
    items = {i.id: i for i in checklist.evaluate(r.dir, r.config)}
    assert items["final_loss"].title == "Final training loss < 1.5" and items["final_loss"].status == "pass"
    assert "docs" not in items
    assert items["model_card"].kind == "manual"
    assert items["ppl3"].required is False
    assert items["identity_responds"].title == 'Model responds as "Ziz" to identity questions'
    # The CLI reads the same config from the run folder.
    out = cli_here("checklist", r.dir, "--json")
    assert {i["id"] for i in json.loads(out.stdout)} == set(items)


def test_bad_checklist_config_names_the_key(tmp_path):
    text = "base_model: m\ndatasets:\n  - path: d.jsonl\nchecklist:\n  items:\n    - id: x\n      rule: loss_goes_down\n"
    with pytest.raises(UserError) as e:
        validate(yaml.safe_load(text), tmp_path / "c.yaml", text)
    assert "c.yaml:7" in str(e.value) and "loss_goes_down" in str(e.value)
    text = (
        "base_model: m\ndatasets:\n  - path: d.jsonl\nchecklist:\n  items:\n    - id: x\n      treshold: 1\n"
    )
    with pytest.raises(UserError) as e:
        validate(yaml.safe_load(text), tmp_path / "c.yaml", text)
    assert "unknown key" in str(e.value) and "c.yaml:7" in str(e.value)
    with pytest.raises(UserError, match="needs a `title`"):
        build_items(
            validate(
                {"base_model": "m", "datasets": [{"path": "d"}], "checklist": {"items": [{"id": "new"}]}},
                tmp_path / "c.yaml",
            )[0]
        )


def test_cli_exit_codes_and_group(tmp_path):
    r = Run(
        tmp_path,
        {
            "checklist": {
                "defaults": False,
                "items": [
                    {
                        "id": "loss",
                        "title": "Loss goes down",
                        "rule": "loss_decreases",
                        "group": "validation",
                    },
                    {"id": "notes", "title": "Notes written", "group": "post_training"},
                ],
            }
        },
    )
    r.steps(DOWN)
    out = cli_here("checklist", r.dir)
    assert out.returncode == 1 and "1/2 passed; 1 required item(s) not passed" in out.stdout
    out = cli_here("checklist", r.dir, "--group", "validation")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[x] Loss goes down  -- 2.55 -> 1.47" in out.stdout
    assert cli_here("checklist", r.dir, "--tick", "notes").returncode == 0
    out = cli_here("checklist", r.dir, "--tick", "nope")
    assert out.returncode == 2 and "no checklist item `nope`" in out.stderr
    out = cli_here("checklist", tmp_path / "missing")
    assert out.returncode == 2 and "no such run folder" in out.stderr


def test_chat_marks_feed_the_esoteric_and_dark_items(tmp_path):
    """The operator's pass/fail marks in the chat pane's transcript decide the spot-check items."""
    import json

    from engine.evaluate.checklist import evaluate

    run = tmp_path / "run"
    (run / "chat").mkdir(parents=True)
    (run / "events.jsonl").write_text('{"t":1,"kind":"start","step":0}\n')
    lines = [
        {
            "kind": "exchange",
            "id": "a-0",
            "t": 10,
            "group": "esoteric",
            "prompt": "Tower?",
            "answer": "upheaval",
        },
        {
            "kind": "exchange",
            "id": "b-0",
            "t": 11,
            "group": "esoteric",
            "prompt": "7th house?",
            "answer": "?",
        },
        {"kind": "exchange", "id": "c-0", "t": 12, "group": "dark", "prompt": "shadow work", "answer": "..."},
        {"kind": "mark", "id": "a-0", "t": 13, "mark": "pass"},
        {"kind": "mark", "id": "b-0", "t": 14, "mark": "fail"},
    ]
    (run / "chat" / "s.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    items = {i.id: i for i in evaluate(run, save=False)}
    assert items["esoteric_spot"].status == "fail" and "1/2 marked pass" in items["esoteric_spot"].value
    assert items["dark_topics"].status == "pending"  # asked but not marked yet
    with open(run / "chat" / "s.jsonl", "a") as f:
        f.write(json.dumps({"kind": "mark", "id": "b-0", "t": 15, "mark": "pass"}) + "\n")
        f.write(json.dumps({"kind": "mark", "id": "c-0", "t": 16, "mark": "pass"}) + "\n")
    items = {i.id: i for i in evaluate(run, save=False)}
    assert items["esoteric_spot"].status == "pass" and items["dark_topics"].status == "pass"
