"""The prepared data is verified on read: damaged bytes are rebuilt with a note, never trained on.

One tiny preparation per module; each test damages a copy of it the way a disk, a copy tool or
a hand edit would, then asks for the prepared data again. What must come back is the pristine
bytes (rebuilt from the data files), a note naming the damaged file, and never the damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.config.config import validate
from engine.data import prepare, prepcache, prepcheck
from engine.model.model import load_tokenizer
from tests.conftest import DEMO_DATA, base_config, cli_here


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_model):
    """(config, tokenizer, root of one committed preparation, its files' bytes)."""
    tmp = tmp_path_factory.mktemp("integrity")
    model = tiny_model("qwen3")
    data = tmp / "data.jsonl"
    data.write_bytes(DEMO_DATA.read_bytes())
    raw = base_config(model, data, output_dir=str(tmp / "out"), val_set_size=0.2)
    config = validate(raw, tmp / "c.yaml")[0]
    tok = load_tokenizer(str(model))
    first = prepare.prepare(config, tok, tmp / "prepared", workers=1)
    files = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    return config, tok, tmp / "prepared", first.folder.name, files


def _copy(pristine, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "prepared"
    shutil.copytree(pristine[2], root)
    return root, root / pristine[3]


def _rewrite_rows(folder: Path, change) -> None:
    """rows.arrow written again with ``change(ids, mask) -> (ids, mask)`` applied to its values."""
    import pyarrow as pa

    from engine.data.prepare import rows_batch

    table = pa.ipc.open_stream(pa.OSFile(str(folder / "rows.arrow"))).read_all().combine_chunks()
    ids = table.column("input_ids").chunk(0)
    mask = table.column("mask").chunk(0)
    lengths = np.diff(ids.offsets.to_numpy())
    new_ids, new_mask = change(ids.values.to_numpy().copy(), mask.values.to_numpy().copy())
    batch = rows_batch(new_ids, new_mask, lengths, table.column("category").to_pylist())
    with pa.OSFile(str(folder / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)


def _all_mask(folder):
    _rewrite_rows(folder, lambda i, m: (i, np.ones_like(m)))


def _reordered(folder):
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.OSFile(str(folder / "rows.arrow"))).read_all()
    table = table.take(np.arange(table.num_rows)[::-1].copy())
    with pa.OSFile(str(folder / "rows.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)


def _zero_block(folder):
    path = folder / "rows.arrow"
    b = bytearray(path.read_bytes())
    mid = len(b) // 2
    b[mid : mid + 512] = bytes(512)
    path.write_bytes(bytes(b))


def _bit_flip(name):
    def damage(folder):
        path = folder / name
        b = bytearray(path.read_bytes())
        b[len(b) - 3] ^= 0x04
        path.write_bytes(bytes(b))

    return damage


def _truncate(name):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def _npy_header(folder):
    path = folder / "train_order.npy"
    b = bytearray(path.read_bytes())
    b[10:20] = b"{'descr': "[:10]  # a header that no longer parses as the dict numpy wrote
    b[8] = 0xFF
    path.write_bytes(bytes(b))


def _delete(name):
    return lambda folder: (folder / name).unlink()


def _garbage_meta(folder):
    (folder / "meta.json").write_text('{"version": 3, "rows": ')


def _meta_value(folder):
    """Still valid JSON, one value changed (a flipped bit in a digit)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["tokens"] += 1
    (folder / "meta.json").write_text(json.dumps(meta))


DAMAGE = {
    "every mask byte set": (_all_mask, "rows.arrow"),
    "rows reordered": (_reordered, "rows.arrow"),
    "a block zeroed": (_zero_block, "rows.arrow"),
    "a bit flipped in the rows": (_bit_flip("rows.arrow"), "rows.arrow"),
    "rows truncated": (_truncate("rows.arrow"), "rows.arrow"),
    "an index truncated": (_truncate("train_bounds.npy"), "train_bounds.npy"),
    "an index's header damaged": (_npy_header, "train_order.npy"),
    "an index deleted": (_delete("val_order.npy"), "val_order.npy"),
    "meta.json cut short": (_garbage_meta, "meta.json"),
    "a value in meta.json changed": (_meta_value, "meta.json"),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_damage_is_rebuilt_with_a_note(pristine, tmp_path, what):
    config, tok, _, _, files = pristine
    damage, name = DAMAGE[what]
    root, folder = _copy(pristine, tmp_path)
    damage(folder)
    got = prepare.prepare(config, tok, root, workers=1)
    assert not got.cached and got.encoded_rows > 0  # rebuilt from the data files
    assert len(got.notes) == 1 and "damaged" in got.notes[0] and name in got.notes[0], got.notes
    assert {p.name: p.read_bytes() for p in got.folder.iterdir()} == files
    again = prepare.prepare(config, tok, root, workers=1)
    assert again.cached and not again.notes


def _ids_with_checksums(folder: Path, change) -> None:
    """Rows changed and the checksums recorded again: what only the value checks can catch."""
    _rewrite_rows(folder, change)
    meta = json.loads((folder / "meta.json").read_text())
    meta["integrity"] = prepcheck.digests(folder)
    meta["digest"] = prepcache.meta_digest(meta)  # a consistent forgery: only the value checks can tell
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda i, m: (np.where(i == i.max(), 10**6, i).astype(np.int32), m), "vocabulary"),
        (lambda i, m: (i, np.where(m == 1, 3, m).astype(np.int8)), "mask values"),
    ],
)
def test_values_out_of_range_are_caught_behind_valid_checksums(pristine, tmp_path, change, why):
    config, tok, _, _, files = pristine
    root, folder = _copy(pristine, tmp_path)
    _ids_with_checksums(folder, change)
    got = prepare.prepare(config, tok, root, workers=1)
    assert not got.cached and why in got.notes[0]
    assert (got.folder / "rows.arrow").read_bytes() == files["rows.arrow"]


def test_index_out_of_bounds_behind_valid_checksums(pristine, tmp_path):
    config, tok, _, _, _ = pristine
    root, folder = _copy(pristine, tmp_path)
    order = np.load(folder / "train_order.npy")
    order[0] = 10**6
    np.save(folder / "train_order.npy", order)
    meta = json.loads((folder / "meta.json").read_text())
    meta["integrity"] = prepcheck.digests(folder)
    meta["digest"] = prepcache.meta_digest(meta)  # a consistent forgery: only the value checks can tell
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(prepcheck.Damaged, match="train_order.npy: row numbers outside"):
        prepare._load(folder, len(tok))


def test_check_says_the_cache_is_damaged_and_preprocess_rebuilds(pristine, tmp_path):
    config, _, _, _, files = pristine
    root, folder = _copy(pristine, tmp_path)
    raw = base_config(config.base_model, config.datasets[0].path, output_dir=config.output_dir)
    raw.update(val_set_size=0.2, dataset_prepared_path=str(root))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    r = cli_here("check", cfg)
    assert r.returncode == 0, r.stderr
    assert f"prepared data: {folder}: verified" in r.stdout
    _truncate("rows.arrow")(folder)
    r = cli_here("check", cfg)
    assert "prepared data DAMAGED" in r.stdout and "rows.arrow" in r.stdout and "Traceback" not in r.stderr
    r = cli_here("preprocess", cfg)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "note: prepared data damaged" in r.stderr and "rows.arrow" in r.stderr
    assert (folder / "rows.arrow").read_bytes() == files["rows.arrow"]


def test_a_lost_memo_still_finds_the_complete_cache(pristine, tmp_path):
    """The fingerprint memo is a shortcut: without it the cache's own meta.json has the hash."""
    config, tok, _, _, _ = pristine
    root, _ = _copy(pristine, tmp_path)
    (root / "fingerprints.json").unlink()
    got = prepare.prepare(config, tok, root, workers=1)
    assert got.cached and got.encoded_rows == 0
