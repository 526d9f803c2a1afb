"""The Data tab on a large corpus: how long its numbers take to read from the prepared data.

    python benchmarks/data_tab.py make /tmp/lev-data100k --rows 100000   # data + config
    leviathan-cockpit preprocess /tmp/lev-data100k/data100k.yaml          # once (minutes)
    python benchmarks/data_tab.py time /tmp/lev-data100k/data100k.yaml    # the table below

The data is chat rows in the guide's shape (``messages`` and ``_category`` over the guide's
categories), answers of 5 to 400 words so that some rows pass ``sequence_len``; a few bad rows.
``time`` reads the summary (engine.data.datasummary) and, as the plain alternative, counts
rows and tokens per category by reading every prepared row's category and ids with
``datasets`` (what a tab without stored statistics would have to do; re-tokenizing, as
``check --tokens`` does, is slower still).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

CATEGORIES = [
    "general",
    "coding",
    "reasoning",
    "knowledge",
    "psychology",
    "philosophy",
    "esoteric",
    "redteam",
    "identity",
]
WORDS = [
    "abyss",
    "balance",
    "chaos",
    "depth",
    "guardian",
    "mind",
    "tarot",
    "tower",
    "house",
    "python",
    "grief",
]


def make(folder: Path, rows: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    data = folder / f"data{rows // 1000}k.jsonl"
    with open(data, "w") as f:
        for i in range(rows):
            if i % 20_000 == 7:
                f.write('{"messages": [{"role": "user", "content": "cut off"\n')  # a bad row
                continue
            n = min(int(rng.paretovariate(1.2) * 5), 400)
            answer = " ".join(rng.choice(WORDS) for _ in range(n))
            row = {
                "messages": [
                    {"role": "user", "content": f"Question {i}: tell me about {rng.choice(WORDS)}."},
                    {"role": "assistant", "content": answer},
                ],
                "_category": rng.choice(CATEGORIES),
            }
            f.write(json.dumps(row) + "\n")
    config = folder / f"data{rows // 1000}k.yaml"
    config.write_text(
        f"base_model: builtin:tiny-qwen3\ndatasets:\n  - path: {data}\n    type: chat_template\n"
        "adapter: lora\nlora_r: 8\nlora_alpha: 16\nsequence_len: 256\nsample_packing: true\n"
        "micro_batch_size: 4\nnum_epochs: 1\nmax_steps: 20\nlearning_rate: 0.001\nval_set_size: 0.01\n"
        f"skip_bad_rows: true\noutput_dir: {folder}/out\nlogs_dir: {folder}/logs\nrun_name: data{rows // 1000}k\n"
    )
    return config


def time_open(config_path: Path) -> None:
    from engine.config.config import load_config
    from engine.data.datasummary import data_summary, find_prepared

    config, _ = load_config(config_path)
    t0 = time.perf_counter()
    folder = find_prepared(config)
    summary = data_summary(folder)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = _plain_counts(folder)
    theirs = time.perf_counter() - t0
    assert plain == (summary.rows, summary.tokens), f"kept rows and tokens differ: {plain}"
    drawn = _time_tab(config_path, folder)
    print(f"the tab in a running app: {drawn:.3f} s from the data record to its numbers drawn")
    print("| rows | summary (s) | plain pass over the rows (s) | ratio |\n|---|---|---|---|")
    print(f"| {summary.rows:,} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.0f}x |")


def _time_tab(config_path: Path, folder: Path) -> float:
    """Seconds from handing the Data tab its prepared folder to the numbers on the screen."""
    import asyncio

    import yaml
    from textual.app import App

    from cockpit.widgets.data_pane import DataPane

    raw = yaml.safe_load(config_path.read_text())
    took = []

    class Host(App):
        def compose(self):
            yield DataPane(raw)

    async def go():
        app = Host()
        async with app.run_test(size=(120, 40)) as pilot:
            pane = app.query_one(DataPane)
            t0 = time.perf_counter()
            pane.show(folder)
            await pilot.pause()
            took.append(time.perf_counter() - t0)

    asyncio.run(go())
    return took[0]


def _plain_counts(folder: Path):
    from collections import Counter

    from datasets import Dataset

    rows = Dataset.from_file(str(folder / "rows.arrow"))
    n, tok = Counter(), Counter()
    for r in rows:
        n[r["category"]] += 1
        tok[r["category"]] += len(r["input_ids"])
    return sum(n.values()), sum(tok.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("folder", type=Path)
    m.add_argument("--rows", type=int, default=100_000)
    t = sub.add_parser("time")
    t.add_argument("config", type=Path)
    args = ap.parse_args()
    if args.cmd == "make":
        print(make(args.folder, args.rows))
    else:
        time_open(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
