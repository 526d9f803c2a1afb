"""What ``--force`` may replace, and the leftovers of killed merges (engine.ship.outfolder)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.errors import UserError
from engine.run import lineage
from engine.ship.outfolder import check_output


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_force_replaces_only_an_empty_folder_or_one_this_tool_wrote(tmp_path):
    model = tmp_path / "merged"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x")
    lineage.write_info(model, {"kind": "merged"})
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(model, True, []) == model and check_output(empty, True, []) == empty
    (model / lineage.INFO).unlink()
    with pytest.raises(UserError, match=r"merged: a folder this tool did not write \(model.safetensors\)"):
        check_output(model, True, [])
    link = tmp_path / "link"
    os.symlink(empty, link)
    with pytest.raises(UserError, match="a symlink"):
        check_output(link, True, [])


def test_leftovers_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    for name in (f".m.partial-{dead}", f".m.old-{dead}", f".m.partial-{live}", ".m.partial-x", "keep"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"weights")
    check_output(tmp_path / "m", False, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".m.partial-{live}", ".m.partial-x", "keep"]
    )


def test_a_merged_folder_s_weights_are_checked_before_export_push_or_quantize(tmp_path):
    from engine.run.checkpoints import file_digests
    from engine.ship.quantize import check_model_dir

    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen3"}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    lineage.write_info(model, {"kind": "merged", "files": file_digests(model)})
    assert check_model_dir(model) == model
    (model / "config.json").write_text('{"model_type": "qwen3", "edited": true}')  # a hand edit: fine
    assert check_model_dir(model) == model
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[1000] ^= 1
    (model / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(
        UserError, match=r"merged: its files are not as written: model.safetensors has changed"
    ):
        check_model_dir(model)
