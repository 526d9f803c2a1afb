"""What the model learned: each probe prompt's answer at each checkpoint, side by side.

Built from the probes' own result files (``eval/<suite>-checkpoint-N.json``, written by
``engine.evaluate.probes``): rows are the prompts (suite, id), columns the probed checkpoints
by step, each cell the answer, whether it passed, and which of its words changed from the
previous checkpoint's answer (a word diff, ``difflib``). The cockpit's Learned tab draws it;
headless prints ``compact`` at each probe.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from engine.run.rundir import eval_dir


@dataclass
class Cell:
    answer: str
    passed: bool
    words: list[tuple[str, bool]]  # (word, changed from the previous checkpoint's answer)


@dataclass
class LearnedTable:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (suite, id, prompt)
    steps: list[int] = field(default_factory=list)
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)  # (suite, id, step)
    scores: dict[tuple[str, int], tuple[int, int]] = field(
        default_factory=dict
    )  # (suite, step) -> passed, total

    def cell(self, suite: str, case: str, step: int) -> Cell | None:
        return self.cells.get((suite, case, step))


def changed_words(before: str | None, after: str) -> list[tuple[str, bool]]:
    """``after``'s words, each marked True where it is not in ``before`` at that place."""
    new = after.split()
    if before is None:
        return [(w, False) for w in new]
    marks = [True] * len(new)
    for block in difflib.SequenceMatcher(a=before.split(), b=new, autojunk=False).get_matching_blocks():
        for j in range(block.b, block.b + block.size):
            marks[j] = False
    return list(zip(new, marks, strict=True))


def probe_results(run_dir: str | Path) -> list[dict]:
    """The probe result files of a run (``"probe": true``), finished or not, readable ones only."""
    out = []
    folder = eval_dir(run_dir)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being rewritten: the next look reads it
        if isinstance(data, dict) and data.get("probe") and isinstance(data.get("step"), int):
            out.append(data)
    return out


def learned_table(run_dir: str | Path, kept_only: bool = True) -> LearnedTable:
    """The table of a run's probes; ``kept_only``: columns for checkpoints still on disk (all of
    them when none is, e.g. a run folder copied without its checkpoints)."""
    results = probe_results(run_dir)
    if kept_only:
        kept = [r for r in results if r.get("adapter") and Path(r["adapter"]).is_dir()]
        results = kept or results
    t = LearnedTable()
    t.steps = sorted({r["step"] for r in results})
    seen: set[tuple[str, str]] = set()
    answers: dict[tuple[str, str, int], dict] = {}
    for r in sorted(results, key=lambda r: (r["step"], r.get("suite", ""))):
        suite = r.get("suite", "?")
        t.scores[(suite, r["step"])] = (int(r.get("passed") or 0), int(r.get("total") or 0))
        for item in r.get("items") or []:
            key = (suite, str(item.get("id")))
            if key not in seen:
                seen.add(key)
                t.rows.append((*key, str(item.get("prompt", ""))))
            answers[(*key, r["step"])] = item
    for suite, case, _ in t.rows:
        before = None
        for step in t.steps:
            item = answers.get((suite, case, step))
            if item is None:
                continue
            answer = str(item.get("answer") or "")
            t.cells[(suite, case, step)] = Cell(
                answer, bool(item.get("passed")), changed_words(before, answer)
            )
            before = answer
    return t


def compact(table: LearnedTable, suite: str, columns: int = 3, width: int = 36) -> list[str]:
    """The last ``columns`` checkpoints of one suite as text lines: ``+`` passed, ``-`` failed,
    changed words in ``*``; each answer cut to ``width`` characters."""
    steps = table.steps[-columns:]
    rows = [r for r in table.rows if r[0] == suite]
    if not rows or not steps:
        return []
    name_w = min(max(len(r[1]) for r in rows), 16)
    head = " | ".join(
        f"step {s} ({'/'.join(map(str, table.scores.get((suite, s), (0, 0))))})".ljust(width + 2)
        for s in steps
    )
    lines = [f"  {suite:<{name_w}}  {head}".rstrip()]
    for _, case, _ in rows:
        cells = []
        for s in steps:
            c = table.cell(suite, case, s)
            if c is None:
                cells.append("".ljust(width + 2))
                continue
            text = " ".join(f"*{w}*" if ch else w for w, ch in c.words)
            text = text if len(text) <= width else text[: width - 1] + "…"
            cells.append(f"{'+' if c.passed else '-'} {text.ljust(width)}")
        lines.append(f"  {case[:name_w]:<{name_w}}  " + " | ".join(cells).rstrip())
    return lines
