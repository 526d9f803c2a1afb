"""The preset prompts: the guide's spot checks and the config's own, one key each."""

from __future__ import annotations

from textual.widgets.option_list import Option

from cockpit.widgets.table import Options

PRESET_KEYS = [f"f{i}" for i in range(4, 13)]
"""F1-F3 switch the cockpit's tabs (from a text box too): presets take F4 on."""


class PresetList(Options):
    """Selecting an entry (Enter, click, or its F-key on the pane) sends its prompt."""

    def __init__(self, presets, **kwargs) -> None:
        self.presets = list(presets)
        options: list = []
        group = None
        for i, p in enumerate(self.presets):
            if p.group != group:
                group = p.group
                options.append(Option(f"[b]{group}[/]", disabled=True))
            key = PRESET_KEYS[i].upper() if i < len(PRESET_KEYS) else ""
            options.append(Option(f"[dim]{key:>3}[/] {p.label}", id=str(i)))
        super().__init__(*options, **kwargs)

    def on_mount(self) -> None:
        self.border_title = "presets"
