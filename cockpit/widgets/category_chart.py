"""Eval loss per ``_category``: one curve a category, from the eval records' ``by_category``.

A category whose curve turns up while the others fall is being forgotten (the ``forgetting``
health alert says so); the caption lists each category's latest loss and its change since the
previous evaluation, worst first.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from cockpit.messages import EvalLogged, RunChanged
from cockpit.themes import chart_colors
from cockpit.widgets.loss_chart import SafePlot


class CategoryChart(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.points: dict[str, list[tuple[int, float]]] = {}
        self._dirty = True

    def compose(self) -> ComposeResult:
        yield SafePlot(id="category-plot")
        yield Static(id="category-caption")

    def on_mount(self) -> None:
        self.border_title = "Eval loss by _category"
        self.set_interval(0.5, self.redraw_if_needed)
        self.app.theme_changed_signal.subscribe(self, lambda _: self.redraw())  # light or dark colours

    def on_eval_logged(self, message: EvalLogged) -> None:
        r = message.record
        step, cats = r.get("step"), r.get("by_category")
        if not isinstance(step, int) or not isinstance(cats, dict):
            return
        for cat, loss in cats.items():
            if isinstance(loss, (int, float)):
                series = self.points.setdefault(str(cat), [])
                series[:] = [p for p in series if p[0] < step]  # an eval again at a step (resume)
                series.append((step, float(loss)))
        self._dirty = True

    def on_run_changed(self, message: RunChanged) -> None:
        r = message.record
        if r.get("kind") == "resume" and isinstance(r.get("from_step"), int):
            for series in self.points.values():
                series[:] = [p for p in series if p[0] <= r["from_step"]]
            self._dirty = True

    def redraw_if_needed(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        plot = self.query_one(SafePlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        colors = chart_colors(self.app).categories
        for i, (cat, series) in enumerate(sorted(self.points.items())):
            xs, ys = [p[0] for p in series], [p[1] for p in series]
            color = colors[i % len(colors)]
            if len(xs) > 1:
                plt.plot(xs, ys, color=color, marker="braille", label=cat)
            else:
                plt.scatter(xs, ys, color=color, marker="●", label=cat)
        plot.refresh()
        self.query_one("#category-caption", Static).update(self.caption())

    def caption(self) -> Text:
        if not self.points:
            return Text(
                "no eval loss by _category yet (it needs val_set_size and an evaluation)", style="dim"
            )
        rows = []
        for cat, series in self.points.items():
            last = series[-1][1]
            change = last - series[-2][1] if len(series) > 1 else 0.0
            rows.append((change, cat, last))
        colors = chart_colors(self.app).categories
        color = {cat: colors[i % len(colors)] for i, cat in enumerate(sorted(self.points))}
        out = Text()
        for change, cat, last in sorted(rows, reverse=True):  # the worst change first
            out.append("━ ", style=f"color({color[cat]})")  # the curve's own ANSI colour
            out.append(f"{cat} {last:.3f}", style="bold" if change > 0 else "")
            out.append(f" ({change:+.3f})  " if change else "  ", style="bold red" if change > 0 else "dim")
        return out
