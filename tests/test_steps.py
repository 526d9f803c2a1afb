"""The post-training steps' registry (engine/cli/steps/): the command line and the cockpit's
ship menu are both built from it, so a step added there is a command, a `--help` line and a
menu line with its check and job."""

from __future__ import annotations

import argparse
from pathlib import Path

from cockpit.checklist_pane import STEPS
from cockpit.ship import check
from engine.cli import steps
from engine.cli.steps import MenuAction, ShipChoice, Step
from engine.errors import UserError


def test_the_registered_steps_are_the_readmes():
    assert list(steps.commands()) == ["merge", "quantize", "export", "push"]
    assert steps.commands()["export"] == (
        "GGUF files (llama.cpp, Ollama), Ollama Modelfile or vLLM server command for a merged model"
    )
    ids = [a.id for a in steps.menu_actions()]
    assert ids == ["merge", "quantize", "gguf", "ollama", "vllm", "push_dry", "push"]
    assert STEPS == {"merged": "merge", "quantized": "quantize", "hub_upload": "push_dry"}


def test_a_new_step_is_a_command_and_a_menu_line(monkeypatch, tmp_path):
    ran = []

    def add_args(p):
        p.add_argument("model_dir")

    def run(args):
        ran.append(args.model_dir)
        return 0

    def check_gguf(c: ShipChoice):
        if not (c.model_dir / "config.json").exists():
            raise UserError(f"{c.model_dir}: not a model folder", "merge first")

    def job(c, run_dir):
        return f"gguf {c.model_dir.name}", str, (c.model_dir,), {}, str

    gguf = Step(
        ("export", "gguf"),
        "write a GGUF file",
        add_args,
        run,
        order=45,
        title="GGUF file",
        actions=(MenuAction("gguf", "export: a GGUF file", check_gguf, job),),
    )
    monkeypatch.setitem(steps._STEPS, gguf.command, gguf)

    help_of = steps.commands()
    assert help_of["export"] == "Ollama Modelfile, vLLM server command or GGUF file for a merged model"
    top = argparse.ArgumentParser()
    sub = top.add_subparsers(dest="command")
    for name, text in help_of.items():
        sub.add_parser(name, help=text)
    steps.add_commands(sub)
    args = top.parse_args(["export", "gguf", "some/dir"])
    assert args.handler(args) == 0 and ran == ["some/dir"]
    assert top.parse_args(["export", "vllm", "d"]).handler is steps._STEPS[("export", "vllm")].run

    assert [a.id for a in steps.menu_actions()][3:5] == ["vllm", "gguf"]
    choice = ShipChoice("gguf", None, None, Path(tmp_path))
    assert check(choice) == f"{tmp_path}: not a model folder\n  fix: merge first"
    (tmp_path / "config.json").write_text("{}")
    assert check(choice) is None
    assert steps.action("gguf").job(choice, None)[0] == f"gguf {tmp_path.name}"
