"""Axolotl's own LoRA/QLoRA SFT example configs (tests/axolotl_examples/, see SOURCES) run here
with only ``base_model`` and the dataset paths replaced: a tiny model of the same family and
local rows in the dataset's shape. ``check`` passes on every one; two steps of training run
where this machine can (a 4-/8-bit model or optimizer on a CPU machine exits 2 naming CUDA).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cockpit.cli import main
from engine.model.demo import demo_rows

EXAMPLES = Path(__file__).parent / "axolotl_examples"
NAMES = sorted(p.name for p in EXAMPLES.glob("*.y*ml"))


def _raw(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _named_tokens() -> list[str]:
    """Tokens the configs name (special_tokens, eot_tokens): the tiny tokenizers carry them, as
    the real tokenizers of those models do."""
    out = set()
    for name in NAMES:
        raw = _raw(name)
        out |= set((raw.get("special_tokens") or {}).values()) | set(raw.get("eot_tokens") or [])
    return sorted(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from engine.model.tiny import build_tiny_model

    root, extra = tmp_path_factory.mktemp("axolotl-models"), _named_tokens()
    return {
        arch: build_tiny_model(root / arch, arch=arch, extra_special=extra) for arch in ("llama", "qwen3")
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One file per row shape the examples read, from the demo conversations."""
    root = tmp_path_factory.mktemp("axolotl-data")
    # 100 rows: the examples' smallest slice (train[:1%]) still holds one
    pairs = [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in demo_rows()[:100]]
    shapes = {
        "alpaca": [
            {"instruction": q, "input": "" if i % 2 else "context", "output": a}
            for i, (q, a) in enumerate(pairs)
        ],
        "messages": [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs
        ],
        "conversations": [
            {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in pairs
        ],
    }
    paths = {}
    for shape, rows in shapes.items():
        paths[shape] = root / f"{shape}.jsonl"
        paths[shape].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _shape(ds: dict) -> str:
    if ds.get("type", "").startswith("alpaca"):
        return "alpaca"
    return "conversations" if ds.get("field_messages") == "conversations" else "messages"


def _localized(name: str, models: dict, data: dict, folder: Path) -> Path:
    raw = _raw(name)
    raw["base_model"] = str(models["qwen3" if "qwen" in raw["base_model"].lower() else "llama"])
    for ds in raw["datasets"]:
        ds["path"] = str(data[_shape(ds)])
    out = folder / name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_enough_examples_are_vendored():
    assert len(NAMES) >= 25
    sources = (EXAMPLES / "SOURCES").read_text()
    assert all(f"{n} -> examples/" in sources for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_unchanged(name, models, data, tmp_path, capsys):
    path = _localized(name, models, data, tmp_path)
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = [
        int(line.split()[0].replace(",", "")) for line in out.split("rows per _category:")[0].splitlines()[1:]
    ]
    assert sum(rows) >= 1 and "bad rows: 0" in out, out


def _cpu_can_train(raw: dict) -> bool:
    from engine.config.optimizers import needs

    quant = raw.get("adapter") == "qlora" or raw.get("load_in_4bit") or raw.get("load_in_8bit")
    return not quant and needs(raw.get("optimizer") or "adamw_torch_fused", cuda=False) is None


@pytest.mark.slow
def test_two_steps_or_a_clear_refusal(models, data, tmp_path, capsys, monkeypatch):
    """Every config: 2 steps where the CPU can train it, else exit 2 naming CUDA (before loading)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU half of this test; on a GPU every config would train for real")
    trained, refused = [], []
    for name in NAMES:
        path = _localized(name, models, data, tmp_path)
        (tmp_path / Path(name).stem).mkdir()
        monkeypatch.chdir(tmp_path / Path(name).stem)  # the example's relative output_dir lands here
        argv = ["train", "--headless", str(path), "--max-steps", "2", "--resume", "never"]
        code = main([*argv, "--logs-dir", str(tmp_path / "logs"), "--run-name", Path(name).stem])
        err = capsys.readouterr().err
        if _cpu_can_train(_raw(name)):
            assert code == 0 and "completed at step 2" in err, (name, err[-2000:])
            trained.append(name)
        else:
            assert code == 2 and "CUDA" in err, (name, err[-2000:])
            refused.append(name)
    assert trained and refused
