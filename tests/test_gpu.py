"""GPU sampling: the "no NVIDIA GPU" state on this machine, NVML readings mapped to records,
the background sampler, and a real tiny training run whose log carries gpu and alert records."""

from __future__ import annotations

import sys
import threading
import types

import pytest

from engine.model import gpu
from engine.run.events import RunLog, read_events
from tests.wait import wait_for

# -- the probe ---------------------------------------------------------------------------------


def _has_nvidia_gpu() -> bool:
    return gpu.open_probe().available


@pytest.mark.skipif(_has_nvidia_gpu(), reason="this machine has an NVIDIA GPU")
def test_no_gpu_here_is_a_plain_state_not_an_exception():
    probe = gpu.get_probe()
    assert probe.available is False
    assert probe.reason.startswith("no NVIDIA GPU")
    assert probe.sample() == [] and gpu.sample() == []


def test_torch_peak_without_cuda_is_none():
    import torch

    if torch.cuda.is_available():
        assert gpu.torch_peak_mb() >= 0
    else:
        assert gpu.torch_peak_mb() is None


def test_missing_nvidia_ml_py_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    probe = gpu.open_probe()
    assert probe.available is False and "nvidia-ml-py" in probe.reason


class NotSupported(Exception):
    pass


def fake_nvml(count=2, power_supported=True):
    """A stand-in NVML module with the calls GpuProbe makes (names as in pynvml)."""

    def memory(h, version=None):
        return types.SimpleNamespace(used=(10 + h) * 1024**3, total=80 * 1024**3)

    def power(h):
        if not power_supported:
            raise NotSupported("power")
        return 312_456  # mW

    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlMemory_v2=0x02000028,
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=97, memory=40),
        NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetTemperatureV=lambda h, s: 61 + h,
        nvmlDeviceGetPowerUsage=power,
    )


def test_nvml_readings_become_one_dict_per_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    probe = gpu.open_probe()
    assert probe.available
    assert probe.sample() == [
        {
            "index": i,
            "name": "NVIDIA H100 80GB HBM3",
            "used_mb": (10 + i) * 1024,
            "total_mb": 80 * 1024,
            "util": 97,
            "temp_c": 61 + i,
            "power_w": 312.5,
        }
        for i in range(2)
    ]


def test_a_field_the_device_does_not_report_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=1, power_supported=False))
    (g,) = gpu.open_probe().sample()
    assert g["power_w"] is None and g["used_mb"] == 10 * 1024


def test_nvml_with_no_device_is_the_null_state(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=0))
    probe = gpu.open_probe()
    assert probe.available is False and "found no device" in probe.reason


# -- the sampler -------------------------------------------------------------------------------


class ScriptedProbe:
    """A GPU that answers at once, or (``blocked``) whose read hangs until the test releases it."""

    available = True
    reason = ""

    def __init__(self, blocked: bool = False):
        self.calls = 0
        self.reading = False
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def sample(self):
        self.calls += 1
        self.reading = True
        self.release.wait(30)
        self.reading = False
        return [{"index": 0, "name": "X", "used_mb": 1000 + self.calls, "total_mb": 80000, "util": 50}]


def _sampled_log(tmp_path, probe, every_s=0.01):
    log = RunLog(tmp_path / "events.jsonl")
    sampler = gpu.GpuSampler(log, every_s=every_s, probe=probe)
    log.listeners.append(sampler)
    return log, sampler


def _gpu_records(tmp_path) -> list[dict]:
    return [r for r in read_events(tmp_path / "events.jsonl").records if r["kind"] == "gpu"]


def test_sampler_without_gpu_writes_one_record_and_stops(tmp_path):
    log, sampler = _sampled_log(tmp_path, gpu.NullProbe("no NVIDIA GPU: test"))
    sampler.start()
    sampler._thread.join(5)
    assert not sampler._thread.is_alive()
    log.close()
    (r,) = read_events(tmp_path / "events.jsonl").records
    assert r["kind"] == "gpu" and r["available"] is False and r["reason"] == "no NVIDIA GPU: test"


def test_sampler_follows_the_step_and_stops_at_the_end(tmp_path):
    log, sampler = _sampled_log(tmp_path, ScriptedProbe())
    sampler.start()
    log.emit("step", step=7, loss=1.0)
    wait_for(lambda: sum(r.get("step") == 7 for r in _gpu_records(tmp_path)) >= 2, 30, "samples at step 7")
    log.emit("end", step=7, status="completed")
    wait_for(lambda: not sampler._thread.is_alive(), 30, "the sampler to stop at the end record")
    log.close()
    recs = read_events(tmp_path / "events.jsonl").records
    gpus = [r for r in recs if r["kind"] == "gpu"]
    assert len(gpus) >= 3
    assert recs[-1]["kind"] == "end"  # nothing after the end
    g = gpus[-1]
    assert g["step"] == 7 and g["available"] is True and g["gpus"][0]["name"] == "X"
    assert g["used_mb"] == g["gpus"][0]["used_mb"] and g["total_mb"] == 80000


def test_a_slow_gpu_read_never_holds_up_the_training_thread(tmp_path):
    probe = ScriptedProbe(blocked=True)
    log, sampler = _sampled_log(tmp_path, probe)
    sampler.start()
    wait_for(lambda: probe.reading, 30, "the sampler inside its GPU read")
    for s in range(1, 50):
        log.emit("step", step=s, loss=1.0)
    log.emit("end", step=49, status="completed")
    assert probe.reading  # every record was written while the read still hung
    probe.release.set()
    sampler.stop()
    log.close()
    assert not sampler._thread.is_alive()
    recs = read_events(tmp_path / "events.jsonl").records
    assert [r["step"] for r in recs if r["kind"] == "step"] == list(range(1, 50))
    assert recs[-1]["kind"] == "end"  # the read that ended after it wrote nothing


def test_sampler_interval(tmp_path):
    log, sampler = _sampled_log(tmp_path, ScriptedProbe(), every_s=0.2)
    sampler.start()
    wait_for(lambda: len(_gpu_records(tmp_path)) >= 3, 30, "three samples")
    sampler.stop()
    log.close()
    times = [r["t"] for r in _gpu_records(tmp_path)]
    # The sampler waits every_s between reads (the log's times are rounded to the millisecond).
    assert all(b - a >= 0.2 - 0.002 for a, b in zip(times, times[1:], strict=False)), times


# -- a real run --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_tiny_training_run_logs_gpu_samples_and_a_real_alert(tiny_model, write_config):
    from engine.config.config import load_config
    from engine.train.train import run

    path = write_config(
        tiny_model("qwen3"),
        max_steps=4,
        health={"initial_loss_max": 1.0, "gpu_sample_s": 0.05},
    )
    config, _ = load_config(path)
    seen = []
    result = run(config, resume="never", listeners=[seen.append])
    assert result.status == "completed"
    recs = read_events(result.run_dir / "events.jsonl").records
    kinds = [r["kind"] for r in recs]
    assert kinds[-1] == "end"

    gpus = [r for r in recs if r["kind"] == "gpu"]
    assert gpus
    if gpu.get_probe().available:
        assert all(r["available"] for r in gpus) and gpus[-1]["gpus"][0]["total_mb"] > 0
    else:
        (g,) = gpus
        assert g["available"] is False and g["reason"].startswith("no NVIDIA GPU")

    (alert,) = [r for r in recs if r["kind"] == "alert" and r["rule"] == "initial_loss"]
    first = next(r for r in recs if r["kind"] == "step")
    assert alert["step"] == first["step"] and alert["value"] == round(first["loss"], 4)
    assert f"initial loss {first['loss']:.3f} > 1.0" in alert["message"]
    assert alert["advice"] == "OK if higher, will decrease"
    assert recs.index(alert) == recs.index(first) + 1
    # The caller's listener saw the step before the alert it raised.
    assert [r["kind"] for r in seen].index("alert") > [r["kind"] for r in seen].index("step")
    assert not any(t.name == "gpu-sampler" and t.is_alive() for t in threading.enumerate())
