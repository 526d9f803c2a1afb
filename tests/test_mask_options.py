"""The dataset options that decide what is trained: config validation, and old checkpoints."""

from __future__ import annotations

import pytest

from engine.config.config import validate
from engine.data.masks import MaskOptions
from engine.errors import UserError
from engine.run import checkpoints
from engine.train.resume import check_compatible, fingerprint
from tests.conftest import DEMO_DATA, base_config


def test_options_reach_the_encoder(tmp_path):
    raw = base_config("m", DEMO_DATA, train_on_inputs=True)
    raw["datasets"][0].update(
        roles_to_train=["assistant", "user"], train_on_eos="last", message_field_training="w"
    )
    config, _ = validate(raw, tmp_path / "c.yaml")
    opts = MaskOptions.of(config.datasets[0], config)
    assert opts == MaskOptions(("assistant", "user"), "last", True, "w")
    assert MaskOptions.of(validate(base_config("m"), tmp_path / "c.yaml")[0].datasets[0]) == MaskOptions()


def test_a_bad_train_on_eos_names_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    text = f"base_model: m\ndatasets:\n  - path: {DEMO_DATA}\n    train_on_eos: always\n"
    path.write_text(text)
    import yaml

    with pytest.raises(UserError) as e:
        validate(yaml.safe_load(text), path, text)
    assert f"{path}:4" in str(e.value) and "train_on_eos" in str(e.value)


def test_a_checkpoint_from_before_the_options_still_resumes(tmp_path):
    config, _ = validate(base_config("m"), tmp_path / "c.yaml")
    fp = fingerprint(config)
    old = {
        **fp,
        "datasets": [{"path": d["path"], "type": d["type"], "field_messages": None} for d in fp["datasets"]],
    }
    check_compatible(checkpoints.Checkpoint(tmp_path, 1, {"fingerprint": old}), config)  # no error
    changed = {**fp, "datasets": [{**fp["datasets"][0], "train_on_eos": "none"}]}
    with pytest.raises(UserError, match="different config"):
        check_compatible(checkpoints.Checkpoint(tmp_path, 1, {"fingerprint": changed}), config)
