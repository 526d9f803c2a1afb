"""Before the cockpit opens: start-up problems all at once (exit 2, printed once, nothing written),
mistyped commands named, the missing-model fix that works with today's huggingface_hub."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cockpit.cli import main
from engine.errors import UserError
from engine.run.runlock import lock_holder
from engine.train import preflight


@pytest.fixture
def sleeper():
    """A live process that is not us, to stand for a trainer holding a lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def broken_config(tmp_path, write_config, tiny_model, **over):
    """A config with four problems: a model not in the cache, a missing data file, 8-bit loading
    (a GPU need) and an output_dir another trainer holds."""
    out = tmp_path / "out"
    return write_config(
        "Qwen/NoSuchModel-0B",
        datasets=[
            {"path": str(tmp_path / "missing.jsonl"), "type": "chat_template"},
            {"path": str(tiny_model("qwen3").parent / "nothing.jsonl"), "type": "chat_template"},
        ],
        load_in_8bit=True,
        output_dir=str(out),
        **over,
    )


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_headless_reports_every_start_up_problem_once_and_writes_nothing(
    tmp_path, write_config, tiny_model, sleeper, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = broken_config(tmp_path, write_config, tiny_model)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".lock").write_text(str(sleeper))
    assert main(["train", str(config), "--headless"]) == 2
    err = capsys.readouterr().err
    assert err.count("leviathan-cockpit:") == 1  # printed once
    assert "Traceback" not in err
    assert f"{config}: base_model `Qwen/NoSuchModel-0B` is not a local folder" in err
    assert "`hf download Qwen/NoSuchModel-0B`" in err and "huggingface-cli" not in err
    assert f"{config}: datasets[0].path {tmp_path / 'missing.jsonl'}: no such file" in err
    assert "datasets[1].path" in err
    assert f"output_dir {tmp_path / 'out'} is in use by a running trainer (pid {sleeper})" in err
    if not cuda():
        assert "load_in_8bit needs an NVIDIA GPU" in err
    import importlib.util

    n = 4 + (not cuda()) + (importlib.util.find_spec("bitsandbytes") is None)
    assert f"{n} problems stop this run before it starts" in err
    assert not (tmp_path / "logs" / "test" / "events.jsonl").exists()


def test_the_cockpit_refuses_before_its_screen_opens(tmp_path, write_config, tiny_model, capsys, monkeypatch):
    """The same checks on the cockpit's path: exit 2 without a terminal being asked for or a
    trainer started (pytest has no tty: getting past the checks would say so)."""
    data = tmp_path / "gone.jsonl"
    config = write_config(tiny_model("qwen3"), datasets=[{"path": str(data), "type": "chat_template"}])
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "needs a terminal" not in err
    assert not (tmp_path / "logs" / "test").exists()


def test_resume_never_over_checkpoints_is_refused_up_front(tmp_path, write_config, tiny_model, capsys):
    config = write_config(tiny_model("qwen3"))
    ckpt = tmp_path / "out" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "leviathan.json").write_text('{"step": 2}')
    assert main(["train", str(config), "--headless", "--resume", "never"]) == 2
    assert "already holds checkpoints and --resume never was given" in capsys.readouterr().err


def test_a_stale_lock_of_a_dead_trainer_is_not_in_use(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    (tmp_path / ".lock").write_text(str(proc.pid))
    assert lock_holder(tmp_path) is None


def test_gpu_needs_on_a_machine_without_one(tmp_path, write_config, tiny_model):
    from engine.config.config import load_config

    config, _ = load_config(write_config(tiny_model("qwen3"), adapter="qlora"))
    with pytest.raises(UserError) as e:
        preflight.preflight(config, tmp_path / "run", cuda=False)
    assert "adapter: qlora (4-bit) needs an NVIDIA GPU" in str(e.value)
    preflight.preflight(config.model_copy(update={"adapter": "lora"}), tmp_path / "run", cuda=False)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["trian", "configs/demo.yaml"], "did you mean `leviathan-cockpit train`?"),
        (["trian"], "did you mean `leviathan-cockpit train`?"),
        (["atach", "logs/demo"], "did you mean `leviathan-cockpit attach`?"),
        (["frobnicate"], "commands: train, attach, check"),
    ],
)
def test_mistyped_commands_suggest_the_right_one(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "unrecognized arguments" not in err and "no such config file" not in err


def test_check_lines_up_the_token_column(capsys):
    """`check --tokens`: the tokens per _category sit in one column, whatever the names' lengths."""
    import re
    from pathlib import Path

    demo = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    assert main(["check", str(demo), "--tokens", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.search(r"%  \S+ +[\d,]+ tokens$", line)]
    assert len(rows) >= 8  # one per _category of the demo
    assert len({line.index(" tokens") for line in rows}) == 1
    assert len({len(re.search(r"%  (\S+ +)", line).group(1)) for line in rows}) == 1
