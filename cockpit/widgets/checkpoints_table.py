"""Saved checkpoints, newest first: step, train and eval loss at save, size on disk, age.

Enter on a row opens that checkpoint in the chat pane (``OpenCheckpoint`` bubbles to the app);
``M`` opens the ship menu on it, merge first (``ShipRequested``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from cockpit.messages import CheckpointRemoved, CheckpointSaved, OpenCheckpoint, ProbeScored, ShipRequested
from cockpit.series import as_float
from cockpit.widgets.table import Table
from engine.run import records

COLUMNS = ("step", "loss", "eval", "size", "age")


def human_size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def folder_size(path: str) -> int | None:
    p = Path(path)
    try:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else None
    except OSError:
        return None


def age(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


class CheckpointsTable(Table):
    BINDINGS = [Binding("M", "ship", "Merge")]

    def __init__(self, **kw) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kw)
        self.saves: dict[str, Saved] = {}  # path -> its save record, size and probes
        self.filter = ""  # `/` (cockpit/habits.py): only the checkpoints whose row holds it

    def on_mount(self) -> None:
        self.border_title = "Checkpoints"
        for name in COLUMNS:
            self.add_column(name, key=name)
        self.set_interval(5.0, self.refresh_ages)
        self.rebuild()

    def on_checkpoint_saved(self, message: CheckpointSaved) -> None:
        r = message.typed
        if not isinstance(r, records.Save) or not r.path:
            return
        self.saves[r.path] = Saved(r, folder_size(r.path))
        self.rebuild()

    def on_probe_scored(self, message: ProbeScored) -> None:
        # A run with probes (evaluation.on_save) gets a column of their scores.
        r = message.typed
        if not isinstance(r, records.Probe):
            return
        for key, saved in self.saves.items():
            if key == r.path or Path(key).name == Path(str(r.path)).name:
                saved.probe[r.suite or "?"] = r
        if "probe" not in self.columns:
            self.add_column("probe", key="probe")
        self.rebuild()

    def on_checkpoint_removed(self, message: CheckpointRemoved) -> None:
        r = message.typed
        if not isinstance(r, records.CheckpointRemoved) or not r.path:
            return
        path = r.path
        # The engine names removed folders as it found them; match on the folder name too.
        for key in [k for k in self.saves if k == path or Path(k).name == Path(path).name]:
            del self.saves[key]
        self.rebuild()

    def rebuild(self) -> None:
        # Keep the reader's row; a cursor on the newest row stays on the newest.
        cursor_key = None
        if self.row_count and 0 < self.cursor_row < self.row_count:
            cursor_key = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
        self.clear()
        now = self.app.clock()
        newest_first = sorted(self.saves.values(), key=lambda s: s.save.step or 0, reverse=True)
        for s in newest_first:
            r = s.save
            if self.filter and not _matches(r, self.filter):
                continue
            self.add_row(
                Text(f"{r.step:,}" if r.step is not None else "?", justify="right"),
                _loss(r.loss),
                _loss(r.eval_loss),
                Text(human_size(s.size), justify="right"),
                Text(age(now - (r.t or now)), justify="right"),
                *([_probe(s.probe)] if "probe" in self.columns else []),
                key=str(r.path),
            )
        if cursor_key in self.saves and cursor_key in self.rows:
            self.move_cursor(row=self.get_row_index(cursor_key))
        self.border_subtitle = f"{len(self.saves)} kept · ⏎ chat · M merge" if self.saves else "none yet"

    def apply_filter(self, text: str) -> None:
        self.filter = text
        self.rebuild()
        if text:
            self.border_subtitle = f"/{text} · {self.row_count} of {len(self.saves)}"

    def refresh_ages(self) -> None:
        now = self.app.clock()
        for path, s in self.saves.items():
            if path not in self.rows:
                continue  # filtered out
            self.update_cell(path, "age", Text(age(now - (s.save.t or now)), justify="right"))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.post_message(OpenCheckpoint(str(event.row_key.value)))

    def action_ship(self) -> None:
        if not self.row_count:
            self.app.notify("no checkpoint saved yet", timeout=3)
            return
        row = self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value
        self.post_message(ShipRequested("merge", str(row)))


@dataclass
class Saved:
    """A row: the ``save`` record, the folder's size, and the probes scored on it by suite."""

    save: records.Save
    size: int | None
    probe: dict[str, records.Probe] = field(default_factory=dict)


def _matches(r: records.Save, text: str) -> bool:
    """The filter's text in the step, the folder's name or a loss as shown (any case); not in the
    folders above it, which every row shares (a filter on "50" kept every row under /tmp/pytest-50)."""
    name = Path(r.path).name if r.path else ""
    shown = [str(r.step if r.step is not None else ""), name, f"{r.loss}", f"{r.eval_loss}"]
    return any(text.lower() in x.lower() for x in shown)


def _loss(value) -> Text:
    if value is None:
        return Text("—", justify="right")
    v = as_float(value)
    return Text(f"{v:.4f}" if v == v else str(value), justify="right")


def _probe(scores: dict[str, records.Probe]) -> Text:
    """``identity 5/5 · inference 7/9``; a failed probe shows ``error``, a cut one ``cut (2/5 of 5)``;
    ``· 4-bit decode`` when a QLoRA base decoded in 4-bit (no room for its bf16 copy: slow probes)."""
    if not scores:
        return Text("—", justify="right")

    def one(p: records.Probe) -> str:
        if p.error:
            return "error"
        got = f"{p.passed}/{p.total}"
        return f"cut ({got} of {p.planned})" if p.cut else got

    parts = [f"{suite} {one(p)}" for suite, p in sorted(scores.items())]
    if any((p.decode or "").startswith("4-bit base decoded in 4-bit") for p in scores.values()):
        parts.append("4-bit decode")
    return Text(" · ".join(parts))
