"""The gate: a config naming its 10% run starts only when that run's checks pass, or with a recorded override."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import cli_here, run_config, train_tiny

from engine.config.config import validate
from engine.config.evalconfig import GUIDE_GATE_CHECKS
from engine.errors import UserError
from engine.evaluate import gate
from engine.evaluate.checklist import load_state
from engine.run.events import read_events
from engine.ship.card import model_card, summarize_run

CHECKS = ["no_oom", "checkpoints_saved", "identity_responds"]


def _gated(root, model, name, checks=CHECKS, **over):
    raw = run_config(model, root, name, gate={"run": str(root / "logs" / "ten"), "checks": checks}, **over)
    raw["output_dir"] = str(root / f"out-{name}")  # its own checkpoints, beside the 10% run's
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_default_checks_are_the_guides_critical_ones(tmp_path):
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "gate": {"run": "logs/ten"}}
    config, _ = validate(raw, tmp_path / "c.yaml")
    assert config.gate.checks == list(GUIDE_GATE_CHECKS)
    with pytest.raises(UserError, match="gate"):
        validate({**raw, "gate": {"run": "logs/ten", "checks": []}}, tmp_path / "c.yaml")


def test_a_gate_on_a_run_never_trained_names_every_check(tmp_path):
    raw = {"base_model": "m", "datasets": [{"path": "d.jsonl"}], "gate": {"run": str(tmp_path / "nope")}}
    config, _ = validate(raw, tmp_path / "c.yaml")
    with pytest.raises(UserError) as e:
        gate.enforce(config, tmp_path / "logs" / "full", fresh=True)
    text = str(e.value)
    assert all(c in text for c in GUIDE_GATE_CHECKS) and "has not been trained" in text
    assert "--override-gate" in e.value.fix


@pytest.mark.slow
def test_gate_refuses_then_passes_and_an_override_is_recorded_everywhere(tmp_path, tiny_model):
    model = tiny_model("qwen3")
    ten = tmp_path / "logs" / "ten"
    train_tiny(model, tmp_path, "ten", max_steps=6, save_steps=3)  # the 10% run: no identity eval run

    # Unknown check ids are named with the ones that exist.
    bad = cli_here("train", _gated(tmp_path, model, "typo", checks=["no_oom", "identiti"]), "--headless")
    assert bad.returncode == 2 and "identiti" in bad.stderr and "identity_responds" in bad.stderr

    # Refused: exit 2, the one failing check with its evidence and the command that settles it;
    # nothing of the gated run is written.
    cfg = _gated(tmp_path, model, "full", max_steps=2)
    refused = cli_here("train", cfg, "--headless")
    assert refused.returncode == 2, refused.stderr
    assert "1 of 3 checks" in refused.stderr and "identity_responds" in refused.stderr
    assert "no_oom" not in refused.stderr.split("checks of")[1]  # passing checks are not listed
    assert f"--suite identity --run-dir {ten}" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "logs" / "full").exists()

    # Settled (the listed alternative: ticked by hand with a note), the gate opens.
    assert cli_here(
        "checklist", ten, "--tick", "identity_responds", "--note", "asked it by hand"
    ).returncode in (0, 1)
    assert cli_here("train", cfg, "--headless").returncode == 0
    full = tmp_path / "logs" / "full"
    rec = [r for r in read_events(full / "events.jsonl").records if r["kind"] == "gate"]
    assert len(rec) == 1 and rec[0]["passed"] is True and rec[0]["checks"] == CHECKS
    assert load_state(full)["gate"]["passed"] is True

    # A resume of a run past its gate is not gated again, even after the 10% run regressed.
    cli_here("checklist", ten, "--untick", "identity_responds")
    again = cli_here("train", _gated(tmp_path, model, "full", max_steps=4), "--headless")
    assert again.returncode == 0, again.stderr

    # An override proceeds and the reason is in the run log, the checklist and the model card.
    cfg = _gated(tmp_path, model, "over", max_steps=2)
    done = cli_here("train", cfg, "--headless", "--override-gate", "identity checked in the chat pane")
    assert done.returncode == 0, done.stderr
    over = tmp_path / "logs" / "over"
    rec = [r for r in read_events(over / "events.jsonl").records if r["kind"] == "gate"][0]
    assert rec["passed"] is False and rec["override"] == "identity checked in the chat pane"
    assert [f["id"] for f in rec["failing"]] == ["identity_responds"]
    state = json.loads((over / "checklist.json").read_text())
    assert state["gate"]["override"] == "identity checked in the chat pane"
    listing = cli_here("checklist", over)
    assert "OVERRIDDEN" in listing.stdout and "identity checked in the chat pane" in listing.stdout
    card = model_card(tmp_path / "nomodel", "me/model", summarize_run(over))
    assert "## Gate" in card and "identity checked in the chat pane" in card
