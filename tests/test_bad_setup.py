"""Bad setup found before any work starts: exit 2 with the file, line or key and the fix, no
traceback, nothing written. Each fault is made for real (a truncated config.json, an empty
folder, a folder where a file belongs, a YAML key given twice)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cockpit.cli import main
from tests.conftest import DEMO_DATA, cli


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def broken_model(tiny_model, tmp_path):
    """broken_model(how) -> a copy of the tiny model folder with its config.json made bad."""

    def make(how: str) -> Path:
        folder = tmp_path / f"model-{how}"
        if how == "empty":
            folder.mkdir()
            return folder
        shutil.copytree(tiny_model("qwen3"), folder)
        cfg = folder / "config.json"
        text = cfg.read_text()
        if how == "truncated":
            cfg.write_text(text[: len(text) // 2])  # a download cut short
        elif how == "not_object":
            cfg.write_text(json.dumps([json.loads(text)]))
        elif how == "unknown_type":
            cfg.write_text(json.dumps({**json.loads(text), "model_type": "qwen99"}))
        return folder

    return make


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("empty", "the folder is empty"),
        ("truncated", "config.json:"),  # file:line:col of the JSON error
        ("not_object", "not a JSON object (a list)"),
        ("unknown_type", "model_type 'qwen99' is not known to transformers"),
    ],
)
def test_bad_base_model_folder_is_exit_2_before_any_work(
    how, says, broken_model, write_config, tmp_path, capsys
):
    folder = broken_model(how)
    cfg = write_config(folder, max_steps=2)
    for command in ("check", "train"):
        extra = ["--headless"] if command == "train" else []
        code, err = run_cli(capsys, command, cfg, *extra)
        assert code == 2 and says in err and str(folder) in err and "download it once" not in err
    if how == "truncated":
        assert "truncated?" in err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_a_truncated_config_json_through_the_real_cli_has_no_traceback(broken_model, write_config, tmp_path):
    cfg = write_config(broken_model("truncated"), max_steps=2)
    r = cli("train", cfg, "--headless")
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "Traceback" not in r.stderr


def test_dataset_folder_without_data_files_is_named_as_a_folder(tiny_model, write_config, tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("not data")
    cfg = write_config(tiny_model("qwen3"), data=str(folder), max_steps=2)
    for command, extra in (("check", ["--no-tokenizer"]), ("train", ["--headless"])):
        code, err = run_cli(capsys, command, cfg, *extra)
        assert code == 2 and f"{folder}: no .jsonl" in err and "files in this folder" in err
        assert "not found" not in err


@pytest.mark.parametrize("content", [b"", b"  \n\n\t \r\n"])
def test_empty_or_blank_data_file_fails_check_naming_it(content, tiny_model, write_config, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_bytes(content)
    cfg = write_config(tiny_model("qwen3"), data=str(data), max_steps=2)
    for command, extra in (("check", ["--no-tokenizer"]), ("check", []), ("train", ["--headless"])):
        code, err = run_cli(capsys, command, cfg, *extra)
        assert code == 2 and f"{data}: the data file" in err
    assert data.read_bytes() == content


def test_every_setup_problem_is_named_at_once(broken_model, write_config, tmp_path, capsys):
    (tmp_path / "out").write_text("a file\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    cfg = write_config(broken_model("not_object"), data=str(empty))
    code, err = run_cli(capsys, "train", cfg, "--headless")
    assert code == 2
    assert "the data file is empty" in err and "is a file, not a folder" in err and "not a JSON object" in err


def test_sample_into_a_folder_is_refused_before_the_work(tmp_path, capsys):
    out = tmp_path / "samples"
    out.mkdir()
    code, err = run_cli(capsys, "sample", DEMO_DATA, "-o", out, "--fraction", "0.5", "--no-progress")
    assert code == 2 and f"-o {out}: is a folder" in err
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


# -- YAML --------------------------------------------------------------------------------------


def test_duplicate_yaml_key_is_refused_with_both_lines(tiny_model, write_config, tmp_path, capsys):
    cfg = write_config(tiny_model("qwen3"))
    lines = cfg.read_text().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("lora_r:"))
    cfg.write_text(cfg.read_text() + "lora_r: 64\n")
    again = len(lines) + 1
    code, err = run_cli(capsys, "check", cfg, "--no-tokenizer")
    assert code == 2 and f"{cfg}:{again}: `lora_r` is given again (first at line {first})" in err


def test_yaml_booleans_are_not_numbers(tiny_model, write_config, tmp_path, capsys):
    cfg = write_config(tiny_model("qwen3"))
    text = (
        cfg.read_text().replace("lora_r: 8", "lora_r: yes") + "lora_dropout: no\nguard:\n  nan_patience: on\n"
    )
    cfg.write_text(text)
    lines = text.splitlines()
    at = {
        k: next(i for i, line in enumerate(lines, 1) if line.strip().startswith(k + ":"))
        for k in ("lora_r", "lora_dropout", "nan_patience")
    }
    code, err = run_cli(capsys, "check", cfg, "--no-tokenizer")
    assert code == 2
    assert f"{cfg}:{at['lora_r']}: `lora_r` must be a number (int); `yes` is a YAML boolean" in err
    assert f"{cfg}:{at['lora_dropout']}: `lora_dropout` must be a number (float); `no`" in err
    assert f"{cfg}:{at['nan_patience']}: `guard.nan_patience` must be a number (int); `on`" in err
    # booleans stay booleans where the key is one
    cfg.write_text(
        cfg.read_text()
        .replace("lora_r: yes", "lora_r: 8")
        .replace("lora_dropout: no\n", "")
        .replace("  nan_patience: on\n", "  save_best: no\n")
    )
    code, err = run_cli(capsys, "check", cfg, "--no-tokenizer")
    assert code == 0, err


def test_export_gguf_says_a_missing_source_and_a_bad_quant_together(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    code, err = run_cli(capsys, "export", "gguf", missing, "--quant", "q3_weird", "-o", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert f"{missing}: no such folder" in err
    assert "--quant q3_weird: not a GGUF type this writes" in err
    assert "2 problems with this export" in err
    assert not (tmp_path / "out").exists()  # nothing written
