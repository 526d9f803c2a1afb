"""The eval loss per ``_category``: recorded at each evaluation of a real tiny run, and equal to
the model's loss on each held-out row computed here with plain transformers, grouped."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from conftest import train_tiny

from engine.run.events import read_events


@pytest.fixture(scope="module")
def categorized_run(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("bycat")
    model = tiny_model("qwen3")
    result = train_tiny(
        model, root, "bycat", max_steps=8, eval_steps=4, save_steps=4, val_set_size=0.2, lora_dropout=0.0
    )
    return root, model, result


def _held_out_rows(root):
    """(ids, mask, category) of every held-out row, read from the prepared files as written."""
    import pyarrow as pa

    (folder,) = [p.parent for p in (root / "out").rglob("rows.arrow")]
    with pa.memory_map(str(folder / "rows.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    val_rows = np.load(folder / "val_rows.npy")
    ids, mask, cats = (table.column(c).to_pylist() for c in ("input_ids", "mask", "category"))
    return [(ids[i], mask[i], cats[i]) for i in val_rows.tolist()]


def _losses_by_category(model_path, adapter, rows) -> dict[str, float]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    total, count = defaultdict(float), defaultdict(int)
    with torch.no_grad():
        for ids, mask, cat in rows:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1]
            target = x[0, 1:]
            keep = torch.tensor(mask[1:]) != 0
            nll = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum")
            total[cat] += float(nll)
            count[cat] += int(keep.sum())
    return {c: total[c] / count[c] for c in total if count[c]}


@pytest.mark.slow
def test_eval_records_carry_the_loss_of_each_category(categorized_run):
    root, model, result = categorized_run
    records = read_events(result.run_dir / "events.jsonl").records
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    rows = _held_out_rows(root)
    want_categories = {c for _, m, c in rows if any(m[1:])}
    assert len(want_categories) >= 5  # the demo data's categories reach the held-out rows
    for r in evals:
        got = r["by_category"]
        assert set(got) == want_categories
        want = _losses_by_category(model, root / "out" / f"checkpoint-{r['step']}", rows)
        for cat, loss in want.items():
            assert got[cat] == pytest.approx(loss, rel=1e-4, abs=1e-5), cat
        # The overall eval loss lies between the categories' (a mean of them, weighted).
        assert min(got.values()) - 1e-6 <= r["eval_loss"] <= max(got.values()) + 1e-6
        assert all(math.isfinite(v) for v in got.values())


@pytest.mark.parametrize("cats", [{"coding": 6.24, "identity": 2.05, "esoteric": 5.1, "general": 4.1}, {}])
def test_headless_names_the_categories_with_the_highest_eval_loss(cats):
    import io

    from engine.cli.headless import Progress

    out = io.StringIO()
    Progress(out)({"kind": "eval", "step": 25, "eval_loss": 4.13, "perplexity": 62.3, "by_category": cats})
    line = out.getvalue().strip()
    assert line.startswith("eval step 25: eval_loss 4.1300 ppl 62.300")
    if cats:
        assert line.endswith("; highest by _category: coding 6.240, esoteric 5.100, general 4.100")
    else:
        assert "_category" not in line
