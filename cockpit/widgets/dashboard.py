"""The training dashboard: loss and checkpoints on the left, progress, GPU and health on the right."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.gpu_panel import GpuPanel
from cockpit.widgets.health_panel import HealthPanel
from cockpit.widgets.loss_chart import LossChart
from cockpit.widgets.progress_panel import ProgressPanel


class Dashboard(Horizontal):
    def __init__(self, *, live: bool, sample_gpu: bool, health: dict, **kw) -> None:
        super().__init__(**kw)
        self.live = live
        self.sample_gpu = sample_gpu
        self.health = health
        """The run config's ``health:`` section (thresholds; the guide's values by default)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="left"):
            yield LossChart(self.health.get("expected_loss"), id="loss", classes="run-view panel")
            yield CheckpointsTable(id="checkpoints", classes="run-view panel")
        with Vertical(id="right"):
            yield ProgressPanel(id="progress", live=self.live, classes="run-view panel")
            yield GpuPanel(
                id="gpu",
                sample_local=self.sample_gpu,
                memory_line_gb=float(self.health.get("gpu_memory_max_gb", 75.0)),
                memory_near=float(self.health.get("gpu_memory_near", 0.9)),
                classes="run-view panel",
            )
            yield HealthPanel(id="health", classes="run-view panel")
