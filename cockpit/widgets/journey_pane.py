"""The Journey tab: where the guide's sequence stands (``engine.evaluate.journey``), each step's
state and the key or command that does the next one. ``F`` starts the full run once the gate has
passed: ``train CONFIG --headless`` in a session of its own (so it outlives this cockpit, which
follows it in the Compare tab and here); ``attach`` opens its own dashboard.

The journey is measured off the UI thread (the gate evaluates the 10% run's checklist), on
opening the tab, every ``REFRESH_S`` and on ``r``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from cockpit.widgets.table import Table
from engine.evaluate.journey import Journey, full_run_dir, journey

REFRESH_S = 10.0
MARKS = {
    "done": "[green]✓ done[/]",
    "running": "[cyan]● running[/]",
    "failed": "[red]✗ failed[/]",
    "stopped": "[yellow]■ stopped[/]",
    "overridden": "[yellow]! overridden[/]",
    "todo": "[dim]· to do[/]",
}


DETAIL_CHARS = 60


def short(text: str) -> str:
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


class JourneyTable(Table):
    BINDINGS = [
        Binding("F", "start_full", "Start full run"),
        Binding("r", "refresh_journey", "Re-measure"),
    ]

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "start_full":
            j = self.parent.journey if isinstance(self.parent, JourneyPane) else None
            return j is not None and j.can_start_full
        return True

    def action_start_full(self) -> None:
        self.parent.start_full()

    def action_refresh_journey(self) -> None:
        self.parent.measure()


class JourneyPane(Vertical):
    def __init__(self, config: dict, run_dir, **kw) -> None:
        super().__init__(**kw)
        self.config = config or {}
        self.run_dir = Path(run_dir) if run_dir else None
        self.journey: Journey | None = None
        self.started: subprocess.Popen | None = None
        self.started_log: Path | None = None

    def compose(self) -> ComposeResult:
        yield JourneyTable(id="journey-table", cursor_type="row", zebra_stripes=True)
        yield Static("measuring where the journey stands…", id="journey-detail")

    def on_mount(self) -> None:
        self.border_title = "Journey: the guide's sequence"
        self.query_one(JourneyTable).add_columns(
            "step", "state", "where it stands (the highlighted step in full below)"
        )
        self.set_interval(REFRESH_S, self.measure_if_shown)

    def activate(self) -> None:
        self.query_one(JourneyTable).focus()
        self.measure()

    def measure_if_shown(self) -> None:
        """Only while the tab is open: the gate evaluates the 10% run's whole checklist."""
        if self.is_on_screen:
            self.measure()

    def measure(self) -> None:
        def work() -> None:
            try:
                j = journey(self.config, self.run_dir)
            except (
                Exception
            ) as e:  # what is on disk is not what the journey expects: say so, keep the cockpit
                self.app.call_from_thread(self._failed, f"{type(e).__name__}: {e}")
                return
            self.app.call_from_thread(self.show, j)

        self.run_worker(work, thread=True, group="journey", exclusive=True)

    def _failed(self, text: str) -> None:
        self.query_one("#journey-detail", Static).update(
            f"[red]the journey could not be measured: {escape(text)}[/]"
        )

    def show(self, j: Journey) -> None:
        table = self.query_one(JourneyTable)
        first = self.journey is None or table.row_count == 0
        self.journey = j
        row = table.cursor_row
        table.clear()
        for n, s in enumerate(j.steps, 1):
            table.add_row(f"{n} {s.title}", MARKS.get(s.state, s.state), short(s.detail))
        if first:  # open on where the journey stands
            row = next((n for n, s in enumerate(j.steps) if s.state != "done"), 0)
        table.move_cursor(row=min(row, len(j.steps) - 1))
        self.query_one("#journey-detail", Static).update(self.detail(j))
        self.app.refresh_bindings()
        self._check_started()
        if self.started is not None and j.full_dir is not None and (j.full_dir / "events.jsonl").is_file():
            self._follow(j.full_dir)

    def _check_started(self) -> None:
        """A full run started here that ended with an error: its message, and F offered again."""
        if self.started is None or self.started.poll() in (None, 0):
            return
        code, self.started = self.started.returncode, None
        try:
            said = self.started_log.read_text(errors="replace").strip().splitlines()[-3:]
        except OSError:
            said = []
        self.app.notify(
            escape("\n".join(said) or f"exit code {code}") + f"\n(output: {self.started_log})",
            title=f"the full run did not start (exit {code})",
            severity="error",
            timeout=30,
        )

    def _follow(self, run_dir: Path) -> None:
        """The full run started here, overlaid in the Compare tab once its run log exists."""
        from cockpit.widgets.compare_pane import ComparePane

        for pane in self.app.query(ComparePane):
            pane.add_run(run_dir)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.journey is not None:
            self.query_one("#journey-detail", Static).update(self.detail(self.journey))

    def detail(self, j: Journey) -> str:
        table = self.query_one(JourneyTable)
        s = j.steps[min(max(table.cursor_row, 0), len(j.steps) - 1)]
        lines = [f"[b]{s.title}[/]: {escape(s.detail)}"]
        if s.next:
            lines.append(f"[b]next:[/] {escape(s.next)}")
        todo = next((x for x in j.steps if x.state != "done"), None)
        if j.can_start_full:
            lines.append(f"[green]gate passed: F starts the full run ({j.full_config})[/]")
        elif todo is not None and todo is not s:
            lines.append(
                f"[dim]the journey stands at: {todo.title}{' · next: ' + escape(todo.next) if todo.next else ''}[/]"
            )
        return "\n".join(lines)

    def start_full(self) -> None:
        """``train FULL_CONFIG --headless`` in its own session; its output beside its run folder."""
        j = self.journey
        if j is None or not j.can_start_full or self.started is not None:
            return
        run_dir = full_run_dir(j.full_config)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        out = run_dir.parent / f"{run_dir.name}.headless.log"
        self.started_log = out
        with open(out, "ab") as f:
            self.started = subprocess.Popen(
                [sys.executable, "-m", "cockpit.cli", "train", str(j.full_config), "--headless"],
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # it trains on when this cockpit closes
            )
        self.app.notify(
            f"full run started (pid {self.started.pid}): {run_dir}; its output {out}. "
            f"Its dashboard: leviathan-cockpit attach {run_dir}",
            title="full run",
            timeout=15,
        )
        self.measure()
