"""The Data tab: its counts, read from the prepared data's statistics, equal `check --tokens`'s."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import DEMO_DATA, base_config, cli_here
from textual.app import App, ComposeResult

from cockpit.widgets.data_pane import DataPane
from engine.config.config import load_config
from engine.data.datasummary import data_summary, find_prepared

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("datatab")
    rows = DEMO_DATA.read_text().splitlines()
    long_row = {
        "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "abyss " * 400}]
    }
    data = root / "mix.jsonl"
    data.write_text("\n".join([*rows[:150], json.dumps(long_row), '{"messages": [', *rows[150:]]) + "\n")
    raw = base_config(
        tiny_model("qwen3"),
        data,
        val_set_size=0.1,
        skip_bad_rows=True,
        output_dir=str(root / "out"),
        logs_dir=str(root / "logs"),
        run_name="datatab",
    )
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = cli_here("preprocess", cfg)
    assert done.returncode == 0, done.stderr
    config, _ = load_config(cfg)
    return cfg, raw, find_prepared(config)


def _check_tokens(cfg) -> dict[str, tuple[int, int, int]]:
    """category -> (rows, tokens, trained) as `check --tokens` prints them."""
    out = cli_here("check", cfg, "--tokens")
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("tokens per _category")) + 2
    got = {}
    for line in lines[start:]:
        parts = line.split()
        if not parts or parts[0] == "total":
            break
        got[parts[0]] = (
            int(parts[1].replace(",", "")),
            int(parts[2].replace(",", "")),
            int(parts[4].replace(",", "")),
        )
    return got


async def test_the_tab_shows_check_tokens_counts(prepared):
    cfg, raw, folder = prepared
    want = _check_tokens(cfg)
    assert len(want) == 10  # the demo's nine categories and the row without one

    class Host(App):
        def compose(self) -> ComposeResult:
            yield DataPane(raw, folder=folder)

    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        table = app.query_one("#data-categories")
        shown = {}
        for key in table.rows:
            row = table.get_row(key)
            shown[str(row[0])] = tuple(int(str(row[i]).replace(",", "")) for i in (1, 3, 5))
        assert shown == want
        head = str(app.query_one("#data-head").render())
        summary = data_summary(folder)
        assert "bad rows: 1" in head and "truncated 1" in head
        bad = app.query_one("#data-bad")
        assert str(bad.get_row_at(0)[0]) == "mix.jsonl:152"
    assert summary.stats.too_long_count == 1 and 0 < summary.packing_efficiency <= 1


def test_histogram_and_packing_from_the_files(prepared):
    _, _, folder = prepared
    import numpy as np
    import pyarrow as pa

    s = data_summary(folder)
    bins = s.histogram()
    assert sum(b[2] for b in bins) == sum(s.stats.lengths.values())
    assert bins[-1][0] == s.sequence_len and bins[-1][2] == 1  # the one row longer than sequence_len
    with pa.memory_map(str(folder / "rows.arrow")) as src:
        table = pa.ipc.open_stream(src).read_all()
    lengths = np.array([len(x) for x in table.column("input_ids").to_pylist()])
    packs = sum(len(np.load(folder / f"{x}_bounds.npy")) - 1 for x in ("train", "val"))
    assert s.packing_efficiency == pytest.approx(lengths.sum() / (packs * s.sequence_len))
