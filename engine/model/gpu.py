"""GPU sampling through NVML (``nvidia-ml-py``), with a plain "no NVIDIA GPU" state.

``get_probe()`` opens NVML once per process and returns a ``GpuProbe`` or, when the
library, the driver or any device is missing, a ``NullProbe`` (``available`` False and a
``reason`` to show). Nothing here raises for a missing GPU: the cockpit without one still
works and says so.

``GpuSampler`` is the run's background sampler: a daemon thread that appends a ``gpu``
record to the run log every few seconds. It never blocks training (NVML is read on its own
thread) and stops with the run.

Only the standard library is imported at the top: ``pynvml`` and ``torch`` load on use.
"""

from __future__ import annotations

import threading

MB = 1024 * 1024


class NullProbe:
    """Stands in for NVML where there is no NVIDIA GPU: samples nothing, says why."""

    available = False

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def sample(self) -> list[dict]:
        return []


class GpuProbe:
    """Reads every NVIDIA GPU that NVML sees (NVML indices, not CUDA_VISIBLE_DEVICES order)."""

    available = True
    reason = ""

    def __init__(self, nvml, handles: list) -> None:
        self.nvml = nvml
        self.handles = handles
        self.names = [_text(self._try(nvml.nvmlDeviceGetName, h)) for h in handles]

    def sample(self) -> list[dict]:
        return [self._one(i, h) for i, h in enumerate(self.handles)]

    def _one(self, index: int, h) -> dict:
        nv = self.nvml
        used = total = None
        mem = self._memory(h)
        if mem is not None:
            used, total = round(mem.used / MB), round(mem.total / MB)
        util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
        power = self._try(nv.nvmlDeviceGetPowerUsage, h)  # milliwatts
        return {
            "index": index,
            "name": self.names[index],
            "used_mb": used,
            "total_mb": total,
            "util": util.gpu if util is not None else None,
            "temp_c": self._temperature(h),
            "power_w": round(power / 1000, 1) if power is not None else None,
        }

    def _memory(self, h):
        # nvidia-smi's memory.used is NVML's v2 figure (driver-reserved memory left out);
        # older drivers only have v1.
        v2 = getattr(self.nvml, "nvmlMemory_v2", None)
        if v2 is not None:
            mem = self._try(self.nvml.nvmlDeviceGetMemoryInfo, h, version=v2)
            if mem is not None:
                return mem
        return self._try(self.nvml.nvmlDeviceGetMemoryInfo, h)

    def _temperature(self, h):
        nv = self.nvml
        sensor = nv.NVML_TEMPERATURE_GPU
        if hasattr(nv, "nvmlDeviceGetTemperatureV"):
            t = self._try(nv.nvmlDeviceGetTemperatureV, h, sensor)
            if t is not None:
                return t
        return self._try(nv.nvmlDeviceGetTemperature, h, sensor)

    def _try(self, fn, *args, **kwargs):
        # A field a device does not report (power on some boards, utilisation under MIG)
        # is None, not an error.
        try:
            return fn(*args, **kwargs)
        except Exception:
            return None


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def open_probe() -> GpuProbe | NullProbe:
    """A fresh probe; never raises."""
    try:
        import pynvml
    except ImportError:
        return NullProbe("no NVIDIA GPU: nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as e:
        return NullProbe(f"no NVIDIA GPU: NVML did not start ({_nvml_reason(e)})")
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except Exception as e:
        return NullProbe(f"no NVIDIA GPU: NVML could not list devices ({_nvml_reason(e)})")
    if not handles:
        return NullProbe("no NVIDIA GPU: NVML found no device")
    return GpuProbe(pynvml, handles)


def _nvml_reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "Library Not Found" in text:
        return "the NVIDIA driver library libnvidia-ml is not on this machine"
    return text


_probe: GpuProbe | NullProbe | None = None
_probe_lock = threading.Lock()


def get_probe() -> GpuProbe | NullProbe:
    """The process's probe, opened on first use."""
    global _probe
    with _probe_lock:
        if _probe is None:
            _probe = open_probe()
        return _probe


def sample() -> list[dict]:
    """One reading per GPU: index, name, used_mb, total_mb, util (%), temp_c, power_w.

    An empty list where there is no NVIDIA GPU (``get_probe().reason`` says why).
    """
    try:
        return get_probe().sample()
    except Exception:
        return []


def torch_peak_mb() -> float | None:
    """Peak memory this process's tensors took on its current CUDA device, in MiB.

    None without CUDA; 0.0 while CUDA is not yet started (asking never starts it).
    """
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    if not torch.cuda.is_initialized():
        return 0.0
    return round(torch.cuda.max_memory_allocated() / MB, 1)


class GpuSampler:
    """Appends ``gpu`` records to a run log every ``every_s`` seconds from its own thread.

    Add it to the run log's listeners: it follows the step number from the records and
    stops when it sees ``end`` (no ``gpu`` record comes after the end). Without a GPU it
    writes one record, ``available: false`` with the reason, and stops.
    """

    def __init__(self, log, every_s: float = 10.0, probe: GpuProbe | NullProbe | None = None) -> None:
        self.log = log
        self.every_s = every_s
        self.probe = probe
        self.step: int | None = None
        self._stop = threading.Event()
        self._emit_lock = threading.RLock()
        self._thread: threading.Thread | None = None

    def __call__(self, record: dict) -> None:
        kind = record.get("kind")
        if kind in ("step", "start", "resume", "train_begin") and isinstance(record.get("step"), int):
            self.step = record["step"]
        elif kind == "end":
            # Wait for a record being written right now, so that none follows the end.
            with self._emit_lock:
                self._stop.set()

    def start(self) -> GpuSampler:
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _emit(self, **fields) -> bool:
        with self._emit_lock:
            if self._stop.is_set():
                return False
            self.log.emit("gpu", step=self.step, **fields)
            return True

    def _loop(self) -> None:
        probe = self.probe or get_probe()
        if not probe.available:
            self._emit(available=False, reason=probe.reason)
            return
        while not self._stop.is_set():
            try:
                gpus = probe.sample()
                peak = torch_peak_mb()
            except Exception as e:  # a GPU fallen off the bus must not take the run with it
                self._emit(available=False, reason=f"GPU sampling failed: {type(e).__name__}: {e}")
                return
            busiest = max(gpus, key=lambda g: g.get("used_mb") or 0, default={})
            if not self._emit(
                available=True,
                gpus=gpus,
                torch_peak_mb=peak,
                # The busiest GPU at the top level, for readers that want one gauge.
                used_mb=busiest.get("used_mb"),
                total_mb=busiest.get("total_mb"),
                util=busiest.get("util"),
            ):
                return
            self._stop.wait(self.every_s)
