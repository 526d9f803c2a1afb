"""The code sandbox of the inference suite's ``code`` expectations.

``extract_code`` takes an answer's Python out of its fenced blocks; ``run_code`` runs it, then
the expectation's asserts, in a fresh isolated Python (``-I``) in a scratch folder, with an
emptied environment, a wall-clock timeout, and CPU and memory limits (POSIX), in its own
process group so a timeout kills everything it started. Stdlib only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|$)", re.S)


def extract_code(answer: str) -> str:
    """The answer's Python: its ```python blocks, else its unlabelled blocks, else all of it."""
    blocks = _FENCE.findall(answer)
    py = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    plain = [code for lang, code in blocks if not lang]
    chosen = py or plain or [code for _, code in blocks]
    return "\n\n".join(c.strip("\n") for c in chosen) if chosen else answer


def _limits(timeout_s: float):
    def apply():  # runs in the child before exec: no runaway memory or CPU
        import resource

        cpu = int(timeout_s) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        gib = 4 << 30
        resource.setrlimit(resource.RLIMIT_AS, (gib, gib))

    return apply if os.name == "posix" else None


def run_code(code: str, asserts: str | list[str], timeout_s: float) -> tuple[bool, str]:
    """Run ``code`` then ``asserts`` in a fresh Python (isolated mode, scratch folder)."""
    tests = asserts if isinstance(asserts, str) else "\n".join(asserts)
    with tempfile.TemporaryDirectory(prefix="lev-code-") as tmp:
        prog = Path(tmp) / "answer.py"
        prog.write_text(code + "\n\n# --- expectations ---\n" + tests + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1", "HOME": tmp}
        proc = subprocess.Popen(
            [sys.executable, "-I", str(prog)],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limits(timeout_s),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.communicate()
            return False, f"timed out after {timeout_s:g}s"
    if proc.returncode == 0:
        return True, "exit 0"
    last = [ln for ln in err.decode(errors="replace").strip().splitlines() if ln.strip()]
    return False, f"exit {proc.returncode}: {last[-1][:200] if last else 'no output'}"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, AttributeError):
        proc.kill()
