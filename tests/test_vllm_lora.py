"""export vllm: every kept checkpoint as a LoRA adapter of one vLLM server, with the pinned vLLM's
argument names (engine/ship/vllm_args.py)."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
from conftest import cli_here

from engine.run.checkpoints import begin_save, mark_complete
from engine.run.events import RunLog
from engine.ship.vllm_args import FLAGS, MAX_LORA_RANKS


def _run_with_checkpoints(root, base, ranks: dict[int, int]):
    """A run folder whose output_dir holds complete checkpoints with PEFT's own adapter_config.json."""
    from peft import LoraConfig

    run, out = root / "logs" / "lev", root / "out"
    run.mkdir(parents=True)
    out.mkdir()
    RunLog(run / "events.jsonl").emit("start", step=0, output_dir=str(out))
    for step, r in ranks.items():
        ckpt = out / f"checkpoint-{step}"
        begin_save(ckpt)
        LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["q_proj"], base_model_name_or_path=str(base)
        ).save_pretrained(ckpt)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        (ckpt / "chat_template.jinja").write_text("{{ messages }}")
        mark_complete(ckpt, {"step": step, "run_dir": str(run)})
    return run, out


def _args(stdout: str, title: str) -> list[str]:
    line = stdout.split(title, 1)[1].splitlines()[1]
    return shlex.split(line)


def test_every_kept_checkpoint_is_an_adapter_of_one_server(tiny_model, tmp_path):
    base = tiny_model("qwen3")
    run, out = _run_with_checkpoints(tmp_path, base, {100: 16, 200: 16, 300: 16})
    for target in (run, out, out / "checkpoint-200"):
        r = cli_here("export", "vllm", target, "--port", "8200")
        assert r.returncode == 0, r.stderr
        argv = _args(r.stdout, "as a LoRA adapter")
        assert argv[:3] == ["vllm", "serve", str(base)]
        i = argv.index("--lora-modules")
        assert argv[i + 1 : i + 4] == [
            f"lev-{s}={(out / f'checkpoint-{s}').resolve()}" for s in (100, 200, 300)
        ]
        assert argv[argv.index("--max-lora-rank") + 1] == "16" and argv[argv.index("--max-loras") + 1] == "3"
        assert "--enable-lora" in argv and argv[argv.index("--port") + 1] == "8200"
        assert argv[argv.index("--chat-template") + 1] == str(
            (out / "checkpoint-300" / "chat_template.jinja").resolve()
        )
        assert {a for a in argv if a.startswith("--")} <= FLAGS
        assert '"model": "lev-300"' in r.stdout  # the smoke test asks the newest checkpoint


def test_the_rank_is_rounded_up_to_one_vllm_takes(tiny_model, tmp_path):
    run, _ = _run_with_checkpoints(tmp_path / "a", tiny_model("qwen3"), {10: 8, 20: 24})
    r = cli_here("export", "vllm", run)
    assert (
        r.returncode == 0
        and _args(r.stdout, "as a LoRA adapter")[
            _args(r.stdout, "as a LoRA adapter").index("--max-lora-rank") + 1
        ]
        == "32"
    )
    assert 32 in MAX_LORA_RANKS and 24 not in MAX_LORA_RANKS
    run, _ = _run_with_checkpoints(tmp_path / "b", tiny_model("qwen3"), {10: 600})
    r = cli_here("export", "vllm", run)
    assert r.returncode == 2 and "up to rank 512" in r.stderr and "merge" in r.stderr


def test_a_merged_folder_gets_both_commands(tiny_model, tmp_path):
    base = tiny_model("qwen3")
    run, _ = _run_with_checkpoints(tmp_path, base, {50: 16})
    merged = tmp_path / "lev-merged"
    shutil.copytree(base, merged)
    (merged / "leviathan_export.json").write_text(json.dumps({"kind": "merged", "run_dir": str(run)}))
    r = cli_here("export", "vllm", merged)
    assert r.returncode == 0, r.stderr
    assert _args(r.stdout, "serve the merged model:")[:3] == ["vllm", "serve", str(merged)]
    assert "lev-50=" in r.stdout
    (merged / "leviathan_export.json").unlink()  # no run known: the merged command alone
    r = cli_here("export", "vllm", merged)
    assert r.returncode == 0 and "LoRA adapter" not in r.stdout


def test_no_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli_here("export", "vllm", tmp_path / "empty")
    assert r.returncode == 2 and "no complete LoRA checkpoint" in r.stderr


def test_vendored_names_match_an_installed_vllm():
    pytest.importorskip("vllm", reason="vLLM is not installed here (GPU machines)")
    from vllm.entrypoints.common.cli_args import make_arg_parser  # its place in 0.34.0
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    known = {o for a in parser._actions for o in a.option_strings}
    assert known >= FLAGS
