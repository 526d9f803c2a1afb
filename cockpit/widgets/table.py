"""The cockpit's one table and one list: a ``DataTable`` (``Table``) and an ``OptionList``
(``Options``) that ``/`` filters (cockpit/habits.py), whoever fills them.

Every table in the cockpit is a ``Table`` (tests/test_cockpit_habits.py walks them), so the filter
is there by construction. The table keeps every row it was given, in order; the filter only
decides which of them are on screen. A row that is filtered out still takes ``update_cell`` and
``remove_row`` by its key, and rows added while a filter is on are filtered as they come, so a
pane that redraws or updates its table by key needs to know nothing of the filter.

A table that rebuilds itself from its own data with its own notion of a match (the checkpoints,
the probe answers) overrides ``apply_filter``; then the rows pass through unfiltered here.
"""

from __future__ import annotations

from itertools import count

from rich.text import Text
from textual.widgets import DataTable, OptionList
from textual.widgets.data_table import ColumnKey, RowKey

_keys = count()


def _shown(cell) -> str:
    return cell.plain if isinstance(cell, Text) else str(cell)


class Table(DataTable):
    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.filter = ""  # what ``/`` typed (shown in the filter bar when it opens again)
        self._needle = ""  # the filter this class applies ("" where a subclass filters itself)
        self._all: dict[str, tuple[list, int]] = {}  # key -> (cells, height), every row in order
        self._subtitle = None  # the border subtitle before the filter took it

    def _matches(self, cells) -> bool:
        return not self._needle or any(self._needle in _shown(c).lower() for c in cells)

    def add_row(self, *cells, height: int | None = 1, key: str | None = None, label=None) -> RowKey:
        key = key if key is not None else f"_row{next(_keys)}"
        self._all[key] = (list(cells), height)
        if self._matches(cells):
            return super().add_row(*cells, height=height, key=key, label=label)
        return RowKey(key)

    def clear(self, columns: bool = False):
        self._all.clear()
        return super().clear(columns)

    def remove_row(self, row_key: RowKey | str) -> None:
        key = row_key.value if isinstance(row_key, RowKey) else row_key
        self._all.pop(key, None)
        if key in self.rows:
            super().remove_row(key)

    def update_cell(self, row_key, column_key, value, *, update_width: bool = False) -> None:
        key = row_key.value if isinstance(row_key, RowKey) else row_key
        if key in self._all:
            col = column_key if isinstance(column_key, ColumnKey) else ColumnKey(column_key)
            self._all[key][0][list(self.columns).index(col)] = value
        if key in self.rows:
            super().update_cell(key, column_key, value, update_width=update_width)

    def apply_filter(self, text: str) -> None:
        """``/``: show the rows with ``text`` in a cell as shown (any case); "" shows every row."""
        if not self.filter and text:
            self._subtitle = self.border_subtitle
        self.filter, self._needle = text, text.lower()
        cursor = self._cursor_key()
        DataTable.clear(self)
        for key, (cells, height) in self._all.items():
            if self._matches(cells):
                DataTable.add_row(self, *cells, height=height, key=key)
        if cursor in self.rows:
            self.move_cursor(row=self.get_row_index(cursor))
        self.border_subtitle = f"/{text} · {self.row_count} of {len(self._all)}" if text else self._subtitle

    def _cursor_key(self) -> str | None:
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key((self.cursor_row, 0)).row_key.value


class Options(OptionList):
    """An ``OptionList`` that ``/`` filters: the options whose prompt holds the text stay."""

    def __init__(self, *options, **kw) -> None:
        super().__init__(*options, **kw)
        self.filter = ""
        self._all = list(options)
        self._subtitle = None

    def apply_filter(self, text: str) -> None:
        if not self.filter and text:
            self._subtitle = self.border_subtitle
        self.filter, needle = text, text.lower()
        keep = [o for o in self._all if needle in Text.from_markup(str(o.prompt)).plain.lower()]
        self.clear_options()
        self.add_options(keep)
        first = next((i for i, o in enumerate(keep) if not o.disabled), None)
        if first is not None:
            self.highlighted = first
        self.border_subtitle = f"/{text} · {len(keep)} of {len(self._all)}" if text else self._subtitle
