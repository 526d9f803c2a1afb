"""The Data tab: what the run trains on, from the prepared data's statistics.

Rows and tokens per ``_category``, the row-length histogram against ``sequence_len`` (with the
truncated and dropped rows), the packing efficiency, bad rows by file:line
(``engine.data.datasummary``, milliseconds on millions of rows), and the first rows of each
data set with their trained tokens highlighted, as ``check --show-masks`` shows them (the
tokenizer is loaded on a thread, so the numbers come first).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from cockpit.messages import RunChanged
from cockpit.widgets.table import Table

PREVIEW_ROWS = 3
BAR_W = 40


class DataPane(VerticalScroll):
    def __init__(self, config: dict | None, run_dir=None, folder=None, **kw) -> None:
        super().__init__(**kw)
        self.config = config or {}
        self.run_dir = run_dir
        self.folder = Path(folder) if folder else None
        self.summary = None

    def compose(self) -> ComposeResult:
        yield Static(
            "waiting for the run's data (the `data` record, once preparation is done)", id="data-head"
        )
        yield Table(id="data-categories", cursor_type="row", zebra_stripes=True, classes="panel")
        yield Static(id="data-lengths", classes="panel")
        yield Table(id="data-bad", cursor_type="row", classes="panel")
        yield Static(id="data-preview", classes="panel")

    def on_mount(self) -> None:
        self.query_one("#data-categories").border_title = "Rows and tokens per _category"
        self.query_one("#data-lengths").border_title = "Tokens per row"
        self.query_one("#data-bad").border_title = "Bad rows"
        self.query_one("#data-preview").border_title = "First rows (trained tokens highlighted)"
        if self.folder is not None:
            self.show(self.folder)

    def activate(self) -> None:
        self.query_one("#data-categories").focus()

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.record
        if r.get("kind") == "data" and r.get("prepared") and Path(r["prepared"]) != self.folder:
            self.show(Path(r["prepared"]))

    def show(self, folder: Path) -> None:
        from engine.data.datasummary import data_summary

        self.folder = folder
        try:
            self.summary = data_summary(folder, self.config.get("sequence_len"))
        except (OSError, ValueError, KeyError) as e:
            self.query_one("#data-head", Static).update(Text(f"prepared data unreadable: {e}", style="red"))
            return
        self.draw()
        # After the numbers are on the screen: the preview's imports and tokenizer hold the GIL.
        self.set_timer(0.3, self.load_preview)

    # -- drawing ----------------------------------------------------------------------------

    def draw(self) -> None:
        s = self.summary
        c = s.counts
        eff = s.packing_efficiency
        head = Text()
        head.append(f"{s.rows:,} rows", style="bold")
        head.append(f" ({s.rows - s.val_rows:,} train, {s.val_rows:,} held out) · {s.tokens:,} tokens kept")
        if eff is not None:
            head.append(f" · packing {eff:.1%} of {s.packed_sequences:,} × {s.sequence_len} slots")
        head.append(
            f"\ntoo long: {s.stats.too_long_count:,} (truncated {c.get('truncated', 0):,}, dropped "
            f"{c.get('dropped', 0):,}) · no trained token: {c.get('no_labels', 0):,} · bad rows: {len(s.bad):,}"
        )
        head.append(f"\n{s.folder}", style="dim")
        self.query_one("#data-head", Static).update(head)
        self._categories()
        self._lengths()
        self._bad()

    def _categories(self) -> None:
        st = self.summary.stats
        table = self.query_one("#data-categories", DataTable)
        table._filter_saved = None
        table.clear(columns=True)
        for name in ("_category", "rows", "share", "tokens", "share", "trained", "share", "mean/row"):
            table.add_column(name)
        rows_total = sum(st.rows_by_category.values()) or 1
        tok_total = sum(st.tokens_by_category.values()) or 1
        tr_total = sum(st.trained_by_category.values()) or 1
        for cat, n in sorted(st.rows_by_category.items(), key=lambda kv: -kv[1]):
            tok, tr = st.tokens_by_category.get(cat, 0), st.trained_by_category.get(cat, 0)
            table.add_row(
                cat,
                f"{n:,}",
                f"{n / rows_total:.1%}",
                f"{tok:,}",
                f"{tok / tok_total:.1%}",
                f"{tr:,}",
                f"{tr / tr_total:.1%}",
                f"{tok / max(n, 1):,.0f}",
                key=cat,
            )

    def _lengths(self) -> None:
        s = self.summary
        bins = s.histogram()
        most = max([b[2] for b in bins] + [1])
        out = Text()
        for lo, hi, n in bins:
            over = s.sequence_len is not None and lo >= s.sequence_len
            out.append(f"{lo + 1:>6}-{hi:<6} ", style="bold red" if over else "")
            out.append("█" * max(round(BAR_W * n / most), 1 if n else 0), style="red" if over else "cyan")
            out.append(f" {n:,}" + ("  > sequence_len" if over else "") + "\n")
        p = s.stats.percentiles()
        if p:
            out.append("  ".join(f"{k} {v}" for k, v in p.items()), style="dim")
        self.query_one("#data-lengths", Static).update(out)

    def _bad(self) -> None:
        table = self.query_one("#data-bad", DataTable)
        table._filter_saved = None
        table.clear(columns=True)
        table.add_columns("file:line", "why")
        for f, line, why in self.summary.bad[:500]:
            table.add_row(f"{Path(f).name}:{line}", why)
        if not self.summary.bad:
            table.add_row("none", "")

    # -- the first rows, as check --show-masks renders them ----------------------------------

    @work(thread=True, exclusive=True, group="data-preview")
    def load_preview(self) -> None:
        try:
            text = preview_text(self.config, self.run_dir)
        except Exception as e:  # a preview that cannot be made leaves the numbers
            text = Text(f"no preview: {type(e).__name__}: {e}", style="dim")
        self.app.call_from_thread(self.query_one("#data-preview", Static).update, text)


def preview_text(config: dict, run_dir) -> Text:
    from engine.cli.show_masks import first_rows, spans
    from engine.config.config import validate
    from engine.model.model import load_tokenizer, resolve_base

    where = Path(run_dir) / "config.yaml" if run_dir else Path("config.yaml")
    cfg, _ = validate(config, where)
    tok = load_tokenizer(
        resolve_base(cfg.base_model), cfg.chat_template, cfg.chat_template_jinja, cfg.trust_remote_code
    )
    out = Text()
    for _spec, item, ids, labels, _stats in first_rows(cfg, tok, PREVIEW_ROWS):
        trained = sum(1 for x in labels if x != -100)
        out.append(
            f"── {Path(item.file).name}:{item.line} ({len(ids)} tokens, {trained} trained)\n", style="bold"
        )
        for is_trained, text in spans(tok, ids, labels):
            out.append(text, style="reverse green" if is_trained else "dim")
        out.append("\n")
    return out
