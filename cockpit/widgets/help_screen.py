"""``?``: what every key does, and what is possible in this mode."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from cockpit import tabs

KEYS = (
    ("p", "pause / resume training at the next step boundary"),
    ("s", "save a checkpoint now (at the next step boundary)"),
    ("e", "evaluate on the validation set now"),
    ("q", "quit; while training it asks first, then stops at the next step, saves and exits"),
    ("m", "loss chart: smoothing on / off"),
    ("l", "loss chart: log / linear scale"),
    ("z", "loss chart: whole run / last 10,000 / 1,000 / 100 steps"),
    tabs.help_line(),  # "1 2 3 4 5": the tabs (cockpit/tabs.py)
    ("[ ]", "learned: page the probe answers through older checkpoints"),
    ("a x", "compare: add a run by its folder; x-axis epoch / tokens / time / step"),
    ("F r", "journey: start the full run once the gate passed; re-measure"),
    ("⏎", "on a checkpoint: open it in the chat pane"),
    ("M", "on a checkpoint: merge, quantize, export or push it"),
    ("g", "checklist: run the step that makes this item pass"),
    ("j k", "down / up in a table or a list, beside the arrows"),
    ("/", "filter the focused table: type, ⏎ keeps the filter, escape clears it"),
    ("ctrl+p", "command palette: every key's action by name, and the theme (kept for next time)"),
    ("^q ^c", "quit, as q"),
    ("?", "this help"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss_help", "Close")]

    def __init__(self, read_only: bool) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        lines = ["[b]Keys[/b]\n"]
        lines += [f"  [b]{key:>5}[/b]  {what}" for key, what in KEYS]
        if self.read_only:
            lines.append(
                "\n[yellow]Attached to a run log: read-only. Pause, save and eval act only on a run "
                "trained in this cockpit.[/yellow]"
            )
        lines.append(
            "\nNothing you do here loses work: quitting, a crash of the cockpit or a dropped SSH "
            "connection (SIGHUP) saves a checkpoint of the current step before the process exits."
        )
        lines.append("\n[dim]escape or ? closes[/dim]")
        with VerticalScroll(id="help-box"):
            yield Static("\n".join(lines))

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
