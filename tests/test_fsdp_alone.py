"""Axolotl's qlora-fsdp example (tests/axolotl_fsdp/, vendored unchanged) on one process: a
clear refusal naming the FSDP keys and the fix, exit 2, before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import cli_here

EXAMPLE = Path(__file__).parent / "axolotl_fsdp" / "llama-3__qlora-fsdp-70b.yaml"


def test_fsdp_config_on_one_process_names_the_keys_and_the_fix(tmp_path, tiny_model):
    raw = yaml.safe_load(EXAMPLE.read_text())
    data = tmp_path / "alpaca.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"say {i}", "input": "", "output": str(i)}) + "\n" for i in range(8)
        )
    )
    raw["base_model"], raw["datasets"][0]["path"] = str(tiny_model("llama")), str(data)  # offline stand-ins
    cfg = tmp_path / "fsdp.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = cli_here("train", cfg, "--headless", "--logs-dir", tmp_path / "logs", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (
        "`fsdp`, `fsdp_config`: FSDP shards the model over several processes and this run has one" in r.stderr
    )
    assert "--nproc N" in r.stderr and "remove `fsdp`, `fsdp_config`" in r.stderr
    assert "only works in distributed training" not in r.stderr
    assert "problems stop this run" in r.stderr  # listed with the others (here: 4-bit needs CUDA)


def test_the_trainer_refuses_it_too(tmp_path, tiny_model):
    """What a start that skipped the CLI's checks (``engine.train.train.run``) meets."""
    import pytest

    from engine.config.config import validate
    from engine.errors import UserError
    from engine.train.train import run
    from tests.conftest import base_config

    raw = base_config(tiny_model("qwen3"), output_dir=str(tmp_path / "out"), logs_dir=str(tmp_path / "logs"))
    raw.update(fsdp_version=2, fsdp_config={"offload_params": False})
    config = validate(raw, tmp_path / "c.yaml")[0]
    with pytest.raises(UserError, match="`fsdp_config`, `fsdp_version`: FSDP shards the model"):
        run(config, resume="never")
