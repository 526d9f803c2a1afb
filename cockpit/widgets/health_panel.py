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

LEVELS = {
    "critical": ("✖", "bold red"),
    "error": ("✖", "bold red"),
    "warning": ("▲", "yellow"),
    "info": ("●", "cyan"),
}


class HealthPanel(VerticalScroll):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.alerts: dict[str, dict] = {}  # rule -> latest record, with "count"
        self.resolved: dict[str, dict] = {}  # rule -> its alert_resolved record, while it stays healthy
        self.order: list[str] = []  # rules, most recent last
        self.skipped = 0
        self.failure: dict | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="health-list")

    def on_mount(self) -> None:
        self.border_title = "Health"
        self.show()

    def on_alert_raised(self, message: AlertRaised) -> None:
        r = message.record
        rule = str(r.get("rule") or r.get("message") or "alert")
        count = self.alerts.get(rule, {}).get("count", 0) + 1
        self.alerts[rule] = {**r, "count": count}
        self.resolved.pop(rule, None)
        if rule in self.order:
            self.order.remove(rule)
        self.order.append(rule)
        self.show()

    def on_alert_resolved(self, message: AlertResolved) -> None:
        rule = str(message.record.get("rule") or "")
        if rule in self.alerts:
            self.resolved[rule] = message.record
            self.show()

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.record
        if r["kind"] == "end" and r.get("status") in ("failed", "error"):
            self.failure = r
            self.show()
        elif r["kind"] == "start":
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
                    (str(self.failure.get("status")), "bold red"),
                    f": {self.failure.get('message', '')}",
                )
            )
        open_rules = [r for r in reversed(self.order) if r not in self.resolved]
        for rule in open_rules + [r for r in reversed(self.order) if r in self.resolved]:
            items.append(self.render_alert(rule, self.alerts[rule], self.resolved.get(rule)))
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
        errors = sum(1 for a in live if a.get("level") in ("error", "critical"))
        warns = sum(1 for a in live if a.get("level") == "warning")
        done = f" · {len(self.resolved)} resolved" if self.resolved else ""
        self.border_subtitle = f"{errors} error · {warns} warning{done}" if self.alerts else ""

    @staticmethod
    def render_alert(rule: str, r: dict, resolved: dict | None = None) -> Text:
        if resolved is not None:  # healthy again: what it was, dimmed, and when it cleared
            text = Text.assemble(("✓ ", "green"), (f"{rule}", "green"))
            text.append(f" {resolved.get('message', 'resolved')}", style="green")
            text.append(f"\n  was: {r.get('message', '')}", style="dim")
            return text
        icon, style = LEVELS.get(str(r.get("level", "warning")), LEVELS["warning"])
        head = Text.assemble((f"{icon} {rule}", style))
        if r.get("step") is not None:
            head.append(f" @{r['step']:,}" if isinstance(r["step"], int) else f" @{r['step']}", style="dim")
        if r.get("count", 1) > 1:
            head.append(f" ×{r['count']}", style="dim")
        head.append(f"  {r.get('message', '')}")
        if r.get("advice"):
            head.append(f"\n  → {r['advice']}", style="italic dim")
        return head
