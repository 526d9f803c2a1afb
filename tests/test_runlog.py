"""The run log writer against what happens to its file for real: another writer's half line,
the file deleted or replaced mid-run, a full disk (a real tmpfs where one can be mounted)."""

from __future__ import annotations

import os

import pytest

from engine.run.events import RunLog, read_events
from tests.conftest import fill_disk


def test_a_half_line_from_another_writer_never_glues_the_next_record(tmp_path):
    path = tmp_path / "events.jsonl"
    log = RunLog(path)
    log.emit("step", step=1, loss=2.0)
    with open(path, "ab") as other:  # someone else appends, and stops mid-line
        other.write(b'{"t":2,"kind":"st')
    log.emit("step", step=2, loss=1.5)
    log.emit("step", step=3, loss=1.2)
    log.close()
    contents = read_events(path)
    assert [r["step"] for r in contents.records] == [1, 2, 3]
    assert contents.bad_lines == [2]


def test_a_deleted_or_replaced_log_is_opened_again(tmp_path):
    path = tmp_path / "events.jsonl"
    log = RunLog(path)
    log.emit("step", step=1)
    path.unlink()  # an operator's `rm`, mid-run
    log.emit("step", step=2)
    records = read_events(path).records  # the loss is said in the new log (engine.run.seal)
    assert [(r["kind"], r.get("step"), r.get("rule")) for r in records] == [
        ("step", 2, None),
        ("alert", None, "run_log_damaged"),
    ]
    assert "1 records were sealed" in records[1]["message"]
    new = tmp_path / "new.jsonl"
    new.write_bytes(b'{"t":1,"kind":"note","message":"rotated"}\n')
    os.replace(new, path)  # replaced by another (shorter) file
    log.emit("step", step=3)
    log.close()
    records = read_events(path).records
    assert [(r.get("step"), r.get("rule")) for r in records] == [
        (None, None),
        (3, None),
        (None, "run_log_damaged"),
    ]


@pytest.fixture
def tiny_disk(tmpfs):
    return tmpfs("1m")


def test_a_full_disk_leaves_no_torn_line_and_loses_no_record(tiny_disk):
    path = tiny_disk / "events.jsonl"
    log = RunLog(path)
    log.emit("step", step=1, loss=2.0)
    filler = fill_disk(tiny_disk)
    big = "x" * 6000  # more than the page the file's tail may still have
    log.emit("note", step=2, message=big)
    log.emit("note", step=3, message=big)
    assert log.error is not None and len(log.pending) == 2
    contents = read_events(path)
    assert [r["step"] for r in contents.records] == [1] and contents.bad_lines == []
    assert path.read_bytes().endswith(b"\n")
    log.release_reserve()  # room for the alert, as engine.train.guard does
    log.emit("alert", rule="disk_full", message="logs disk full")
    assert log.error is None and [r.get("step") for r in read_events(path).records] == [1, 2, 3, None]
    filler.unlink()
    assert log.restore_reserve() and log.retry()
    log.close()
    assert read_events(path).bad_lines == []
