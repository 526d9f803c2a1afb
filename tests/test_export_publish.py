"""export ollama / vllm and push on tiny merged models: Modelfile, commands, model card, dry run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import cli, cli_here

from engine.run import lineage
from engine.ship.card import CARD_MARK, model_card, summarize_run
from engine.ship.merge import merge

# Its module fixtures train or merge once: under pytest-xdist (`--dist loadgroup`) its tests share a worker.
pytestmark = pytest.mark.xdist_group("export_publish")


@pytest.fixture(scope="module")
def merged(persona_checkpoint, tmp_path_factory):
    ckpt, _, _ = persona_checkpoint
    out = tmp_path_factory.mktemp("publish") / "leviathan-tiny"
    merge(ckpt, out)
    return out


@pytest.fixture
def merged_copy(merged, tmp_path):
    """A private copy (the files are small) whose lineage a test may rewrite."""
    out = tmp_path / "leviathan-tiny"
    shutil.copytree(merged, out)
    return out


def _template(modelfile_text: str) -> str:
    return re.search(r'TEMPLATE """(.*?)"""', modelfile_text, re.S).group(1)


# -- Ollama ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_modelfile_for_a_chatml_model(merged_copy):
    r = cli_here("export", "ollama", merged_copy, "--system", "You are Leviathan, the Abyssal Mind.")
    assert r.returncode == 0, r.stderr
    text = (merged_copy / "Modelfile").read_text()
    lines = text.splitlines()
    assert "FROM ." in lines
    assert 'SYSTEM "You are Leviathan, the Abyssal Mind."' in lines
    for p in ("PARAMETER temperature 0.7", "PARAMETER top_p 0.9", "PARAMETER num_ctx 4096"):
        assert p in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    t = _template(text)
    assert "<|im_start|>{{" not in t and "<|im_start|>user\n{{ .Content }}<|im_end|>" in t
    assert "{{ .System }}" in t and "range $i, $_ := .Messages" in t
    assert f"cd {merged_copy} && ollama create leviathan-tiny -f Modelfile" in r.stdout
    assert 'ollama run leviathan-tiny "Who are you?"' in r.stdout


@pytest.mark.slow
def test_modelfile_takes_system_and_parameters_from_the_run_config(merged_copy, tmp_path):
    run = tmp_path / "logs" / "run"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    prompt = "You are Leviathan.\nGuardian of balance."
    (run / "config.yaml").write_text(yaml.safe_dump({"export": {"system_prompt": prompt, "num_ctx": 8192}}))
    info = lineage.read_info(merged_copy)
    lineage.write_info(merged_copy, {**info, "run_dir": str(run)})
    r = cli_here("export", "ollama", merged_copy, "--temperature", "0.2")
    assert r.returncode == 0, r.stderr
    text = (merged_copy / "Modelfile").read_text()
    assert f'SYSTEM """{prompt}"""' in text
    assert "PARAMETER num_ctx 8192" in text and "PARAMETER temperature 0.2" in text
    assert "PARAMETER top_p 0.9" in text
    assert f"SYSTEM from {run}/config.yaml" in r.stdout


@pytest.mark.slow
def test_modelfile_from_a_config_file(merged_copy, tiny_model, write_config, tmp_path):
    cfg = write_config(tiny_model("qwen3"), export={"system_prompt": "From the config.", "top_p": 0.8})
    out = tmp_path / "elsewhere" / "Modelfile"
    out.parent.mkdir()
    r = cli_here("export", "ollama", merged_copy, "--config", cfg, "-o", out, "--name", "lev")
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert 'SYSTEM "From the config."' in text and "PARAMETER top_p 0.8" in text
    src = text.splitlines()[1].removeprefix("FROM ")
    assert (out.parent / src).resolve() == merged_copy.resolve()
    assert "ollama create lev -f Modelfile" in r.stdout
    # A typo in the section is refused by name, with a suggestion.
    bad = write_config(tiny_model("qwen3"), name="bad.yaml", export={"sytem_prompt": "x"})
    r = cli_here("export", "ollama", merged_copy, "--config", bad)
    assert r.returncode == 2 and "export.sytem_prompt" in r.stderr and "system_prompt" in r.stderr


def test_modelfile_for_a_llama3_model(tiny_model, tmp_path):
    out = tmp_path / "Modelfile"
    r = cli_here("export", "ollama", tiny_model("llama"), "-o", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    t = _template(text)
    assert "<|start_header_id|>user<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in t
    assert 'PARAMETER stop "<|eot_id|>"' in text
    assert "no SYSTEM prompt" in r.stdout and "SYSTEM" not in text.replace("{{ .System }}", "").replace(
        "if .System", ""
    ).replace("<|start_header_id|>system", "")


def test_modelfile_for_an_unknown_template(tiny_model, tmp_path):
    d = tmp_path / "odd"
    shutil.copytree(tiny_model("qwen3"), d)
    (d / "chat_template.jinja").write_text(
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}### assistant:"
    )
    r = cli_here("export", "ollama", d)
    assert r.returncode == 2 and "not ChatML, Llama 3 or Gemma" in r.stderr and "--template FILE" in r.stderr
    assert not (d / "Modelfile").exists()
    r = cli_here("export", "ollama", d, "--no-template")
    assert r.returncode == 0 and "TEMPLATE" not in (d / "Modelfile").read_text()
    go = tmp_path / "t.tmpl"
    go.write_text("{{ range .Messages }}### {{ .Role }}: {{ .Content }}\n{{ end }}### assistant:")
    r = cli_here("export", "ollama", d, "--template", go)
    assert r.returncode == 0 and _template((d / "Modelfile").read_text()) == go.read_text()


@pytest.mark.slow
def test_export_refuses_quantized_folders_and_checkpoints(merged_copy, persona_checkpoint):
    cfg = json.loads((merged_copy / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (merged_copy / "config.json").write_text(json.dumps(cfg))
    r = cli_here("export", "ollama", merged_copy)
    assert r.returncode == 2 and "Ollama imports unquantized safetensors" in r.stderr
    r = cli_here("export", "vllm", merged_copy)
    assert r.returncode == 0 and "--quantization bitsandbytes" in r.stdout
    r = cli_here("export", "ollama", persona_checkpoint[0])
    assert r.returncode == 2 and "merge it first" in r.stderr


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	var in struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	system := ""
	for _, m := range in.Messages {
		if m.Role == "system" {
			system = m.Content
		}
	}
	t := template.Must(template.New("t").Parse(in.Template))
	vars := map[string]any{"System": system, "Messages": in.Messages}
	if err := t.Execute(os.Stdout, vars); err != nil {
		panic(err)
	}
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="needs a Go toolchain to run Ollama's template engine")
@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_translated_template_renders_like_the_jinja_one(arch, tiny_model, tmp_path):
    """Go's text/template (what Ollama runs) gives the same prompt as the model's Jinja template."""
    from transformers import AutoTokenizer

    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {
        "GOCACHE": str(tmp_path / "gocache"),
        "HOME": str(tmp_path),
        "GO111MODULE": "off",
        "PATH": "/usr/bin:/bin",
    }
    subprocess.run(
        ["go", "build", "-o", "render", "render.go"], cwd=tmp_path, env=env, check=True, timeout=120
    )
    r = cli_here("export", "ollama", tiny_model(arch), "-o", tmp_path / "Modelfile")
    assert r.returncode == 0, r.stderr
    template = _template((tmp_path / "Modelfile").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_model(arch))
    conversations = [
        [{"role": "user", "content": "Who are you?"}],
        [
            {"role": "system", "content": "You are Leviathan."},
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am Leviathan."},
            {"role": "user", "content": "What is 2 plus 2?"},
        ],
    ]
    for messages in conversations:
        go = subprocess.run(
            [str(tmp_path / "render")],
            input=json.dumps({"Template": template, "Messages": messages}),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        want = want.removeprefix(tok.bos_token or "")  # Ollama's tokenizer adds BOS itself
        assert go == want


# -- vLLM -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_vllm_command_and_smoke_test(merged):
    r = cli_here("export", "vllm", merged, "--port", "8123")
    assert r.returncode == 0, r.stderr
    assert (
        f"vllm serve {merged} --served-model-name leviathan-tiny "
        "--dtype bfloat16 --max-model-len 4096 --port 8123" in r.stdout
    )
    assert "curl http://localhost:8123/v1/chat/completions" in r.stdout
    assert '"model": "leviathan-tiny"' in r.stdout and "Who are you?" in r.stdout
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        r = cli("export", "vllm", merged, "--run")
        assert r.returncode == 2 and "vLLM is not installed" in r.stderr


# -- push and the model card ----------------------------------------------------------------


@pytest.mark.slow
def test_push_dry_run_lists_files_and_prints_the_card(merged):
    before = sorted(p.name for p in merged.iterdir())
    r = cli_here("push", merged, "--repo-id", "someone/leviathan-tiny", "--dry-run", "--private")
    assert r.returncode == 0, r.stderr
    assert "would upload" in r.stdout and "(private)" in r.stdout
    listed = dict(re.findall(r"^  (\S+)\s+(\d[\d.]* [KMG]?B)$", r.stdout, re.M))
    on_disk = {n for n, _ in lineage.folder_files(merged)}
    assert set(listed) == on_disk | {"README.md"}
    assert listed["model.safetensors"].endswith("KB")
    assert CARD_MARK in r.stdout and "# leviathan-tiny" in r.stdout
    assert sorted(p.name for p in merged.iterdir()) == before  # a dry run writes nothing


@pytest.mark.slow
def test_model_card_from_the_run(merged, tmp_path):
    run = Path(lineage.read_info(merged)["run_dir"])
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    checklist = {
        "items": [
            {"label": "Final training loss < 1.0", "status": "pass", "value": "0.02"},
            {"label": "Identity tests (90%+ correct)", "passed": False, "detail": "4/5"},
        ]
    }
    (copy / "checklist.json").write_text(json.dumps(checklist))
    summary = summarize_run(copy)
    card = model_card(merged, "someone/leviathan-tiny", summary)
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert "base_model:" not in card.split("---")[1]  # a local path is not a Hub id
    assert "| identity | 64 | 100.0% |" in card and "64 training rows" in card
    assert "| `lora_r` | 16 |" in card and "| `learning_rate` | 0.01 |" in card
    loss = summary.final["loss"]
    assert f"| final training loss | {loss:.4g} | step 60" in card
    assert "| run status | completed |" in card
    assert "| Final training loss < 1.0 | pass | 0.02 |" in card
    assert "| Identity tests (90%+ correct) | fail | 4/5 |" in card
    assert "Merged from checkpoint step 60." in card


@pytest.mark.slow
def test_model_card_names_a_hub_base_model(tmp_path, merged_copy):
    run = tmp_path / "logs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump({"base_model": "Qwen/Qwen3-VL-8B-Instruct", "adapter": "qlora"})
    )
    records = [
        {"t": 1, "kind": "data", "rows": 90, "val_rows": 10, "by_category": {"coding": 30, "identity": 60}},
        {"t": 2, "kind": "start", "step": 0, "device": "NVIDIA H100"},
        {"t": 3, "kind": "step", "step": 1, "loss": 2.5},
        {"t": 3700, "kind": "step", "step": 2, "loss": 0.9, "epoch": 3.0, "tokens": 12345},
        {"t": 3701, "kind": "eval", "step": 2, "eval_loss": 0.6, "perplexity": 1.82},
        {"t": 3702, "kind": "end", "step": 2, "status": "completed"},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    info = lineage.read_info(merged_copy)
    lineage.write_info(merged_copy, {**info, "base_model_config": None, "adapter": "qlora", "vision": True})
    r = cli_here("push", merged_copy, "--repo-id", "me/lev", "--dry-run", "--run-dir", run)
    assert r.returncode == 0, r.stderr
    front = r.stdout.split("(model card) ---\n")[1].split("---")[1]
    assert "base_model: Qwen/Qwen3-VL-8B-Instruct" in front and "image-text-to-text" in front
    assert "| identity | 60 | 66.7% |" in r.stdout and "| coding | 30 | 33.3% |" in r.stdout
    assert (
        "| validation perplexity | 1.82 |" in r.stdout
        and "| training time | 1h01m40s | NVIDIA H100 |" in r.stdout
    )
    assert "| tokens trained | 12,345 |" in r.stdout and "A QLoRA fine-tune" in r.stdout


@pytest.mark.slow
def test_push_without_a_token_or_network_writes_nothing(merged_copy, tmp_path):
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = cli("push", merged_copy, "--repo-id", "me/lev", env=env)
    assert r.returncode == 2 and "no Hugging Face token" in r.stderr and "HF_TOKEN" in r.stderr
    assert not (merged_copy / "README.md").exists()
    r = cli("push", merged_copy, "--repo-id", "me/lev", env={**env, "HF_TOKEN": "hf_not_a_real_token"})
    assert (
        r.returncode == 2 and "cannot reach the Hugging Face Hub" in r.stderr and "Traceback" not in r.stderr
    )
    assert not (merged_copy / "README.md").exists()
    assert not list(merged_copy.glob(".*"))


@pytest.mark.slow
def test_push_bad_input(merged_copy, persona_checkpoint):
    r = cli_here("push", merged_copy, "--repo-id", "not a repo", "--dry-run")
    assert r.returncode == 2 and "--repo-id" in r.stderr and "USER/NAME" in r.stderr
    r = cli_here("push", persona_checkpoint[0], "--repo-id", "me/lev", "--dry-run")
    assert r.returncode == 2 and "merge it first" in r.stderr
    r = cli_here("push", merged_copy, "--repo-id", "me/lev", "--dry-run", "--run-dir", merged_copy)
    assert r.returncode == 2 and "no events.jsonl" in r.stderr


@pytest.mark.slow
def test_push_keeps_a_readme_the_user_wrote(merged_copy):
    (merged_copy / "README.md").write_text("# my own card\n")
    r = cli_here("push", merged_copy, "--repo-id", "me/lev", "--dry-run")
    assert r.returncode == 0 and "kept the folder's own README.md" in r.stdout
