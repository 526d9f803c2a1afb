"""The guide's health rules on scripted record streams: each rule passing and failing,
once per episode, thresholds from the config, non-finite values as the run log writes them."""

from __future__ import annotations

import json
import math

import pytest

from engine.config.config import HealthConfig, validate
from engine.errors import UserError
from engine.run.events import RunLog, read_events
from engine.train.bands import expected_band
from engine.train.health import ADVICE, HealthListener, HealthMonitor, num

GIB = 1024


def step(s, loss, epoch=0.0, **kw):
    return {"t": 0, "kind": "step", "step": s, "loss": loss, "epoch": epoch, **kw}


def ev(s, eval_loss, epoch=1.5, **kw):
    return {"t": 0, "kind": "eval", "step": s, "eval_loss": eval_loss, "epoch": epoch, **kw}


def gpu(*used_total, s=10, available=True):
    gpus = [
        {"index": i, "name": "H100", "used_mb": u * GIB, "total_mb": t * GIB}
        for i, (u, t) in enumerate(used_total)
    ]
    return {"t": 0, "kind": "gpu", "step": s, "available": available, "gpus": gpus}


def feed(monitor, records, resolved: bool = False):
    """All alerts (and with ``resolved``, the resolutions), each tagged with the index of the
    record that raised it."""
    out = []
    for i, r in enumerate(records):
        for a in monitor.observe(r):
            if resolved or not a.get("resolved"):
                out.append({**a, "at": i})
    return out


def rules(alerts, rule):
    return [a for a in alerts if a["rule"] == rule]


def settled(n=20, loss=2.5, start=1):
    """n healthy steps at a flat loss (inside the guide's initial band)."""
    return [step(start + i, loss + (0.01 if i % 2 else -0.01)) for i in range(n)]


# -- values as the run log writes them --------------------------------------------------------


def test_num_reads_nan_and_inf_strings():
    assert math.isnan(num("nan"))
    assert num("inf") == math.inf and num("-inf") == -math.inf
    assert num(1) == 1.0 and num(2.5) == 2.5
    assert num(None) is None and num(True) is None and num("abc") is None and num([1]) is None


def test_the_run_log_writes_nan_as_a_string_that_the_rule_reads(tmp_path):
    log = RunLog(tmp_path / "events.jsonl")
    log.emit("step", step=1, loss=float("nan"), grad_norm=float("inf"))
    log.close()
    (record,) = read_events(tmp_path / "events.jsonl").records
    assert record["loss"] == "nan" and record["grad_norm"] == "inf"
    (alert,) = HealthMonitor().observe(record)
    assert alert["rule"] == "nan" and alert["level"] == "critical"
    assert "loss is nan" in alert["message"] and "grad norm is inf" in alert["message"]
    assert alert["advice"] == ADVICE["nan"]


# -- NaN / Inf ---------------------------------------------------------------------------------


def test_nan_fires_once_per_episode_and_rearms():
    m = HealthMonitor()
    recs = [*settled(5), step(6, "nan"), step(7, "nan"), step(8, float("nan")), step(9, 2.4)]
    recs += [step(10, 2.4, grad_norm="inf"), step(11, 2.4, grad_norm="inf"), step(12, 2.4, grad_norm=0.5)]
    nan = rules(feed(m, recs), "nan")
    assert [a["step"] for a in nan] == [6, 10]
    assert "loss is nan at step 6" in nan[0]["message"]
    assert "grad norm is inf" in nan[1]["message"]
    assert m.active == {}


def test_nan_eval_loss_is_critical():
    m = HealthMonitor()
    (a,) = rules(feed(m, [*settled(3), ev(4, "nan")]), "nan")
    assert a["level"] == "critical" and "eval loss is nan" in a["message"]


def test_finite_values_raise_no_nan_alert():
    assert rules(feed(HealthMonitor(), [*settled(30), ev(31, 2.6, epoch=0.2)]), "nan") == []


# -- initial loss ------------------------------------------------------------------------------


def test_initial_loss_inside_the_guide_band_is_quiet():
    assert rules(feed(HealthMonitor(), [step(1, 2.5), step(2, 3.5)]), "initial_loss") == []


def test_initial_loss_above_the_band_warns_ok_if_higher():
    (a,) = rules(feed(HealthMonitor(), [step(1, 4.2), step(2, 4.1), step(3, 9.0)]), "initial_loss")
    assert a["level"] == "warning" and a["step"] == 1 and a["value"] == 4.2
    assert "initial loss 4.200 > 3.0" in a["message"]
    assert a["advice"] == "OK if higher, will decrease"


def test_initial_loss_below_the_band_points_at_the_data_format():
    (a,) = rules(feed(HealthMonitor(), [step(1, 0.8)]), "initial_loss")
    assert "< 2.0" in a["message"] and "data format" in a["advice"]


def test_initial_loss_threshold_from_config():
    m = HealthMonitor(HealthConfig(initial_loss_max=5.0))
    assert rules(feed(m, [step(1, 4.2)]), "initial_loss") == []


def test_initial_loss_is_not_checked_after_a_resume():
    m = HealthMonitor()
    recs = [{"t": 0, "kind": "resume", "step": 50, "from_step": 50, "path": "x"}, step(51, 0.7)]
    assert rules(feed(m, recs), "initial_loss") == []


def test_nan_first_loss_does_not_count_as_the_initial_loss():
    recs = [step(1, "nan"), step(2, 2.5)]
    assert rules(feed(HealthMonitor(), recs), "initial_loss") == []


# -- spike -------------------------------------------------------------------------------------


def test_spike_fires_once_per_episode_and_rearms():
    m = HealthMonitor()
    recs = [*settled(20, 1.0)]
    recs += [step(21, 2.0), step(22, 2.1), step(23, 1.0), step(24, 1.0), step(25, 1.9)]
    spikes = rules(feed(m, recs), "spike")
    assert [a["step"] for a in spikes] == [21, 25]
    assert "2.000 at step 21" in spikes[0]["message"] and "recent median" in spikes[0]["message"]
    assert spikes[0]["advice"] == ADVICE["spike"]


def test_noise_below_the_spike_factor_is_quiet():
    recs = [step(i, 1.0 + 0.3 * ((i * 7919) % 10) / 10) for i in range(1, 200)]
    assert rules(feed(HealthMonitor(), recs), "spike") == []


def test_spike_factor_from_config():
    recs = [*settled(20, 1.0), step(21, 2.0)]
    assert rules(feed(HealthMonitor(HealthConfig(spike_factor=3.0)), recs), "spike") == []
    assert len(rules(feed(HealthMonitor(HealthConfig(spike_factor=1.2)), recs), "spike")) == 1


def test_spike_needs_a_recent_window_first():
    # Three steps are no window: a jump at step 4 is not judged.
    assert rules(feed(HealthMonitor(), [step(1, 1), step(2, 1), step(3, 1), step(4, 5)]), "spike") == []


# -- plateau -----------------------------------------------------------------------------------


def test_plateau_after_plateau_steps_without_improvement_once():
    m = HealthMonitor()
    recs = [step(s, 1.2) for s in range(1, 2500)]
    plateaus = rules(feed(m, recs), "plateau")
    assert [a["step"] for a in plateaus] == [1001]
    assert "has not improved by 0.01 in 1000 steps" in plateaus[0]["message"]
    assert plateaus[0]["advice"].startswith("increase the learning rate or reduce regularization")
    assert m.active == {"plateau": "warning"}


def test_plateau_rearms_on_improvement_and_fires_again():
    m = HealthMonitor(HealthConfig(plateau_steps=100, smoothing_span=5))
    recs = [step(s, 1.2) for s in range(1, 150)]
    recs += [step(s, 0.8) for s in range(150, 400)]
    plateaus = rules(feed(m, recs), "plateau")
    # flat until 101 -> alert; the drop to 0.8 re-arms; flat again from ~160 -> second alert.
    assert len(plateaus) == 2 and plateaus[0]["step"] == 101 and plateaus[1]["step"] > 250


def test_a_steadily_falling_loss_is_no_plateau():
    recs = [step(s, 3.0 - s / 1000) for s in range(1, 2000)]
    assert rules(feed(HealthMonitor(), recs), "plateau") == []


def test_plateau_counts_steps_not_records():
    # logging_steps: 10 -> 101 records cover 1000 steps.
    recs = [step(s, 1.2) for s in range(10, 1020, 10)]
    assert [a["step"] for a in rules(feed(HealthMonitor(), recs), "plateau")] == [1010]


# -- overfitting / underfitting ---------------------------------------------------------------


def test_overfitting_gap_once_per_episode():
    m = HealthMonitor()
    recs = [*[step(s, 1.0) for s in range(1, 31)], ev(31, 1.6), ev(32, 1.7), ev(33, 1.3), ev(34, 1.65)]
    over = rules(feed(m, recs), "overfitting")
    assert [a["step"] for a in over] == [31, 34]
    assert "eval loss 1.600 - train loss 1.000 (smoothed) = 0.600 > 0.5" in over[0]["message"]
    assert over[0]["advice"] == "reduce epochs (num_epochs) or increase dropout (lora_dropout)"


def test_overfit_gap_from_config():
    recs = [*settled(30, 1.0), ev(31, 1.6)]
    assert rules(feed(HealthMonitor(HealthConfig(overfit_gap=1.0)), recs), "overfitting") == []


def test_underfitting_only_after_epoch_one():
    m = HealthMonitor()
    recs = [*settled(30, 2.0), ev(31, 2.1, epoch=0.6), ev(40, 2.1, epoch=1.1), ev(50, 2.0, epoch=1.5)]
    under = rules(feed(m, recs), "underfitting")
    assert [a["step"] for a in under] == [40]
    assert "both > 1.5 at epoch 1.10" in under[0]["message"]
    assert under[0]["advice"] == "increase model capacity (lora_r) or the learning rate"


def test_underfitting_quiet_when_either_loss_is_low():
    m = HealthMonitor(HealthConfig(overfit_gap=5))
    recs = [*settled(30, 1.2), ev(31, 1.8, epoch=1.2), ev(32, 1.3, epoch=1.4)]
    assert rules(feed(m, recs), "underfitting") == []


def test_underfitting_on_train_loss_alone_without_a_validation_set():
    m = HealthMonitor()
    recs = [{"t": 0, "kind": "data", "rows": 10, "val_rows": 0}]
    recs += [step(s, 2.0, epoch=s / 10) for s in range(1, 15)]
    (a,) = rules(feed(m, recs), "underfitting")
    assert a["step"] == 10 and "no validation set" in a["message"]


# -- perplexity --------------------------------------------------------------------------------


def test_perplexity_warns_escalates_and_rearms():
    m = HealthMonitor(HealthConfig(overfit_gap=10, underfit_loss=10))
    recs = [*settled(20, 1.2)]
    recs += [
        ev(21, math.log(3.5), perplexity=3.5),  # > 3.0: warning
        ev(22, math.log(5.0), perplexity=5.0),  # > 4.0: worse, critical
        ev(23, math.log(5.5), perplexity=5.5),  # still critical: quiet
        ev(24, math.log(2.5), perplexity=2.5),  # healthy: re-arms
        ev(25, math.log(3.2), perplexity=3.2),  # warning again
    ]
    ppl = rules(feed(m, recs), "perplexity")
    assert [(a["step"], a["level"]) for a in ppl] == [(21, "warning"), (22, "critical"), (25, "warning")]
    assert "validation perplexity 3.5 > 3.0" in ppl[0]["message"]
    assert ppl[1]["advice"].startswith("investigate")


def test_perplexity_before_the_configured_epoch_is_not_judged():
    recs = [*settled(20, 1.2), ev(21, 2.0, epoch=0.4, perplexity=7.4)]
    assert rules(feed(HealthMonitor(), recs), "perplexity") == []
    m = HealthMonitor(HealthConfig(perplexity_after_epoch=0.0))
    assert len(rules(feed(m, recs), "perplexity")) == 1


def test_perplexity_inf_string_is_critical():
    recs = [*settled(20, 1.2), ev(21, 60.0, perplexity="inf")]
    (a,) = rules(feed(HealthMonitor(), recs), "perplexity")
    assert a["level"] == "critical" and a["value"] == "inf"


def test_perplexity_thresholds_from_config():
    m = HealthMonitor(HealthConfig(perplexity_max=10, perplexity_investigate=20))
    recs = [*settled(20, 1.2), ev(21, math.log(5.0), perplexity=5.0)]
    assert rules(feed(m, recs), "perplexity") == []


# -- GPU memory -------------------------------------------------------------------------------


def test_gpu_memory_nearing_then_above_then_rearm():
    m = HealthMonitor()
    recs = [gpu((60, 80)), gpu((70, 80)), gpu((71, 80)), gpu((76, 80)), gpu((77, 80))]
    recs += [gpu((50, 80), s=10), gpu((50, 80), s=12), gpu((70, 80), s=13)]  # low for 2 steps
    mem = feed(m, recs)
    assert [(a["at"], a["level"]) for a in mem] == [(1, "warning"), (3, "critical"), (7, "warning")]
    assert "GPU 0 (H100) uses 70.0 GiB, nearing the 75.0 GiB line" in mem[0]["message"]
    assert "above the 75.0 GiB line" in mem[1]["message"]
    assert mem[0]["advice"].startswith("reduce batch size if OOM")


def test_gpu_memory_alert_does_not_flap_while_probes_come_and_go():
    """A QLoRA 8B at 71 GiB a step, 7 GiB while probes run after each save (their engine frees
    the allocator's cache): one alert for the whole stretch, resolved once training goes on low."""
    recs = []
    for s in range(1, 21):
        recs.append(step(s, 1.0))
        recs.append(gpu((71, 80), s=s))
        if s % 5 == 0:  # a save: probes
            recs += [{"t": 0, "kind": "probing", "step": s}, gpu((7, 80), s=s), gpu((7, 80), s=s)]
    recs += [step(21, 1.0), gpu((30, 80), s=21), step(22, 1.0), gpu((30, 80), s=22), step(23, 1.0)]
    recs += [gpu((30, 80), s=23)]
    got = feed(HealthMonitor(), recs, resolved=True)
    mem = [a for a in got if a["rule"] == "gpu_memory"]
    assert [(a.get("level"), bool(a.get("resolved"))) for a in mem] == [("warning", False), (None, True)]
    assert mem[1]["step"] == 22  # low since the probes at step 20, two steps on


def test_gpu_memory_judges_the_fullest_gpu():
    (a,) = feed(HealthMonitor(), [gpu((10, 80), (74, 80))])
    assert "GPU 1" in a["message"]


def test_gpu_memory_on_a_card_smaller_than_the_guide_line():
    (a,) = feed(HealthMonitor(), [gpu((22, 24))])
    assert a["level"] == "warning" and "24.0 GiB line" in a["message"]


def test_gpu_memory_threshold_from_config_and_no_gpu_is_quiet():
    assert feed(HealthMonitor(HealthConfig(gpu_memory_max_gb=40)), [gpu((50, 80))])[0]["level"] == "critical"
    no_gpu = {"t": 0, "kind": "gpu", "available": False, "reason": "no NVIDIA GPU"}
    assert feed(HealthMonitor(), [no_gpu, gpu((10, 80))]) == []


# -- final loss --------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "advice"), [(2.5, "final_loss_data"), (1.7, "final_loss"), (1.0, None)])
def test_final_loss_at_the_last_step(loss, advice):
    recs = [step(s, loss, max_steps=20) for s in range(1, 21)]
    final = rules(feed(HealthMonitor(HealthConfig(initial_loss_min=0)), recs), "final_loss")
    if advice is None:
        assert final == []
    else:
        (a,) = final
        assert a["step"] == 20 and a["advice"] == ADVICE[advice]


# -- the listener: alerts into the same run log -----------------------------------------------


def test_listener_writes_alerts_after_the_record_that_raised_them(tmp_path):
    seen = []
    log = RunLog(tmp_path / "events.jsonl", [seen.append])
    log.listeners.append(HealthListener(log, HealthConfig(initial_loss_max=1.0)))
    log.emit("step", step=1, loss=2.5)
    log.emit("step", step=2, loss=2.4)
    log.close()
    kinds = [(r["kind"], r.get("rule")) for r in read_events(tmp_path / "events.jsonl").records]
    assert kinds == [("step", None), ("alert", "initial_loss"), ("step", None)]
    assert [r["kind"] for r in seen] == ["step", "alert", "step"]
    alert = read_events(tmp_path / "events.jsonl").records[1]
    assert alert["level"] == "warning" and alert["step"] == 1 and alert["value"] == 2.5


def test_listener_ignores_alert_records(tmp_path):
    log = RunLog(tmp_path / "events.jsonl")
    health = HealthListener(log)
    log.listeners.append(health)
    log.emit("alert", rule="torn_checkpoint", level="warning", message="m", advice="a")
    log.emit("step", step=1, loss="nan")
    log.close()
    recs = read_events(tmp_path / "events.jsonl").records
    assert [r["kind"] for r in recs] == ["alert", "step", "alert"]


def test_a_rule_bug_becomes_one_note_not_a_crash(tmp_path):
    log = RunLog(tmp_path / "events.jsonl")
    health = HealthListener(log)
    log.listeners.append(health)

    def broken(record):
        raise ZeroDivisionError("boom")

    health.monitor.observe = broken
    log.emit("step", step=1, loss=2.5)
    log.emit("step", step=2, loss=2.5)
    log.close()
    recs = read_events(tmp_path / "events.jsonl").records
    notes = [r for r in recs if r["kind"] == "note"]
    assert len(notes) == 1 and "ZeroDivisionError: boom" in notes[0]["message"]


# -- thresholds from the config file ----------------------------------------------------------


def test_health_thresholds_come_from_the_config(tmp_path):
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "health": {"overfit_gap": 0.2}}
    config, _ = validate(raw, tmp_path / "c.yaml")
    assert config.health.overfit_gap == 0.2 and config.health.plateau_steps == 1000
    recs = [*settled(30, 1.0), ev(31, 1.3)]
    assert len(rules(feed(HealthMonitor(config.health), recs), "overfitting")) == 1


def test_a_misspelt_health_key_is_a_user_error(tmp_path):
    text = "base_model: m\ndatasets:\n  - path: d.jsonl\nhealth:\n  plateau_step: 5\n"
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "health": {"plateau_step": 5}}
    with pytest.raises(UserError) as e:
        validate(raw, tmp_path / "c.yaml", text)
    assert "c.yaml:5" in str(e.value) and "health.plateau_step" in str(e.value)
    assert "plateau_steps" in e.value.fix


# -- expected bands ----------------------------------------------------------------------------


def test_expected_band_at_the_guide_points():
    b = expected_band(0.5)
    assert b.loss == (1.62, 1.98) and b.ppl == (3.15, 3.85) and "~1.8" in b.note
    assert expected_band(1.0).loss == (1.26, 1.54)
    assert expected_band(2.0).ppl == (2.07, 2.53)
    assert expected_band(3.0).loss == (0.0, 1.0) and expected_band(3.0).ppl == (1.0, 2.0)
    assert expected_band(7.0) == expected_band(3.0)
    assert expected_band(0).loss == (2.0, 3.0)


def test_expected_band_10pct_run():
    assert expected_band(0, "10pct").loss == (2.0, 3.0)
    end = expected_band(2.0, "10pct")
    assert end.loss[1] == 1.5 and end.ppl[1] == 3.0


def test_expected_band_falls_with_the_epoch():
    his = [expected_band(e / 10).loss[1] for e in range(0, 35)]
    assert all(a >= b for a, b in zip(his, his[1:], strict=False))
    with pytest.raises(ValueError):
        expected_band(1.0, "half")


def test_alerts_are_json_clean():
    recs = [*settled(20, 1.0), step(21, "inf"), ev(22, 60.0, perplexity="inf"), gpu((76, 80))]
    for a in feed(HealthMonitor(HealthConfig(perplexity_after_epoch=0)), recs):
        json.dumps(a, allow_nan=False)
        assert set(a) >= {"rule", "level", "message", "advice", "step"}


def test_final_loss_reads_the_last_losses_not_the_early_curve():
    # Falls from 3.0 to 1.0 over 40 steps: an EMA would still be near 2; the end is ~1.1.
    recs = [step(s, 3.0 - 2.0 * s / 40, max_steps=40) for s in range(1, 41)]
    assert rules(feed(HealthMonitor(), recs), "final_loss") == []


def test_a_stopped_run_gets_no_final_loss_alert():
    recs = [step(s, 2.5, max_steps=100) for s in range(1, 41)]
    assert rules(feed(HealthMonitor(), recs), "final_loss") == []


def test_spike_ignores_ratio_noise_at_low_loss():
    from engine.config.config import HealthConfig
    from engine.train.health import HealthMonitor

    m = HealthMonitor(HealthConfig())
    alerts = []
    for step in range(1, 40):
        loss = 0.12 if step != 30 else 0.19  # 1.6x the median, but only 0.07 above it
        alerts += m.observe({"t": step, "kind": "step", "step": step, "loss": loss, "epoch": step / 100})
    assert not [a for a in alerts if a["rule"] == "spike"]
    alerts = m.observe({"t": 41, "kind": "step", "step": 41, "loss": 0.9, "epoch": 0.41})
    assert [a["rule"] for a in alerts if a["rule"] == "spike"] == ["spike"]


# -- resolution -------------------------------------------------------------------------------


def test_an_alert_that_clears_says_so_with_the_value_now():
    """Perplexity 56 at epoch 1.5 is an error; at 1.75 later it is resolved, once."""
    recs = [*settled(20), ev(21, math.log(56.0), epoch=1.5), ev(22, math.log(1.75), epoch=2.0), ev(23, 0.5)]
    out = rules(feed(HealthMonitor(), recs, resolved=True), "perplexity")
    assert [(a["at"], a.get("level"), bool(a.get("resolved"))) for a in out] == [
        (20, "critical", False),
        (21, None, True),
    ]
    assert out[1]["message"] == "resolved at step 22: perplexity now 1.75"


def test_one_moment_rules_never_resolve():
    recs = [step(1, 9.0), *settled(20, start=2)]
    out = feed(HealthMonitor(), recs, resolved=True)
    assert [a["rule"] for a in out] == ["initial_loss"]


def test_the_listener_writes_resolutions_as_their_own_records(tmp_path):
    log = RunLog(tmp_path / "events.jsonl")
    listener = HealthListener(log)
    log.listeners.append(listener)
    for r in [*settled(20), ev(21, math.log(56.0), epoch=1.5), ev(22, math.log(1.75), epoch=2.0)]:
        log.emit(r.pop("kind"), **{k: v for k, v in r.items() if k != "t"})
    log.close()
    kinds = [(r["kind"], r.get("rule")) for r in read_events(tmp_path / "events.jsonl").records]
    assert ("alert", "perplexity") in kinds and ("alert_resolved", "perplexity") in kinds
    assert kinds.index(("alert", "perplexity")) < kinds.index(("alert_resolved", "perplexity"))


def test_a_rule_is_one_registered_class(monkeypatch):
    """The rules are a registry: the guide's nine and ``forgetting`` (issue 32) by name, and a new ``Rule`` subclass
    registered (as a module of ``engine.train.rules`` would at import) alerts once per episode
    in ``order`` among the others, with nothing else told."""
    from engine.train import rules as registry

    names = [cls.name for cls in registry.rule_types()]
    assert sorted(names) == sorted(
        ["nan", "initial_loss", "spike", "plateau", "overfitting", "underfitting", "perplexity"]
        + ["gpu_memory", "final_loss", "forgetting"]
    )

    class GradNormRule(registry.Rule):
        name, order, kinds = "grad_norm", 5, ("step",)

        def check(self, record, curve):
            high = (num(record.get("grad_norm")) or 0) > 10
            return [registry.verdict("grad_norm", "warning" if high else None, step=record["step"], value=1)]

    monkeypatch.setitem(registry._RULES, "grad_norm", GradNormRule)
    m = HealthMonitor(HealthConfig())
    alerts = feed(
        m, [step(1, 5.0, grad_norm=50), step(2, 2.5, grad_norm=50), step(3, 2.5, grad_norm=1)], True
    )
    # step 1: grad_norm (order 5) before initial_loss (order 10); step 2 quiet; step 3 resolved
    assert [(a["at"], a["rule"], a.get("resolved", False)) for a in alerts] == [
        (0, "grad_norm", False),
        (0, "initial_loss", False),
        (2, "grad_norm", True),
    ]
