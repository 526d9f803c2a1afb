"""One huge row (60 MB) is cut to what sequence_len can use before tokenizing: memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEMO_DATA

ROW_MB = 60

_PROBE = """
import json, resource, sys
from pathlib import Path
from engine.data import prepare, prepwork
from engine.config.config import validate
from engine.model.model import load_tokenizer
from tests.conftest import base_config
model, data, root, policy = sys.argv[1:5]
config = validate(base_config(model, data, output_dir=root + "/out", too_long=policy), Path(root) / "c.yaml")[0]
tok = load_tokenizer(model)
stats = prepare.check(config, tok, workers=1)
p = prepare.prepare(config, tok, root + "/prepared-" + policy, workers=1)
print(json.dumps({
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "check_too_long": stats.too_long_count, "truncated": p.truncated, "dropped": p.dropped_too_long,
    "cut": p.cut, "rows": len(p.train), "max_len": max(p.stats.lengths),
    "budget": 128 * prepwork.max_token_chars(tok),
}))
"""


@pytest.fixture(scope="module")
def huge_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "data.jsonl"
    words = "the quick brown fox jumps over the lazy dog and keeps running far away "
    huge = words * (ROW_MB * 2**20 // len(words))
    with path.open("w") as f:
        f.write(DEMO_DATA.read_text())
        f.write(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "Tell me everything."},
                        {"role": "assistant", "content": huge},
                    ]
                }
            )
            + "\n"
        )
    assert path.stat().st_size > ROW_MB * 2**20
    return path


@pytest.mark.parametrize("policy", ["truncate", "drop"])
@pytest.mark.slow
def test_a_huge_row_is_cut_before_tokenizing(tmp_path, tiny_model, huge_data, policy):
    model = tiny_model("qwen3")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, str(model), str(huge_data), str(tmp_path), policy],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(out)
    demo_rows = len(DEMO_DATA.read_text().splitlines())
    assert out["cut"] == 1 and out["check_too_long"] >= 1
    # a tokenized 40 MB row took 10 GB before; the file is read line by line and the row is cut
    assert out["peak_mb"] < 1500, out
    if policy == "truncate":
        assert out["truncated"] >= 1 and out["rows"] >= demo_rows - out["dropped"]
        assert out["max_len"] <= out["budget"]  # the cut text's tokens, never the whole row's
    else:
        assert out["dropped"] >= 1 and out["truncated"] == 0
