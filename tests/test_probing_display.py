"""While probes run, headless says so (suite, i of n, time left), and a cut probe says by what."""

from __future__ import annotations

import io

from engine.cli.headless import Progress


def test_headless_shows_probing_and_cut_probes():
    out = io.StringIO()
    show = Progress(stream=out)
    show({"kind": "probing", "step": 20, "suite": "identity", "i": 0, "n": 5})
    show({"kind": "probing", "step": 20, "suite": "identity", "i": 2, "n": 5, "seconds_left": 7.5})
    probe = {"kind": "probe", "step": 20, "suite": "identity", "passed": 1, "total": 2, "seconds": 5.0}
    show({**probe, "cut": "pause", "planned": 5})
    assert out.getvalue().splitlines() == [
        "probing identity on step 20: 0/5",
        "probing identity on step 20: 2/5, ~8s left",
        "probe identity on step 20: 1/2 of 5, cut short by pause (5.0s)",
    ]


def test_checkpoint_table_says_a_probe_was_cut():
    from cockpit.widgets.checkpoints_table import _probe
    from engine.run import records

    scores = {
        "identity": records.decode(
            {"t": 1.0, "kind": "probe", "passed": 1, "total": 2, "cut": "stop", "planned": 5}
        ),
        "inference": records.decode({"t": 1.0, "kind": "probe", "passed": 7, "total": 9}),
    }
    assert _probe(scores).plain == "identity cut (1/2 of 5) · inference 7/9"


def test_headless_says_which_path_a_4bit_base_decoded_on():
    out = io.StringIO()
    show = Progress(stream=out)
    note = "4-bit base decoded on a bf16 copy (13.88 GiB, made in 0.25 s)"
    show(
        {
            "kind": "probe",
            "step": 20,
            "suite": "identity",
            "passed": 5,
            "total": 5,
            "seconds": 2.1,
            "decode": note,
        }
    )
    assert out.getvalue().splitlines() == [f"probe identity on step 20: 5/5 (2.1s; {note})"]


def test_checkpoint_table_says_when_probes_decoded_in_4bit():
    from cockpit.widgets.checkpoints_table import _probe
    from engine.run import records

    def probe(decode):
        return records.decode({"t": 1.0, "kind": "probe", "passed": 5, "total": 5, "decode": decode})

    slow = "4-bit base decoded in 4-bit: a bf16 copy needs 13.88 GiB + 1.00 GiB margin, 9.00 GiB free"
    assert _probe({"identity": probe(slow)}).plain == "identity 5/5 · 4-bit decode"
    fast = "4-bit base decoded on a bf16 copy (13.88 GiB, made in 0.25 s)"
    assert _probe({"identity": probe(fast)}).plain == "identity 5/5"
