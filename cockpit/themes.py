"""The cockpit's theme: chosen once and kept, and chart colours that read on it.

The theme is ``LEVIATHAN_THEME`` when set (e.g. ``textual-light``), else the one last chosen in
the command palette (ctrl+p, "Theme"), which is saved to ``$XDG_CONFIG_HOME/leviathan-cockpit/theme``
(``~/.config/...``), else Textual's dark default. Text styles given by ANSI name ("yellow",
"dim") follow the theme already (Textual maps them through a light or a dark ANSI palette); the
charts' own RGB colours are picked here, one set for dark backgrounds and one for light.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.terminal_theme import TerminalTheme
from textual.theme import BUILTIN_THEMES

from engine.errors import UserError

ENV = "LEVIATHAN_THEME"


def saved_path() -> Path:
    home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(home) / "leviathan-cockpit" / "theme"


def chosen() -> str | None:
    """The theme to start with; a bad ``LEVIATHAN_THEME`` is refused with the names there are."""
    name = os.environ.get(ENV, "").strip()
    if name:
        if name not in BUILTIN_THEMES:
            names = ", ".join(sorted(BUILTIN_THEMES))
            raise UserError(f"{ENV}={name}: no such theme; set it to one of: {names}")
        return name
    try:
        saved = saved_path().read_text().strip()
    except OSError:
        return None
    return saved if saved in BUILTIN_THEMES else None  # a stale file is not worth a refusal


def keep(app) -> None:
    """Start ``app`` in the chosen theme and save the one picked in the palette from now on."""
    name = chosen()
    if name:
        app.theme = name
    app.theme_changed_signal.subscribe(app, lambda theme: _save(theme.name))


def _save(name: str) -> None:
    path = saved_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name + "\n")
    except OSError:  # a read-only home: the theme holds for this session only
        pass


@dataclass(frozen=True)
class ChartColors:
    train: tuple[int, int, int]  # the raw loss: muted on purpose, behind the smoothed curve
    smooth: tuple[int, int, int]
    eval: tuple[int, int, int]
    band: tuple[int, int, int]
    categories: tuple[int, ...]
    """ANSI colour numbers (0-15): the terminal's own 16, mapped by Textual's light or dark ANSI
    palette, so they also read in a 16-colour tmux. Plotext takes the number, Rich ``color(n)``."""


DARK = ChartColors(
    (96, 96, 110), (0, 200, 255), (255, 160, 40), (70, 160, 70), (6, 3, 2, 5, 12, 1, 15, 7, 13)
)
LIGHT = ChartColors(  # the dark set's cyan and orange are faint (1.4:1) on a light surface
    (96, 96, 110), (0, 100, 190), (180, 75, 0), (30, 120, 30), (4, 1, 2, 5, 6, 0, 8, 12, 9)
)


LIGHT_ANSI = TerminalTheme(
    (247, 247, 247),
    (0, 0, 0),
    [
        (0, 0, 0),
        (170, 55, 49),
        (66, 137, 38),
        (158, 112, 0),
        (50, 92, 192),
        (122, 62, 157),
        (0, 131, 178),
        (100, 100, 100),
    ],
    [
        (119, 119, 119),
        (205, 65, 65),
        (65, 138, 0),
        (152, 112, 55),
        (0, 122, 204),
        (190, 60, 190),
        (0, 132, 158),
        (100, 100, 100),
    ],
)
"""The ANSI colours Textual paints text styled by name ("yellow", "bright_green") with on a light
theme: its own (Alabaster) darkened where they are under 3:1 against the light surface (yellow
was 2:1, white invisible), so the panels' hard-coded ANSI styles read on light themes too."""


def chart_colors(app) -> ChartColors:
    return DARK if app.current_theme.dark else LIGHT


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
