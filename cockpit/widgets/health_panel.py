"""Alerts from the guide's rules, newest first, each with its advice.

The rules live in the engine (``engine/train/health.py``) and write ``alert`` records; this panel
only shows them. A rule that fires again updates its line (count, latest step) rather than
flooding the list; one that clears (``alert_resolved``) stays listed, dimmed, with when and
how it cleared, and leaves the error and warning counts. Run failures and skipped log lines
show here too.
"""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from cockpit.messages import AlertRaised, AlertResolved, LinesSkipped, RunChanged
from engine.run import records

LEVELS = {
    "critical": ("✖", "bold red"),
    "error": ("✖", "bold red"),
    "warning": ("▲", "yellow"),
    "info": ("●", "cyan"),
}


class HealthPanel(VerticalScroll):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.alerts: dict[str, records.Alert] = {}  # rule -> latest record
        self.counts: dict[str, int] = {}  # rule -> alerts raised
        self.resolved: dict[
            str, records.AlertResolved
        ] = {}  # rule -> its alert_resolved, while it stays healthy
        self.order: list[str] = []  # rules, most recent last
        self.skipped = 0
        self.failure: records.End | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="health-list")

    def on_mount(self) -> None:
        self.border_title = "Health"
        self.show()

    def on_alert_raised(self, message: AlertRaised) -> None:
        r = message.typed
        if not isinstance(r, records.Alert):
            return
        rule = r.rule or r.message or "alert"
        self.counts[rule] = self.counts.get(rule, 0) + 1
        self.alerts[rule] = r
        self.resolved.pop(rule, None)
        if rule in self.order:
            self.order.remove(rule)
        self.order.append(rule)
        self.show()

    def on_alert_resolved(self, message: AlertResolved) -> None:
        r = message.typed
        rule = r.rule or "" if isinstance(r, records.AlertResolved) else ""
        if rule in self.alerts:
            self.resolved[rule] = r
            self.show()

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.typed
        if isinstance(r, records.End) and r.status in ("failed", "error"):
            self.failure = r
            self.show()
        elif isinstance(r, records.Start):
            self.failure = None
            self.show()

    def on_lines_skipped(self, message: LinesSkipped) -> None:
        self.skipped = message.count
        self.show()

    def show(self) -> None:
        items = []
        if self.failure is not None:
            items.append(
                Text.assemble(
                    ("✖ run ", "bold red"),
                    (str(self.failure.status), "bold red"),
                    f": {self.failure.message or ''}",
                    *([("\n  fix: ", "bold"), self.failure.fix] if self.failure.fix else []),
                )
            )
        open_rules = [r for r in reversed(self.order) if r not in self.resolved]
        for rule in open_rules + [r for r in reversed(self.order) if r in self.resolved]:
            items.append(
                self.render_alert(rule, self.alerts[rule], self.resolved.get(rule), self.counts[rule])
            )
        if self.skipped:
            items.append(
                Text(
                    f"● {self.skipped} torn or foreign line(s) in the run log skipped",
                    style="cyan",
                )
            )
        if not items:
            items.append(Text("✓ no alerts: the health rules are quiet", style="green"))
        self.query_one("#health-list", Static).update(Group(*items))
        live = [a for rule, a in self.alerts.items() if rule not in self.resolved]
        errors = sum(1 for a in live if a.level in ("error", "critical"))
        warns = sum(1 for a in live if a.level == "warning")
        done = f" · {len(self.resolved)} resolved" if self.resolved else ""
        self.border_subtitle = f"{errors} error · {warns} warning{done}" if self.alerts else ""

    @staticmethod
    def render_alert(
        rule: str, r: records.Alert, resolved: records.AlertResolved | None = None, count: int = 1
    ) -> Text:
        if resolved is not None:  # healthy again: what it was, dimmed, and when it cleared
            text = Text.assemble(("✓ ", "green"), (f"{rule}", "green"))
            text.append(f" {resolved.message or 'resolved'}", style="green")
            text.append(f"\n  was: {r.message or ''}", style="dim")
            return text
        icon, style = LEVELS.get(r.level or "warning", LEVELS["warning"])
        head = Text.assemble((f"{icon} {rule}", style))
        if r.step is not None:
            head.append(f" @{r.step:,}", style="dim")
        if count > 1:
            head.append(f" ×{count}", style="dim")
        head.append(f"  {r.message or ''}")
        if r.advice:
            head.append(f"\n  → {r.advice}", style="italic dim")
        return head
