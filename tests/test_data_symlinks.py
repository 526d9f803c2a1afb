"""A data folder with symlinked subfolders: every file under it read once, loops and second ways
to the same data refused by name (real folders and links)."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from engine.data import readers
from engine.errors import UserError
from tests.conftest import base_config, cli_here


def _rows(path, n, tag):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"messages": [{"role": "user", "content": f"{tag} {i}"}, {"role": "assistant", "content": "ok"}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data(tmp_path):
    """data/a.jsonl (3 rows), data/linked -> elsewhere/ (4 + 5 rows in two files)."""
    _rows(tmp_path / "data" / "a.jsonl", 3, "a")
    _rows(tmp_path / "elsewhere" / "b.jsonl", 4, "b")
    _rows(tmp_path / "elsewhere" / "deep" / "c.jsonl", 5, "c")
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "linked")
    return tmp_path / "data"


def test_a_symlinked_subfolder_is_read(data):
    got = readers.files_of(str(data))
    assert got == [data / "a.jsonl", data / "linked" / "b.jsonl", data / "linked" / "deep" / "c.jsonl"]


def test_a_loop_is_refused_by_name(data, tmp_path):
    os.symlink(tmp_path / "elsewhere", tmp_path / "elsewhere" / "deep" / "back")
    with pytest.raises(UserError, match=r"deep/back: a symlink to the folder .*linked") as e:
        readers.files_of(str(data))
    assert "(a loop)" in str(e.value) and "back" in str(e.value)


def test_the_same_data_twice_is_refused(data, tmp_path):
    os.symlink(tmp_path / "elsewhere", data / "again")
    with pytest.raises(UserError, match="already read: its data would count twice"):
        readers.files_of(str(data))


def test_check_counts_every_row_under_the_links(data, tmp_path, tiny_model):
    raw = base_config(tiny_model("qwen3"), data, output_dir=str(tmp_path / "out"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = cli_here("check", cfg, "--no-tokenizer")
    assert r.returncode == 0, r.stderr
    per_category = r.stdout.split("rows per _category:")[1].split()
    assert per_category[0] == "12", r.stdout  # 3 + 4 + 5, the linked ones included
