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
# Every run-log record is held against its declaration (engine/run/records.py): an undeclared
# kind or field raises, here and in the trainer processes the tests start (they inherit it).
os.environ["LEVIATHAN_STRICT_RECORDS"] = "1"


# -- the two lanes ---------------------------------------------------------------------------
# The fast lane (plain `pytest`: `-m "not slow"` in pyproject.toml) trains nothing: a test that
# trains a model or starts a trainer process is marked `slow` (the full lane: `pytest -m ""`).
# The guard below fails a test that trains without the mark, in either lane, so no training
# test slips into the fast one: it watches the trainer's `train` (every in-process run, the
# chat-while-training tests' too), the launcher's trainer process (engine.cli.launcher._spawn) and
# `cli("train" ...)`. Session and module fixtures that train count for the first test that asks.
# A run refused before its first step (a late bad-input check) trains nothing and may stay fast.
_LANE = {"slow": True}


def pytest_runtest_setup(item):
    _LANE["slow"] = item.get_closest_marker("slow") is not None


def trains(what: str) -> None:
    if not _LANE["slow"]:
        pytest.fail(
            f"{what} in a test not marked slow: mark it @pytest.mark.slow (the fast lane trains nothing)"
        )


def _watch(owner, name: str, what: str) -> None:
    real = getattr(owner, name)

    def watched(*args, **kwargs):
        trains(what)
        return real(*args, **kwargs)

    setattr(owner, name, watched)


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # xdist's controller runs no test (and need not import torch)
    import engine.cli.launcher
    from engine.train.trainer import LeviathanTrainer

    _watch(LeviathanTrainer, "train", "training (LeviathanTrainer.train)")
    _watch(engine.cli.launcher, "_spawn", "a trainer process (engine.cli.launcher)")


@pytest.fixture
def anyio_backend():
    """The Pilot tests (``pytest.mark.anyio``) run on asyncio, Textual's loop."""
    return "asyncio"


@pytest.fixture(autouse=True)
def _end_scripted_jobs():
    """Stop the scripted jobs a cockpit test left running (tests/cockpit_script.py)."""
    yield
    script = sys.modules.get("cockpit_script")
    if script is not None:
        script.end_jobs()


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size) -> a real filesystem of that size ("2m") under tmp_path, unmounted after the
    test; the test is skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"disk-{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_disk(disk: Path, leave: int = 0) -> Path:
    """All of ``disk``'s free space but ``leave`` bytes taken by one file (leave=0: written until
    the kernel says ENOSPC)."""
    import shutil

    filler = disk / "filler.bin"
    if leave:
        with open(filler, "wb") as f:
            f.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
        return filler
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


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
    if not args or args[0] == "train":
        trains("a `train` process")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cockpit.cli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_here(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``cli``'s command through the same entry point (``cockpit.cli.main``) in this process,
    without the 5-15 s a new Python spends importing torch and transformers. Exit code, stdout
    and stderr as a process would give them (an uncaught exception: its traceback, exit 1).
    Not for what needs a process of its own: a kill fault, a signal sent to it, an exec."""
    import contextlib
    import io
    import signal
    import traceback

    from cockpit.cli import main
    from engine import faults

    env = {k: str(v) for k, v in (env or {}).items()}
    assert "kill@" not in env.get(faults.ENV, ""), "a kill fault ends its process: use cli()"
    saved_env = {k: os.environ.get(k) for k in env}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    here, out, err = os.getcwd(), io.StringIO(), io.StringIO()
    os.environ.update(env)
    faults.reset()  # read LEVIATHAN_FAULT again, as a new process would
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        faults.reset()
    return subprocess.CompletedProcess(
        ["leviathan-cockpit", *map(str, args)], code, out.getvalue(), err.getvalue()
    )


def run_config(model: Path | str, root: Path, name: str, data: Path | str = DEMO_DATA, **over) -> dict:
    """``base_config`` with its outputs in ``root``: checkpoints in ``root/out``, the run folder
    ``root/logs/<name>``."""
    return base_config(
        model, data, output_dir=str(root / "out"), logs_dir=str(root / "logs"), run_name=name, **over
    )


def train_tiny(model: Path | str, root: Path, name: str, data: Path | str = DEMO_DATA, **over):
    """A finished run of ``base_config(model, data, **over)`` in ``root`` (``root/out`` for its
    checkpoints, ``root/logs/<name>`` for its run folder), through the same code as the CLI."""
    from engine.config.config import validate
    from engine.train.train import run

    raw = run_config(model, root, name, data, **over)
    config, _ = validate(raw, root / f"{name}.yaml")
    result = run(config, resume="never")
    assert result.status == "completed"
    return result


def shared_across_workers(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per test session, also under pytest-xdist: the workers share one
    folder under the session's temp root, the first builds it under a file lock, the others
    wait and read it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp is a folder of the session's
    folder = root / f"shared-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            if folder.exists():  # a build that failed in another worker
                import shutil

                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def persona_checkpoint(tmp_path_factory):
    """A tiny Qwen3 LoRA checkpoint trained until it answers every prompt with the persona line
    (trained once a session, whatever the number of workers).

    Returns (checkpoint path, base model path, persona answer).
    """
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

    def build(root: Path) -> None:
        from engine.model.tiny import build_tiny_model

        rows = [
            {
                "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}],
                "_category": "identity",
            }
            for p in prompts
        ] * 8
        data = write_jsonl(root / "persona.jsonl", rows)
        result = train_tiny(
            build_tiny_model(root / "base", arch="qwen3"),
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
        (root / "checkpoint").write_text(str(result.last_checkpoint))

    root = shared_across_workers(tmp_path_factory, "persona", build)
    return Path((root / "checkpoint").read_text()), root / "base", answer
