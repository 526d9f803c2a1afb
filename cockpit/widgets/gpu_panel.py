"""Per-GPU memory, utilisation, temperature and power, with the guide's 75 GB line.

Two feeds, one view: a run on this machine (the cockpit's own trainer child) is sampled
here (``engine.model.gpu`` in a thread worker) every couple of seconds, with torch's peak taken
from the ``gpu`` records the trainer writes (only its process knows it); an attached run
shows those records alone. Without an NVIDIA GPU the panel says so, with
the reason, and nothing else waits on it.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from cockpit.messages import GpuSampled

SAMPLE_S = 2.0


def local_sample() -> GpuSampled:
    """This machine's GPUs now, plus torch's peak allocation in this process."""
    from engine.model.gpu import get_probe, torch_peak_mb

    probe = get_probe()
    if not probe.available:
        return GpuSampled([], None, source="local", reason=probe.reason)
    return GpuSampled(probe.sample(), torch_peak_mb(), source="local")


def bar(frac: float, width: int) -> str:
    frac = min(max(frac, 0.0), 1.0)
    full = int(round(frac * width))
    return "█" * full + "░" * (width - full)


class GpuPanel(Static):
    def __init__(
        self, *, sample_local: bool, memory_line_gb: float = 75.0, memory_near: float = 0.9, **kw
    ) -> None:
        super().__init__(**kw)
        self.sample_local = sample_local
        self.memory_line_gb = memory_line_gb
        self.memory_near = memory_near
        self.latest: GpuSampled | None = None
        self._trainer_peak_mb: float | None = None
        self._shape: tuple | None = None

    def on_mount(self) -> None:
        self.border_title = "GPU"
        if self.sample_local:
            self.set_interval(SAMPLE_S, self.sample)
            self.sample()
        self.show()

    def sample(self) -> None:
        self.run_worker(self._sample, thread=True, exclusive=True, group="gpu-sample")

    def _sample(self) -> None:
        self.post_message(local_sample())

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        if self.sample_local and message.source == "log":
            # Our own sample of the same GPUs is fresher; the trainer's torch peak is its own.
            self._trainer_peak_mb = message.torch_peak_mb or self._trainer_peak_mb
            return
        if message.source == "local" and self._trainer_peak_mb:
            message.torch_peak_mb = max(message.torch_peak_mb or 0.0, self._trainer_peak_mb)
        self.latest = message
        self.show()

    def on_resize(self) -> None:
        self.show()

    def show(self) -> None:
        s = self.latest
        names = sorted({str(g.get("name") or "") for g in s.gpus}) if s is not None and s.gpus else []
        count = f"{len(s.gpus)}× " if names and len(s.gpus) > 1 else ""
        self.border_subtitle = f"{count}{names[0]}" if len(names) == 1 else ", ".join(names)
        shape = None if s is None else (len(s.gpus), s.reason, bool(s.torch_peak_mb), self._warnings(s))
        self.update(self.render_sample(s), layout=shape != self._shape)  # resize only when lines change
        self._shape = shape

    def _warnings(self, s: GpuSampled) -> tuple:
        return tuple(
            float(g.get("used_mb") or 0) >= self.memory_near * self.line_mb(float(g.get("total_mb") or 0))
            for g in s.gpus
        )

    def line_mb(self, total_mb: float | None) -> float:
        """The memory line: the guide's 75 GB, or the card's own size where that is smaller
        (engine.train.health's gpu_memory rule draws the same line)."""
        line = self.memory_line_gb * 1024
        return min(line, total_mb) if total_mb else line

    def render_sample(self, s: GpuSampled | None):
        if s is None:
            return Text(
                "sampling…" if self.sample_local else "no GPU samples in this run log yet", style="dim"
            )
        if not s.gpus:  # the engine's reason says it plainly ("no NVIDIA GPU: ...")
            reason = s.reason or "no NVIDIA GPU"
            return Text(f"{reason[0].upper()}{reason[1:]}.", style="dim")
        width = max(self.content_size.width, 20)
        grid = Table.grid(padding=0)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        warnings = []
        for g in s.gpus:
            used_mb = float(g.get("used_mb") or 0)
            total_mb = float(g.get("total_mb") or 0)
            line = self.line_mb(total_mb)
            style = "green"
            if used_mb > line:
                style = "bold red"
                warnings.append(
                    Text(
                        f"▲ GPU {g.get('index', '?')} above the {line / 1024:.0f} GiB line: "
                        "reduce micro_batch_size",
                        style="bold red",
                    )
                )
            elif used_mb >= self.memory_near * line:
                style = "yellow"
                warnings.append(
                    Text(
                        f"▲ GPU {g.get('index', '?')} nearing the {line / 1024:.0f} GiB line", style="yellow"
                    )
                )
            mem = f" {used_mb / 1024:.1f}/{total_mb / 1024:.0f} GiB"
            label = f"{g.get('index', '?')} "
            cells = max(width - len(mem) - len(label), 4)
            frac = used_mb / total_mb if total_mb else 0
            grid.add_row(Text.assemble((label, "bold"), (bar(frac, cells), style), mem))
            extra = [
                f"{name}{float(g[key]):.0f}{unit}"
                for key, name, unit in (("util", "util ", "%"), ("temp_c", "", "°C"), ("power_w", "", " W"))
                if g.get(key) is not None
            ]
            if extra:
                grid.add_row(Text("  " + "  ".join(extra), style="dim"))
        if s.torch_peak_mb:
            grid.add_row(Text(f"torch peak {s.torch_peak_mb / 1024:.1f} GiB", style="dim"))
        return Group(grid, *warnings)
