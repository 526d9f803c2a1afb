"""How a pass count reads on the command line, shared by the built-in suites and lm-eval."""

from __future__ import annotations


def score_line(passed: int, total: int) -> str:
    return f"{passed}/{total} ({100 * passed / total:.1f}%)" if total else "0/0 (n/a)"
