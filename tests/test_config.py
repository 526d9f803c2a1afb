"""Config validation: Axolotl keys honoured, unknown keys named with a suggestion, exit 2 from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.config.config import load_config
from engine.errors import UserError
from tests.conftest import DEMO_DATA, base_config, cli, cli_here


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def minimal(**over) -> str:
    return yaml.safe_dump(base_config("some/model", **over), sort_keys=False)


def test_demo_config_loads():
    config, notes = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert config.base_model == "builtin:tiny-qwen3"
    assert Path(config.datasets[0].path).is_file()
    assert notes == []


def test_unknown_key_suggests_nearest(tmp_path):
    p = write(tmp_path, minimal() + "learning_rte: 0.1\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "learning_rte" in e.value.message and "learning_rate" in e.value.fix
    assert f"{p}:" in e.value.message  # names the file and line


def test_unknown_nested_key(tmp_path):
    raw = base_config("m")
    raw["datasets"][0]["tpye"] = "alpaca"
    p = write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "datasets.0.tpye" in e.value.message and "type" in e.value.fix


def test_bad_value_names_key_value_and_allowed(tmp_path):
    p = write(tmp_path, minimal(adapter="dora"))
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "adapter" in e.value.message and "'dora'" in e.value.message
    assert "lora" in e.value.fix and "qlora" in e.value.fix


def test_negative_number_rejected(tmp_path):
    p = write(tmp_path, minimal(micro_batch_size=0))
    with pytest.raises(UserError, match="micro_batch_size"):
        load_config(p)


def test_unsupported_axolotl_key_is_named(tmp_path):
    p = write(tmp_path, minimal() + "peft_use_dora: true\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "`peft_use_dora` is an Axolotl key this engine does not support" in e.value.message


def test_deepspeed_json_must_exist(tmp_path):
    p = write(tmp_path, minimal() + "deepspeed: ds.json\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert "`deepspeed`: ds.json: no such file" in e.value.message and str(p) in e.value.message


def test_noted_keys_are_accepted_with_a_note(tmp_path):
    p = write(tmp_path, minimal() + "swanlab_project: leviathan\nflash_attention: true\n")
    config, notes = load_config(p)
    assert len(notes) == 2 and "swanlab_project" in notes[0] and "has no effect" in notes[0]


def test_missing_required_key(tmp_path):
    p = write(tmp_path, "datasets:\n  - path: x.jsonl\n")
    with pytest.raises(UserError, match="base_model"):
        load_config(p)


def test_yaml_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "base_model: a\ndatasets: [\n  - oops: : :\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert f"{p}:" in e.value.message and "YAML" in e.value.message


def test_relative_paths_resolve_against_config_folder_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(DEMO_DATA.read_text())
    p = write(tmp_path, yaml.safe_dump(base_config("m", data="data/a.jsonl")))
    monkeypatch.chdir("/")
    config, _ = load_config(p)
    assert config.datasets[0].path == str((tmp_path / "data" / "a.jsonl").resolve())


def test_val_set_size_count_must_be_whole(tmp_path):
    with pytest.raises(UserError, match="val_set_size"):
        load_config(write(tmp_path, minimal(val_set_size=2.5)))
    config, _ = load_config(write(tmp_path, minimal(val_set_size=20)))
    assert config.val_set_size == 20


@pytest.mark.parametrize(
    "extra,needle",
    [
        ("learning_rte: 0.1\n", "did you mean `learning_rate`"),
        ("fsdp: [fullshard]\n", "`fullshard` is not an fsdp option"),
        ("rl: dpo\n", "does not support"),
        ("lora_r: many\n", "lora_r"),
    ],
)
def test_cli_exit_2_without_traceback(tmp_path, extra, needle):
    p = write(tmp_path, minimal() + extra)
    r = cli_here("check", p, "--no-tokenizer")
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_qlora_without_cuda_is_a_clear_exit_2(tmp_path, tiny_model, write_config):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    p = write_config(tiny_model("qwen3"), adapter="qlora")
    r = cli_here("train", p, "--headless")
    assert r.returncode == 2, r.stderr
    assert "needs an NVIDIA GPU" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_every_command_without_importing_torch():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("train", "attach", "check", "sample", "chat", "eval", "merge", "quantize", "export", "push"):
        assert cmd in r.stdout
    # --help answers at once because nothing heavy is imported for it.
    r = cli("--help", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()}
    assert not imported & {"torch", "transformers", "trl", "textual", "datasets"}
