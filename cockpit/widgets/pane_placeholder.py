"""A place on screen kept for a pane that another part of the cockpit provides (chat, checklist)."""

from __future__ import annotations

from textual.widgets import Static


class PanePlaceholder(Static):
    def __init__(self, title: str, what: str, **kw) -> None:
        super().__init__(**kw)
        self.title = title
        self.what = what
        self.checkpoint: str | None = None

    def on_mount(self) -> None:
        self.border_title = self.title
        self.show()

    def open_checkpoint(self, path: str) -> None:
        """The chat pane's entry point; here it only says what was asked for."""
        self.checkpoint = path
        self.show()

    def show(self) -> None:
        text = f"[b]{self.title}[/b]\n\n{self.what}\n\n[dim]This pane is not part of this build yet.[/dim]"
        if self.checkpoint:
            text += f"\n\nChosen checkpoint: [b]{self.checkpoint}[/b]"
        self.update(text)
