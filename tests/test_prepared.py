"""Prepared data: parallel = one process byte for byte, reused by later starts, rebuilt on change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config.config import validate
from engine.data import prepare
from engine.model.model import load_tokenizer
from tests.conftest import DEMO_DATA, base_config
from tests.wait import wait_for


def _config(model, data, tmp_path, **over):
    raw = base_config(model, data, output_dir=str(tmp_path / "out"), **over)
    return validate(raw, tmp_path / "c.yaml")[0]


def _big_data(tmp_path: Path, copies: int = 6) -> Path:
    """The demo rows several times over (a few ranges' worth), one bad line in the middle."""
    lines = DEMO_DATA.read_text().splitlines()
    rows = lines * copies
    rows.insert(len(rows) // 2, "{not json")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_parallel_and_one_process_give_identical_bytes(tmp_path, tiny_model, monkeypatch):
    model = tiny_model("qwen3")
    data = _big_data(tmp_path)
    monkeypatch.setattr("engine.data.prepwork.RANGE", 64 << 10)  # several ranges from a small file
    monkeypatch.setattr(prepare, "PARALLEL_MIN", 0)
    tok = load_tokenizer(str(model))
    config = _config(model, data, tmp_path, val_set_size=0.1, skip_bad_rows=True)
    one = prepare.prepare(config, tok, tmp_path / "one", workers=1)
    two = prepare.prepare(config, tok, tmp_path / "two", workers=2)
    assert one.encoded_rows == two.encoded_rows > 0 and not one.cached and not two.cached
    a, b = _files(one.folder), _files(two.folder)
    assert a.keys() == b.keys() and {"rows.arrow", "meta.json", "train_order.npy"} <= a.keys()
    assert a == b
    lines = data.read_text().splitlines()
    bad_line = lines.index("{not json") + 1
    assert [(f, n) for f, n, _ in one.stats.bad] == [(str(data), bad_line)]
    good = [json.loads(x) for x in lines if x != "{not json"]
    assert len(one.train) + len(one.val) + one.no_labels + one.dropped_too_long == len(good)
    # narrow dtypes on disk
    feats = one.train.features
    assert feats["input_ids"].feature.dtype == "int32" and feats["mask"].feature.dtype == "int8"


@pytest.mark.slow
def test_second_start_reads_the_cache_and_any_change_rebuilds(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    data = tmp_path / "data.jsonl"
    data.write_bytes(DEMO_DATA.read_bytes())
    tok = load_tokenizer(str(model))
    root = tmp_path / "prepared"
    config = _config(model, data, tmp_path)
    first = prepare.prepare(config, tok, root)
    again = prepare.prepare(config, tok, root)
    assert first.encoded_rows > 0 and again.cached and again.encoded_rows == 0
    assert again.folder == first.folder and _files(again.folder) == _files(first.folder)
    assert again.stats.rows_by_category == first.stats.rows_by_category
    assert again.stats.percentiles() == first.stats.percentiles()

    # the data: one more row, same path
    with data.open("a") as f:
        f.write(DEMO_DATA.read_text().splitlines()[0] + "\n")
    edited = prepare.prepare(config, tok, root)
    assert edited.encoded_rows > 0 and edited.folder != first.folder
    assert not first.folder.exists()  # stale: the same data file and output, superseded
    assert len(edited.train) == len(first.train) + 1

    # an option the bytes depend on
    longer = prepare.prepare(_config(model, data, tmp_path, sequence_len=256), tok, root)
    assert longer.encoded_rows > 0 and longer.folder != edited.folder

    # a dataset's mask option and parse option
    masked = prepare.prepare(
        _config(
            model, data, tmp_path, sequence_len=256, datasets=[{"path": str(data), "train_on_eos": "all"}]
        ),
        tok,
        root,
    )
    assert masked.encoded_rows > 0 and masked.folder != longer.folder
    assert sum(masked.stats.trained_by_category.values()) != sum(longer.stats.trained_by_category.values())
    dropped = prepare.prepare(
        _config(
            model,
            data,
            tmp_path,
            sequence_len=256,
            datasets=[{"path": str(data), "drop_system_message": True}],
        ),
        tok,
        root,
    )
    assert dropped.encoded_rows > 0 and dropped.folder not in (masked.folder, longer.folder)

    # the template (phi_35: the tiny Qwen3 tokenizer has no bos_token for llama3's)
    tok2 = load_tokenizer(str(model), "phi_35")
    other = prepare.prepare(_config(model, data, tmp_path, sequence_len=256), tok2, root)
    assert other.encoded_rows > 0 and other.folder != longer.folder
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [other.folder.name]


_INTERRUPTED = """
from pathlib import Path
import sys
from engine.data import prepare
from engine.config.config import validate
from engine.model.model import load_tokenizer
from tests.conftest import base_config
model, data, root = sys.argv[1:4]
config = validate(base_config(model, data, output_dir=root + "/out"), Path(root) / "c.yaml")[0]
prepare.prepare(config, load_tokenizer(model), root + "/prepared", workers=1)
"""


@pytest.mark.slow
def test_an_interrupted_preparation_is_never_used(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    data = _big_data(tmp_path, copies=40)  # ~12 ranges: time to be killed in the middle
    root = tmp_path / "prepared"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED, str(model), str(data), str(tmp_path)], env=env
    )
    try:

        def writing() -> bool:
            tmps = list(root.glob(".tmp-*/rows.arrow")) if root.is_dir() else []
            return bool(tmps) and tmps[0].stat().st_size > 0

        wait_for(writing, 120, "the preparation to be writing its rows", running=proc, every_s=0.02)
        assert proc.poll() is None, "the preparation ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    left = [p.name for p in root.iterdir() if p.is_dir()]
    assert left and all(n.startswith(".tmp-") for n in left)  # nothing under a key: nothing usable
    tok = load_tokenizer(str(model))
    config = _config(model, data, tmp_path, skip_bad_rows=True)
    fresh = prepare.prepare(config, tok, root, workers=1)
    assert not fresh.cached and fresh.encoded_rows > 0
    assert [p.name for p in root.iterdir() if p.is_dir()] == [fresh.folder.name]  # the dead one removed


@pytest.mark.slow
def test_stop_during_preparation_keeps_nothing(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    data = _big_data(tmp_path)
    tok = load_tokenizer(str(model))
    root = tmp_path / "prepared"
    config = _config(model, data, tmp_path, skip_bad_rows=True)
    seen = []

    def stop_after_first():
        seen.append(1)
        return True

    with pytest.raises(prepare.Stopped):
        prepare.prepare(config, tok, root, workers=1, should_stop=stop_after_first)
    assert seen and not [p for p in root.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_preprocess_then_train_reads_it_back(tmp_path, tiny_model):
    import yaml

    from engine.run.events import read_events
    from tests.conftest import cli_here

    raw = base_config(
        tiny_model("qwen3"), DEMO_DATA, output_dir=str(tmp_path / "out"), logs_dir=str(tmp_path / "logs")
    )
    raw.update(max_steps=1, run_name="p", dataset_prepared_path=str(tmp_path / "prep"), dataset_processes=2)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = cli_here("preprocess", cfg)
    assert r.returncode == 0, r.stderr
    assert "prepared in" in r.stdout and "tokens per _category" in r.stdout and "too long" in r.stdout
    folder = r.stdout.split(":")[0]
    assert Path(folder).parent == tmp_path / "prep"
    r = cli_here("train", cfg, "--headless")
    assert r.returncode == 0, r.stderr
    assert "data read back" in r.stderr
    data = [x for x in read_events(tmp_path / "logs" / "p" / "events.jsonl").records if x["kind"] == "data"]
    assert data[-1]["cached"] is True and data[-1]["encoded_rows"] == 0 and data[-1]["prepared"] == folder
