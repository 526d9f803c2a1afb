"""Damage to the run log, the chat transcripts and the checklist state is said, never read as a
shorter run (engine/run/seal.py, engine/evaluate/checklist_state.py): real writers, real files,
the damage done with plain file operations; the counts expected are the records written here."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import cli_here

from cockpit.source import damage_alert
from engine.evaluate import checklist
from engine.run.chat_log import Transcript, chat_damage, read_exchanges
from engine.run.events import RunLog, damage_said, read_events
from engine.run.seal import seal_path
from engine.ship.card import model_card, summarize_run

N = 40


def _log(tmp_path, n=N):
    path = tmp_path / "logs" / "run" / "events.jsonl"
    log = RunLog(path)
    log.emit("start", step=0, output_dir=str(tmp_path / "out"))
    for i in range(1, n):
        log.emit("step", step=i, loss=1.0 / i)
    log.close()
    return path


def _keep_lines(path, k):
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:k]))


def test_an_intact_log_and_one_written_past_its_seal_are_not_damage(tmp_path):
    path = _log(tmp_path)
    assert read_events(path).damage is None
    with open(path, "ab") as f:  # a kill between the log's write and the seal's: more, not less
        f.write(b'{"t":1,"kind":"note","message":"late"}\n')
    assert read_events(path).damage is None
    seal_path(path).unlink()  # a log written before seals: read as it is
    assert read_events(path).damage is None and len(read_events(path).records) == N + 1


def test_a_truncated_log_says_which_records_are_lost(tmp_path):
    path = _log(tmp_path)
    _keep_lines(path, 25)
    damage = read_events(path).damage
    assert damage is not None and (damage.good_lines, damage.missing) == (25, N - 25)
    assert (
        str(path) in damage.message
        and f"records after line 25 lost ({N - 25} of {N} missing)" in damage.message
    )


def test_a_zeroed_block_and_a_changed_byte_are_found(tmp_path):
    path = _log(tmp_path)
    data = bytearray(path.read_bytes())
    lines = data.splitlines(keepends=True)
    start = sum(len(x) for x in lines[:10]) + 3  # inside line 11
    data[start : start + 5] = bytes(5)
    path.write_bytes(bytes(data))
    damage = read_events(path).damage
    assert damage is not None and "lines 11-11" in damage.message and damage.missing == 1
    path.write_bytes(bytes(data).replace(bytes(5), b"00000", 1).replace(b'"loss":0.5', b'"loss":0.7'))
    assert read_events(path).damage is not None  # still parses, values changed: the hash says so


def test_a_deleted_log_is_said_and_a_writer_reopening_it_logs_the_loss(tmp_path):
    path = _log(tmp_path)
    path.unlink()
    alert = damage_alert(path)  # what attach shows first
    assert alert["kind"] == "alert" and f"all {N} records it held are lost" in alert["message"]
    log = RunLog(path)  # the same command again (a resumed trainer)
    log.emit("note", message="resumed")
    log.close()
    contents = read_events(path)
    assert contents.damage is None  # sealed again over what is left ...
    said = damage_said(contents)  # ... and the loss stays in the log for every later reader
    assert len(said) == 1 and f"all {N} records" in said[0]
    assert [r["kind"] for r in contents.records] == ["alert", "note"]
    assert damage_alert(path) is None


def test_a_log_cut_short_under_a_running_writer_is_logged(tmp_path):
    path = _log(tmp_path, 5)
    log = RunLog(path)
    _keep_lines(path, 2)  # truncated in place while the writer holds it
    log.emit("step", step=9, loss=0.1)
    log.close()
    kinds = [(r["kind"], r.get("rule")) for r in read_events(path).records]
    assert kinds[-2:] == [("step", None), ("alert", "run_log_damaged")]
    assert read_events(path).damage is None


@pytest.mark.parametrize("fault", ["truncate", "zero", "delete"])
def test_chat_transcript_damage_is_said(tmp_path, fault):
    t = Transcript(tmp_path)
    for i in range(6):
        t._append({"kind": "exchange", "id": f"r{i}", "t": float(i), "prompt": "p", "answer": "a" * 50})
    t.mark("r0", "pass")
    assert chat_damage(tmp_path) == [] and len(read_exchanges(tmp_path)) == 6
    if fault == "truncate":
        _keep_lines(t.path, 3)
        want = "records after line 3 lost (4 of 7 missing)"
    elif fault == "zero":
        data = bytearray(t.path.read_bytes())
        data[200:210] = bytes(10)
        t.path.write_bytes(bytes(data))
        want = "bytes changed since they were written"
    else:
        t.path.unlink()
        want = "was deleted: all 7 records it held are lost"
    said = chat_damage(tmp_path)
    assert len(said) == 1 and str(t.path) in said[0] and want in said[0], said


# -- the checklist's state ----------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    path = _log(tmp_path, 3)
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "output_dir": str(tmp_path / "out")}
    (path.parent / "config.yaml").write_text(yaml.safe_dump(raw))
    r = cli_here("checklist", path.parent, "--tick", "docs", "--note", "README written")
    assert r.returncode in (0, 1), r.stderr
    return path.parent


def _ticks(stdout: str) -> dict:
    return {i["id"]: (i["ticked"], i["note"]) for i in json.loads(stdout) if i["ticked"]}


def _damage(path, fault):
    data = path.read_bytes()
    if fault == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "bit flip":
        b = bytearray(data)
        i = data.index(b"README")  # inside the note: still valid JSON
        b[i] ^= 0x01
        path.write_bytes(bytes(b))
    elif fault == "zero block":
        path.write_bytes(bytes(len(data)))
    else:
        path.unlink()


@pytest.mark.parametrize("fault", ["truncate", "bit flip", "zero block", "delete"])
def test_checklist_ticks_survive_damage_with_a_note(run_dir, fault):
    state = run_dir / "checklist.json"
    _damage(state, fault)
    r = cli_here("checklist", run_dir, "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert f"note: checklist state damaged: {state}" in r.stderr and "restored from" in r.stderr
    assert _ticks(r.stdout) == {"docs": (True, "README written")}
    again = cli_here("checklist", run_dir, "--json")  # written whole again: nothing more to say
    assert "damaged" not in again.stderr and _ticks(again.stdout) == {"docs": (True, "README written")}


def test_checklist_with_both_copies_damaged_says_the_ticks_are_lost(run_dir):
    for name in ("checklist.json", "checklist.json.prev"):
        _damage(run_dir / name, "truncate")
    r = cli_here("checklist", run_dir, "--json")
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr
    assert "the manual ticks and notes are lost" in r.stderr and _ticks(r.stdout) == {}


def test_a_checklist_written_before_digests_is_read_as_it_is(run_dir):
    state = json.loads((run_dir / "checklist.json").read_text())
    del state["digest"]
    (run_dir / "checklist.json").write_text(json.dumps(state))
    (run_dir / "checklist.json.prev").unlink()
    notes: list[str] = []
    items = checklist.evaluate(run_dir, notes=notes)
    assert notes == [] and [i.id for i in items if i.ticked] == ["docs"]


def test_the_checklist_and_the_card_say_the_run_log_lost_records(run_dir):
    events = run_dir / "events.jsonl"
    _keep_lines(events, 1)
    r = cli_here("checklist", run_dir)
    assert f"note: run log damaged: {events} was cut short: records after line 1 lost (2 of 3" in r.stderr
    summary = summarize_run(run_dir)
    assert len(summary.damage) == 1 and "cut short" in summary.damage[0]
    assert "## Records lost" in model_card(run_dir, "u/m", summary)


def test_step_losses_lost_from_the_log_are_rebuilt_from_the_last_checkpoint(tmp_path):
    from engine.evaluate.checklist_rules import Sources
    from engine.run.checkpoints import begin_save, mark_complete

    losses = {1: 2.0, 2: 1.5, 3: 1.25, 4: 1.125, 5: 1.0}
    path = tmp_path / "logs" / "run" / "events.jsonl"
    log = RunLog(path)
    log.emit("start", step=0, output_dir=str(tmp_path / "out"))
    for step, loss in losses.items():
        log.emit("step", step=step, loss=loss)
    log.close()
    ckpt = tmp_path / "out" / "checkpoint-4"
    begin_save(ckpt)  # as the trainer saves; its log_history holds steps 1-4
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    history = [
        {"step": s, "loss": loss, "learning_rate": 1e-4, "epoch": s / 5}
        for s, loss in losses.items()
        if s <= 4
    ]
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "log_history": history}))
    mark_complete(ckpt, {"step": 4})
    _keep_lines(path, 3)  # start, steps 1 and 2 left
    src = Sources(path.parent)
    assert [(r.step, r.loss) for r in src.steps] == [(s, loss) for s, loss in losses.items() if s <= 4]
    assert src.damage[1] == (
        f"run log: 2 step loss(es) lost from it (steps 3-4) rebuilt from {ckpt / 'trainer_state.json'}"
    )


def test_a_zeroed_block_over_several_records_counts_each_one(tmp_path):
    path = _log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    start = sum(len(x) for x in lines[:20])  # lines 21-23 zeroed, their newlines but the last
    data = bytearray(path.read_bytes())
    width = sum(len(x) for x in lines[20:23]) - 1
    data[start : start + width] = bytes(width)
    path.write_bytes(bytes(data))
    damage = read_events(path).damage
    assert damage is not None and damage.missing == 3 and damage.good_lines == 20, damage
    assert len(read_events(path).records) == N - 3


def test_an_attached_damaged_log_without_its_end_says_why(tmp_path):
    from cockpit.run_state import RunState

    path = _log(tmp_path, 5)
    _keep_lines(path, 3)
    state = RunState(read_only=True)
    state.observe([damage_alert(path), *read_events(path).records])
    state.writer(False)
    assert (
        state.label() == "attached, read-only · not running (no end record: the run log is damaged) at step 2"
    )
