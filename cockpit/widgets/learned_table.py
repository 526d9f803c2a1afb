"""The probe prompts as rows, the kept checkpoints as columns: each answer, pass or fail, and
the words changed from the previous checkpoint's answer (``engine.evaluate.learned``).

Read again from the run's ``eval/`` files when a probe, a save or a removal comes in. As many
of the newest checkpoints as fit the width are shown; ``[``/``]`` page to older or newer ones.
"""

from __future__ import annotations

import textwrap

from rich.text import Text
from textual.binding import Binding

from cockpit.messages import CheckpointRemoved, CheckpointSaved, ProbeScored
from cockpit.widgets.table import Table
from engine.evaluate.learned import Cell, LearnedTable, learned_table

PROMPT_W = 24
MIN_CELL_W = 26
MAX_LINES = 4


def cell_text(cell: Cell | None, width: int) -> Text:
    """An answer wrapped to ``width``, changed words underlined and bold, with a pass mark."""
    if cell is None:
        return Text("—", style="dim")
    out = Text("✓ " if cell.passed else "✗ ", style="bold green" if cell.passed else "bold red")
    col = 2
    for word, changed in cell.words:
        if col + len(word) + 1 > width and col > 2:
            out.append("\n")
            col = 0
        out.append(word, style="bold underline" if changed else "")
        out.append(" ")
        col += len(word) + 1
    if not cell.words:
        out.append("(empty answer)", style="dim")
    lines = out.split("\n")
    if len(lines) > MAX_LINES:
        out = Text("\n").join(lines[:MAX_LINES])
        out.append("…", style="dim")
    return out


class ProbeAnswers(Table):
    BINDINGS = [
        Binding("left_square_bracket", "page(-1)", "Older", key_display="["),
        Binding("right_square_bracket", "page(1)", "Newer", key_display="]"),
    ]

    def __init__(self, run_dir, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.run_dir = run_dir
        self.table: LearnedTable | None = None
        self.offset_cols = 0  # 0: the newest checkpoints; n: n columns older
        self.filter = ""

    def on_mount(self) -> None:
        self.border_title = "What it learned: probe answers by checkpoint"
        self.reload()

    def on_probe_scored(self, _: ProbeScored) -> None:
        self.reload()

    def on_checkpoint_saved(self, _: CheckpointSaved) -> None:
        self.reload()

    def on_checkpoint_removed(self, _: CheckpointRemoved) -> None:
        self.reload()

    def on_resize(self) -> None:
        self.draw()

    def reload(self) -> None:
        if self.run_dir is not None:
            self.table = learned_table(self.run_dir)
        self.draw()

    def apply_filter(self, text: str) -> None:
        """``/``: the prompts whose id, prompt or an answer shown holds ``text``."""
        self.filter = text
        self.border_subtitle = f"/{text}" if text else None
        self.draw()

    def action_page(self, direction: int) -> None:
        self.offset_cols = max(0, self.offset_cols - direction)
        self.draw()

    def visible_steps(self) -> tuple[list[int], int]:
        steps = self.table.steps if self.table else []
        width = max(self.size.width, 60)
        n = max(1, (width - PROMPT_W - 4) // MIN_CELL_W)
        self.offset_cols = min(self.offset_cols, max(len(steps) - n, 0))
        end = len(steps) - self.offset_cols
        shown = steps[max(end - n, 0) : end]
        cell_w = (width - PROMPT_W - 4) // max(len(shown), 1) - 2
        return shown, max(cell_w, 12)

    def draw(self) -> None:
        self.clear(columns=True)
        t = self.table
        if t is None or not t.rows:
            self.add_column("no probe answers yet (evaluation: {on_save: [identity]} runs them at each save)")
            return
        shown, cell_w = self.visible_steps()
        self.add_column("prompt", width=PROMPT_W, key="prompt")
        for step in shown:
            scores = [f"{p}/{n}" for (s, st), (p, n) in t.scores.items() if st == step]
            self.add_column(f"step {step} {' '.join(scores)}", width=cell_w, key=str(step))
        needle = self.filter.lower()
        for suite, case, prompt in t.rows:
            cells = [t.cell(suite, case, s) for s in shown]
            if needle and not any(
                needle in x.lower() for x in [case, prompt] + [c.answer for c in cells if c is not None]
            ):
                continue
            texts = [cell_text(c, cell_w) for c in cells]
            prompt_lines = textwrap.wrap(prompt, PROMPT_W - 1)[: MAX_LINES - 1] or [""]
            head = Text(case, style="bold")
            head.append("\n" + "\n".join(prompt_lines), style="dim")
            height = max([len(x.split("\n")) for x in texts] + [1 + len(prompt_lines)])
            self.add_row(head, *texts, height=height, key=f"{suite}/{case}")
