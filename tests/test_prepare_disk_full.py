"""A full disk while preparing the data, on a real small tmpfs: a message that says so, exit 2,
nothing half-written kept, and the same command works once there is room. Full exactly at the
fingerprint memo leaves a complete cache that later starts still use."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from engine.config.config import validate
from engine.data import prepare
from engine.model.model import load_tokenizer
from tests.conftest import DEMO_DATA, base_config, cli_here, fill_disk


def _setup(tmp_path: Path, model, disk: Path, copies: int) -> tuple[Path, dict]:
    data = tmp_path / "data.jsonl"
    data.write_text(DEMO_DATA.read_text() * copies)
    raw = base_config(model, data, output_dir=str(tmp_path / "out"), dataset_prepared_path=str(disk / "prep"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg, raw


def test_disk_full_says_so_and_the_same_command_continues(tmp_path, tiny_model, tmpfs):
    disk = tmpfs("256k")
    cfg, _ = _setup(tmp_path, tiny_model("qwen3"), disk, copies=8)  # ~600 KB of prepared rows
    r = cli_here("preprocess", cfg)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{disk / 'prep'}: the disk is full while preparing the data" in r.stderr
    assert re.search(r"it needs (about|more than) [\d.,]+ [KM]iB; [\d.,]+ [KM]iB free there", r.stderr), (
        r.stderr
    )
    assert not [
        p.name for p in (disk / "prep").iterdir() if p.name.startswith(".tmp-")
    ]  # nothing half-written
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    r = cli_here("preprocess", cfg)
    assert r.returncode == 0 and "prepared in" in r.stdout, r.stderr


def _pages(folder: Path) -> int:
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in folder.iterdir())


def test_full_exactly_at_the_memo_keeps_the_cache_usable(tmp_path, tiny_model, tmpfs):
    model = tiny_model("qwen3")
    tok = load_tokenizer(str(model))
    disk = tmpfs("4m")
    _, raw = _setup(tmp_path, model, disk, copies=2)
    config = validate(raw, tmp_path / "c.yaml")[0]
    sizing = prepare.prepare(config, tok, tmp_path / "sizing", workers=1)  # same bytes, elsewhere
    fill_disk(disk, leave=_pages(sizing.folder))  # room for the cache, none for the memo
    first = prepare.prepare(config, tok, disk / "prep", workers=1)
    assert not first.cached and not (disk / "prep" / "fingerprints.json").exists()
    assert any("fingerprints.json: not written" in n for n in first.notes), first.notes
    assert not [p for p in (disk / "prep").iterdir() if p.name.startswith(".fingerprints")]
    again = prepare.prepare(config, tok, disk / "prep", workers=1)  # the disk still full
    assert again.cached and again.encoded_rows == 0 and again.folder == first.folder
    shutil.rmtree(tmp_path / "sizing")
