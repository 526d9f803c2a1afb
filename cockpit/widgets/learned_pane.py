"""The Learned tab: the eval loss of each ``_category`` over the run, and the probe answers by
checkpoint (what the model says, not only how low its loss is)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from cockpit.widgets.category_chart import CategoryChart
from cockpit.widgets.learned_table import ProbeAnswers


class LearnedPane(Vertical):
    def __init__(self, run_dir, **kw) -> None:
        super().__init__(**kw)
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        # Each child takes the run's messages itself (they do not bubble down from here).
        yield CategoryChart(id="category-chart", classes="run-view panel")
        yield ProbeAnswers(self.run_dir, id="probe-answers", classes="run-view panel")

    def activate(self) -> None:
        self.query_one(ProbeAnswers).focus()
