"""The box for model-written code: the inference suite's ``code`` expectations, the on-save
probes, and lm-eval's code tasks (``engine.evaluate.code_eval``).

``extract_code`` takes an answer's Python out of its fenced blocks; ``run_code`` runs it, then
the expectation's asserts, in a fresh isolated Python inside the box that
``engine.evaluate.box_launcher`` builds: a small launcher process started with exec (the
caller's memory is not forked, so the on-save probes never run model code in, or as a copy of,
the training process). What the box is made of on this machine (``isolation()``) depends on
what the kernel allows; it is recorded in every result that ran code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import engine

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|$)", re.S)
_ROOT = str(Path(engine.__file__).resolve().parent.parent)  # where `-m engine...` is found
# Hidden from the box (under empty tmpfs) where it gets a mount namespace, besides the caller's
# working folder and the run folder: homes, temp folders, and the usual places of data.
HIDDEN = ("/root", "/home", "/tmp", "/var/tmp", "/dev/shm", "/run", "/mnt", "/media", "/srv", "/opt", "/work")
# What the program may read where Landlock holds (the interpreter's folders are added).
READABLE = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/null",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)


@dataclass(frozen=True)
class Limits:
    """The box's resource limits (per process where the kernel counts per process)."""

    procs: int = 32  # RLIMIT_NPROC: for the box's uid (nobody, or the user's in a user namespace)
    memory_mb: int = 1024  # RLIMIT_AS
    file_mb: int = 16  # RLIMIT_FSIZE
    disk_mb: int = 64  # the work folder's tmpfs, where there is a mount namespace
    open_files: int = 64
    output_kb: int = 1024  # past this much output on stdout + stderr the box is killed


def extract_code(answer: str) -> str:
    """The answer's Python: its ```python blocks, else its unlabelled blocks, else all of it."""
    blocks = _FENCE.findall(answer)
    py = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    plain = [code for lang, code in blocks if not lang]
    chosen = py or plain or [code for _, code in blocks]
    return "\n\n".join(c.strip("\n") for c in chosen) if chosen else answer


def run_box(program: str, timeout_s: float, *, hide=(), limits: Limits = Limits(), without=()) -> dict:
    """Run ``program`` (Python source) in the box; the launcher's outcome.

    Keys: ``exit`` (negative: killed by that signal), ``killed`` (``timeout``, ``output`` or
    None), ``stdout``/``stderr`` (their tails), ``output_bytes``, ``seconds``, ``isolation``,
    ``setup_error`` (the box could not be built: nothing ran). ``without`` leaves parts out
    (``pid``, ``net``, ``user``, ``mount``, ``uid``, ``landlock``, ``seccomp``): the fallbacks
    of machines that allow less, made testable here.
    """
    spec = {
        "parent": os.getpid(),
        "files": {"answer.py": program},
        "argv": [sys.executable, "-I", "answer.py"],
        "env": {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"},
        "timeout_s": float(timeout_s),
        "limits": {**asdict(limits), "cpu_s": int(timeout_s) + 1},
        "output_bytes": limits.output_kb << 10,
        "keep_bytes": 4096,
        "hide": [*HIDDEN, os.getcwd(), *map(str, hide)],
        "read": [*READABLE, *_interpreter_paths()],
        "without": list(without),
    }
    proc = subprocess.Popen(
        [sys.executable, "-s", "-E", "-S", "-m", "engine.evaluate.box_launcher"],
        cwd=_ROOT,
        env={"PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no preexec_fn: the launcher is spawned, not a fork of us
    )
    try:
        out, err = proc.communicate(json.dumps(spec).encode(), timeout=timeout_s + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its PID namespace (parent-death signal) goes too
        proc.communicate()
        return {"exit": None, "killed": "timeout", "setup_error": "the box launcher hung", "stderr": ""}
    try:
        return json.loads(out)
    except ValueError:
        last = err.decode(errors="replace").strip().splitlines()
        return {
            "exit": None,
            "killed": None,
            "setup_error": f"box launcher failed: {last[-1] if last else '?'}",
        }


def _interpreter_paths() -> list[str]:
    exe = os.path.realpath(sys.executable)
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(exe))})


def run_code(code: str, asserts: str | list[str], timeout_s: float, *, hide=()) -> tuple[bool, str]:
    """Run ``code`` then ``asserts`` in the box: (passed, what was seen); passes only on exit 0."""
    tests = asserts if isinstance(asserts, str) else "\n".join(asserts)
    r = run_box(code + "\n\n# --- expectations ---\n" + tests + "\n", timeout_s, hide=hide)
    return r["exit"] == 0 and not r.get("killed") and not r.get("setup_error"), outcome(r, timeout_s)


def outcome(r: dict, timeout_s: float) -> str:
    """One line for a box's outcome."""
    if r.get("setup_error"):
        return f"not run: {r['setup_error'][:200]}"
    if r.get("killed") == "timeout":
        return f"timed out after {timeout_s:g}s"
    if r.get("killed") == "output":
        return f"killed: output over the limit ({r['output_bytes']} bytes)"
    if r["exit"] == 0:
        return "exit 0"
    last = [ln for ln in r.get("stderr", "").strip().splitlines() if ln.strip()]
    sig = f" (signal {signal.Signals(-r['exit']).name})" if r["exit"] < 0 else ""
    return f"exit {r['exit']}{sig}: {last[-1][:200] if last else 'no output'}"


@cache
def isolation() -> dict:
    """What the box is made of on this machine (one trivial run, once a process)."""
    r = run_box("pass", 10)
    return r.get("isolation") or {"error": r.get("setup_error")}


def isolation_line(iso: dict | None = None) -> str:
    iso = iso or isolation()
    if "error" in iso:
        return f"code box: NOT AVAILABLE ({iso['error']})"
    return f"code box: processes {iso['processes']}; network {iso['network']}; files {iso['files']}"
