"""The cockpit's tabs, one list: the layout (``CockpitApp.compose``), the keys (``1 2 3`` and
``F1 F2 F3``, by position) and the help's line all come from ``TABS``.

A tab is its pane (a widget module of its own) and one ``Tab`` line here. A pane the app builds
itself from the run's source (the dashboard) has ``build``; a pane that needs what only the
launcher knows (a chat backend, a run folder) is a factory passed to ``CockpitApp(panes=...)``
under the tab's id, with a placeholder saying ``missing`` where there is none. The tab's
number is its key; its F key works from inside a text box too (the chat's presets start at
F4, so only the first ``FKEYS`` tabs have one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from textual.binding import Binding
from textual.widget import Widget


@dataclass(frozen=True)
class Tab:
    id: str
    title: str
    build: Callable[[Any], Widget] | None = None
    """The pane, from the app (None: the launcher's factory for ``id``, else a placeholder)."""
    missing: str = ""
    """The placeholder's text where the launcher gave no factory."""


def _dashboard(app) -> Widget:
    from cockpit.widgets.dashboard import Dashboard

    source = app.source
    return Dashboard(
        live=source.live and not source.read_only,
        sample_gpu=source.local_gpu,
        health=source.config.get("health") or {},
    )


def _learned(app) -> Widget:
    from cockpit.widgets.learned_pane import LearnedPane

    return LearnedPane(app.source.run_dir, id="learned-pane")


def _data(app) -> Widget:
    from cockpit.widgets.data_pane import DataPane

    return DataPane(app.source.config, app.source.run_dir, id="data-pane", classes="run-view")


def _compare(app) -> Widget:
    from cockpit.widgets.compare_pane import ComparePane

    runs = [app.source.run_dir, *getattr(app, "compare_runs", [])]
    return ComparePane([r for r in runs if r is not None], id="compare-pane", classes="panel")


def _journey(app) -> Widget:
    from cockpit.widgets.journey_pane import JourneyPane

    return JourneyPane(app.source.config, app.source.run_dir, id="journey-pane", classes="panel")


TABS = (
    Tab("dashboard", "Dashboard", build=_dashboard),
    Tab("chat", "Chat", missing="No model to talk to: the run's config names no base model."),
    Tab("checklist", "Checklist", missing="No run folder to check."),
    Tab("learned", "Learned", build=_learned),
    Tab("data", "Data", build=_data),
    Tab("compare", "Compare", build=_compare),
    Tab("journey", "Journey", build=_journey),
)
FKEYS = 3
"""Tabs with an F key: the chat's presets start at F4 (cockpit/widgets/chat_presets.py)."""


def label(number: int, tab: Tab) -> str:
    return f"{number} {tab.title}"


def bindings() -> list[Binding]:
    """A tab's number, and the same from inside a text box (where digits are typed): its F key."""
    numbers = [Binding(str(i), f"tab('{t.id}')", t.title, show=False) for i, t in enumerate(TABS, 1)]
    fkeys = [
        Binding(f"f{i}", f"tab('{t.id}')", t.title, show=False, priority=True)
        for i, t in enumerate(TABS[:FKEYS], 1)
    ]
    return numbers + fkeys


def help_line() -> tuple[str, str]:
    """The help screen's line for the tabs: ("1 2 3", "dashboard / chat / checklist (F1 F2 F3 ...)")."""
    n = range(1, len(TABS) + 1)
    fkeys = " ".join(f"F{i}" for i in range(1, FKEYS + 1))
    names = " / ".join(t.title.lower() for t in TABS)
    return " ".join(map(str, n)), f"{names} ({fkeys} also from inside a text box)"
