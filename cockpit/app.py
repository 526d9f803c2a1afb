"""The cockpit: one screen of live panels over a training run, and the keys that steer it.

The trainer is another process (``engine.cli.launcher``): it writes the run log and reads the
run's control file at step boundaries, so it never waits on the UI. The app's source
follows that log from a thread of its own; every tick the app drains the source, turns the
records into messages and posts them to the panels (``.run-view``), which redraw at their
own pace. The keys append commands to the control file (``cockpit.source.JobControls``).
The run's state (``RunState``) drives the header, which keys are offered, and quitting.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.reactive import Reactive
from textual.widget import Widget
from textual.widgets import Footer, Header, TabbedContent, TabPane

from cockpit import habits, themes
from cockpit import tabs as cockpit_tabs
from cockpit.messages import (
    ControlRequested,
    LinesSkipped,
    OpenCheckpoint,
    ShipRequested,
    WriterState,
    to_messages,
)
from cockpit.run_state import RunState
from cockpit.source import Source
from cockpit.widgets.checkpoints_table import CheckpointsTable
from cockpit.widgets.confirm_quit import ConfirmQuit
from cockpit.widgets.help_screen import HelpScreen
from cockpit.widgets.jobs_panel import JobsPanel
from cockpit.widgets.loss_chart import LossChart
from cockpit.widgets.pane_placeholder import PanePlaceholder
from engine.run.rundir import RunDir

DRAIN_S = 0.1
CONTROL_ACTIONS = ("pause", "resume", "save", "evaluate")


def quiet_progress_bars() -> None:
    """No tqdm bars from this process (a chat model's load, a merge job's shards): drawn over the
    screen they garble it, and a job still writing after the cockpit exits prints them in the shell."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.disable_progress_bar()


class CockpitApp(App[int]):
    CSS_PATH = ["cockpit.tcss", "chat.tcss"]
    TITLE = "leviathan-cockpit"
    ENABLE_COMMAND_PALETTE = True  # ctrl+p: every key's action by name (cockpit/habits.py)
    ansi_theme_light = Reactive(themes.LIGHT_ANSI, init=False)  # "yellow" text readable on light
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("p", "resume", "Resume"),  # the one offered follows the run (check_action)
        Binding("s", "save", "Save"),
        Binding("e", "evaluate", "Eval"),
        Binding("q", "quit_cockpit", "Quit"),
        Binding("ctrl+q", "quit_cockpit", "Quit", show=False, priority=True),
        Binding("ctrl+c", "quit_cockpit", "Quit", show=False),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("m", "chart('smoothing')", "Smooth"),
        Binding("l", "chart('log_scale')", "Log"),
        Binding("z", "chart('zoom')", "Zoom"),
        Binding("M", "ship", "Merge", show=False),
        Binding("a", "add_run", "Add run", show=False),  # runs side by side (Compare tab)
        Binding("x", "compare_axis", "x-axis"),  # the table's own M, wherever the focus is
        *cockpit_tabs.bindings(),  # 1 2 3 ... and F1 F2 F3 (cockpit/tabs.py)
        *habits.BINDINGS,  # j / k beside the arrows, / filters the focused table
    ]

    def __init__(
        self,
        source: Source,
        *,
        clock: Callable[[], float] = time.time,
        panes: dict[str, Callable[[], Widget]] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        """Unix time now; tests pin it so ages and elapsed times are fixed."""
        self.panes = panes or {}
        """Factories for the ``chat`` and ``checklist`` panes (placeholders without one)."""
        self.pane_widgets: dict[str, Widget] = {}
        self.state = RunState(source.read_only)
        """Where the run stands (header, keys, quitting)."""
        self.exit_when_finished = False
        self._skipped_shown = 0
        self._stop_shown = False
        self._ticks = 0
        self._writer_alive: bool | None = None
        self._print_log = None
        self.compare_runs: list[Path] = []
        """Runs overlaid with this one in the Compare tab (``attach A B ...``, the ``a`` key)."""
        self.start_tab: str | None = None
        self.remember_theme = False
        """Start in the chosen theme and keep the one picked (cockpit/themes.py): the launcher's."""

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial=self.start_tab or cockpit_tabs.TABS[0].id):
            for number, tab in enumerate(cockpit_tabs.TABS, 1):
                with TabPane(cockpit_tabs.label(number, tab), id=tab.id):
                    yield tab.build(self) if tab.build else self._pane(tab.id, tab.title, tab.missing)
        yield JobsPanel(id="jobs", classes="panel")
        yield Footer(compact=True)

    def _pane(self, name: str, title: str, what: str) -> Widget:
        """The pane its own issue provides (a factory given to the app), or a placeholder.

        The pane gets the id ``<name>-pane``. Give it the class ``run-view`` to receive the
        run's messages too; a chat pane with ``open_checkpoint(path)`` is handed the
        checkpoint chosen in the table.
        """
        factory = self.panes.get(name)
        pane = factory() if factory is not None else PanePlaceholder(title, what)
        if pane.id is None:
            pane.id = f"{name}-pane"
        self.pane_widgets[name] = pane
        return pane

    @property
    def ended(self) -> bool:
        """An `end` record was seen (this session's run, or the attached one)."""
        return self.state.ended

    def on_mount(self) -> None:
        quiet_progress_bars()
        if self.remember_theme:
            themes.keep(self)
        self.show_state()
        if not self.source.read_only:
            self._capture_prints()  # a chat model loaded here after training prints too
        self.source.start()
        self.set_interval(DRAIN_S, self.drain)
        if self.start_tab:
            self.call_after_refresh(self.action_tab, self.start_tab)
        else:
            self.query_one(CheckpointsTable).focus()  # its Enter and M work at once

    def show_state(self) -> None:
        label = self.state.label()
        self.sub_title = f"{self.source.run_name} · {label}" if self.source.run_name else label
        self.refresh_bindings()

    # -- records -> panels ------------------------------------------------------------------

    def drain(self) -> None:
        records = self.source.drain()
        messages = to_messages(records)
        if self.source.bad_lines != self._skipped_shown:
            self._skipped_shown = self.source.bad_lines
            messages.append(LinesSkipped(self.source.bad_lines))
        controls = self.source.controls
        before = self.state.label()
        self.state.loading = getattr(self.source, "loading", False)
        self.state.observe(records)
        if controls is not None and controls.stop.is_set() and not self._stop_shown:
            self._stop_shown = True  # also when a signal asked for it
            self.state.stop_requested()
            messages.append(ControlRequested("stop"))
        self._ticks += 1
        if self._ticks % 20 == 1:  # every 2 s: is an attached run's trainer still there?
            alive = self.source.writer_alive()
            if alive is not None and alive != self._writer_alive:
                self._writer_alive = alive
                self.state.writer(alive)
                messages.append(WriterState(alive))
        if self._ticks % 10 == 1 and self.source.live:  # every second: a sign of life from the trainer?
            from engine.run.heartbeat import stall_after

            self.state.heartbeat(self.source.heartbeat_age(), stall_after())
        if self.state.label() != before:
            self.show_state()
        self.broadcast(*messages)
        if any(r.get("kind") == "end" for r in records):
            self._on_end()

    def _on_end(self) -> None:
        stopping = self.exit_when_finished or self.state.stop_asked
        if stopping and self.source.job is not None:
            self.exit(0)  # quit confirmed, or a signal asked: the job has saved and ended
        elif self.state.already_finished:
            self.notify(
                f"{self.source.run_name or 'this run'} had already finished at step {self.state.step:,}: "
                "the checkpoints are ready (2: chat, M: merge). To train again: --resume never --force",
                title="nothing left to train",
                timeout=30,
            )

    def broadcast(self, *messages) -> None:
        panels = list(self.query(".run-view"))
        for message in messages:
            for panel in panels:
                panel.post_message(copy.copy(message))

    # -- the training job --------------------------------------------------------------------

    @property
    def training_alive(self) -> bool:
        """A job of our own (child processes) that has not ended: quitting must stop it first."""
        return self.source.job is not None and not self.ended and self.source.writer_alive() is not False

    def stop_training(self, reason: str) -> None:
        """Stop at the next step boundary: the engine saves a checkpoint and writes `end`."""
        if self.source.controls is not None:
            self.source.controls.request_stop(reason)
        self.refresh_bindings()

    def on_unmount(self) -> None:
        # A crash of the UI lands here too: training must not outlive us unsaved.
        if self.training_alive and self.source.controls is not None:
            self.source.controls.request_stop("cockpit closed")
        self.source.stop()
        if self._print_log is not None:
            self._print_log.close()

    def _capture_prints(self) -> None:
        """What the engine and its libraries print goes to the run folder, not over the screen."""
        if self.source.run_dir is None:
            return
        Path(self.source.run_dir).mkdir(parents=True, exist_ok=True)
        self._print_log = open(RunDir(self.source.run_dir).cockpit_log, "a")  # noqa: SIM115
        self.begin_capture_print(self, stdout=True, stderr=True)

    def on_print(self, event: events.Print) -> None:
        if self._print_log is not None:
            self._print_log.write(event.text)
            self._print_log.flush()

    # -- keys -------------------------------------------------------------------------------

    def get_system_commands(self, screen):
        yield from super().get_system_commands(screen)
        yield from habits.binding_commands(self, screen)

    def action_nav(self, direction: str) -> None:
        habits.nav(self, direction)

    def action_filter(self) -> None:
        habits.open_filter(self)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("nav", "filter") and habits.typing(self.focused):
            return False
        if action == "chart":  # the chart's keys, in the footer only where the chart is
            tabs = self.query(TabbedContent)
            return not tabs or tabs.first().active == "dashboard"
        if action == "compare_axis":
            tabs = self.query(TabbedContent)
            return bool(tabs) and tabs.first().active == "compare"
        if action == "add_run" and habits.typing(self.focused):
            return False
        if action in CONTROL_ACTIONS:
            controls = self.source.controls
            if controls is None or not self.training_alive:
                return False  # attached read-only, or the run has ended: not offered at all
            if controls.stop.is_set() and not self.state.stop_asked:
                self.state.stop_requested()  # a signal's stop, before the next tick has seen it
            return self.state.offers(action, getattr(self.source, "can_eval", False))
        return True

    def action_pause(self) -> None:
        self.source.controls.request_pause()
        self.state.pause_requested()
        self.broadcast(ControlRequested("pause"))
        self.notify("pausing at the next step boundary", timeout=3)
        self.show_state()

    def action_resume(self) -> None:
        self.source.controls.request_resume()
        self.state.resume_requested()
        self.broadcast(ControlRequested("resume"))
        self.notify("resuming", timeout=3)
        self.show_state()

    def action_save(self) -> None:
        if self.state.paused_now and self.state.saved_step == self.state.step:
            self.notify(f"checkpoint-{self.state.step} is saved already (paused at that step)", timeout=4)
            return
        self.source.controls.request_save()
        self.broadcast(ControlRequested("save"))
        if self.state.probing is not None:  # the probes run on a checkpoint written a moment ago
            step = self.state.probing.get("step", self.state.step)
            self.notify(f"checkpoint-{step} is saved already: cutting its probes short", timeout=4)
            return
        self.notify(f"saving a checkpoint {self._when()}", timeout=3)

    def action_evaluate(self) -> None:
        self.source.controls.request_eval()
        self.broadcast(ControlRequested("eval"))
        self.notify(f"evaluating {self._when()}", timeout=3)

    def _when(self) -> str:
        """When the trainer acts on a save or eval: at once while it holds paused."""
        if self.state.paused_now:
            return f"now, at step {self.state.step:,} (the run stays paused)"
        return "at the next step boundary"

    def action_quit_cockpit(self) -> None:
        if not self.training_alive:
            self.exit(0)
            return
        if self.state.stop_asked:
            self.notify("stopping: the cockpit exits once the checkpoint is saved", timeout=5)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit_when_finished = True
                self.stop_training("operator quit")

        self.push_screen(ConfirmQuit(), answered)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.source.read_only))

    def action_chart(self, what: str) -> None:
        chart = self.query_one(LossChart)
        if what == "zoom":
            chart.cycle_zoom()
        else:
            setattr(chart, what, not getattr(chart, what))

    def action_compare_axis(self) -> None:
        from cockpit.widgets.compare_pane import ComparePane

        self.query_one(ComparePane).cycle_axis()

    def action_add_run(self) -> None:
        from cockpit.widgets.add_run import AddRun
        from cockpit.widgets.compare_pane import ComparePane

        def added(run_dir: Path | None) -> None:
            if run_dir is not None:
                self.compare_runs.append(run_dir)
                self.query_one(ComparePane).add_run(run_dir)
                self.action_tab("compare")

        self.push_screen(AddRun(), added)

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        self.refresh_bindings()
        pane = self.pane_widgets.get(tab) or next(iter(self.query(f"#{tab}-pane")), None)
        if tab == "dashboard":
            self.query_one(CheckpointsTable).focus()  # the table whose keys the border offers
        elif hasattr(pane, "activate"):
            pane.activate()  # the chat pane's prompt, the checklist's table
        elif self.focused is not None and tabs.get_pane(tab) not in self.focused.ancestors_with_self:
            # A text box left behind in the hidden tab would keep the focus and bring its tab back.
            self.set_focus(None)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # A click on a tab, or the tab bar's own keys: the same focus as 1 2 3.
        tab = event.pane.id
        if tab and (self.focused is None or event.pane not in self.focused.ancestors_with_self):
            self.call_after_refresh(self.action_tab, tab)

    def on_open_checkpoint(self, message: OpenCheckpoint) -> None:
        self.action_tab("chat")
        pane = self.pane_widgets.get("chat")
        if hasattr(pane, "open_checkpoint"):
            pane.open_checkpoint(message.path)

    def action_ship(self) -> None:
        if len(self.screen_stack) == 1 and self.query_one(TabbedContent).active == "dashboard":
            self.query_one(CheckpointsTable).action_ship()

    def on_ship_requested(self, message: ShipRequested) -> None:
        from cockpit.ship import open_menu

        open_menu(self, message)
