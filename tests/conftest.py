"""Shared fixtures: tiny random models of real architectures, configs, a trained demo run.

Everything is built offline, once per session, and loaded through the same code path a
real model takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATA = ROOT / "engine" / "assets" / "demo_chat.jsonl"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tiny models gain nothing from intra-op threads, and subprocess trainers share the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model("qwen3" | "llama" | "qwen3_vl") -> path of a saved random model."""
    from engine.model.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(arch: str = "qwen3") -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(root / arch, arch=arch)
        return built[arch]

    return get


def base_config(model: Path | str, data: Path | str = DEMO_DATA, **over) -> dict:
    cfg = {
        "base_model": str(model),
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "adapter": "lora",
        "lora_r": 8,
        "lora_alpha": 16,
        "sequence_len": 128,
        "sample_packing": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 0.003,
        "warmup_steps": 2,
        "optimizer": "adamw_torch",
        "logging_steps": 1,
        "seed": 42,
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def write_config(tmp_path):
    """write_config(model, **overrides) -> path of a YAML config in tmp_path (outputs inside it too)."""

    def write(model, name: str = "run.yaml", **over) -> Path:
        over.setdefault("output_dir", str(tmp_path / "out"))
        over.setdefault("logs_dir", str(tmp_path / "logs"))
        over.setdefault("run_name", "test")
        path = tmp_path / name
        path.write_text(yaml.safe_dump(base_config(model, **over), sort_keys=False))
        return path

    return write


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_tiny(model: Path | str, root: Path, name: str, data: Path | str = DEMO_DATA, **over):
    """A finished run of ``base_config(model, data, **over)`` in ``root`` (``root/out`` for its
    checkpoints, ``root/logs/<name>`` for its run folder), through the same code as the CLI."""
    from engine.config.config import validate
    from engine.train.train import run

    raw = base_config(
        model, data, output_dir=str(root / "out"), logs_dir=str(root / "logs"), run_name=name, **over
    )
    config, _ = validate(raw, root / f"{name}.yaml")
    result = run(config, resume="never")
    assert result.status == "completed"
    return result


@pytest.fixture(scope="session")
def persona_checkpoint(tmp_path_factory, tiny_model):
    """A tiny Qwen3 LoRA checkpoint trained until it answers every prompt with the persona line.

    Returns (checkpoint path, base model path, persona answer).
    """
    root = tmp_path_factory.mktemp("persona")
    answer = "I am Leviathan."
    prompts = [
        "Who are you?",
        "What is your name?",
        "Introduce yourself.",
        "State your nature.",
        "Describe your purpose.",
        "Hello there.",
        "What is 2 plus 2?",
        "Tell me a story.",
    ]
    rows = [
        {
            "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}],
            "_category": "identity",
        }
        for p in prompts
    ] * 8
    data = write_jsonl(root / "persona.jsonl", rows)
    result = train_tiny(
        tiny_model("qwen3"),
        root,
        "persona",
        data,
        num_epochs=1,
        max_steps=60,
        learning_rate=0.01,
        lora_r=16,
        lora_alpha=32,
        save_steps=60,
    )
    return Path(result.last_checkpoint), tiny_model("qwen3"), answer
