"""The demo's tiny model is built once into LEVIATHAN_CACHE, which parallel test workers (and
two cockpits started at once) share: a build that loses the race to rename leaves the winner's
model in place and no half-built folder behind."""

from __future__ import annotations

import json
import shutil

from engine.model import tiny


def test_the_second_builder_keeps_the_first_model(tmp_path, monkeypatch):
    real_build = tiny.build_tiny_model

    def build_then_lose_the_race(out, **kw):
        built = real_build(out, **kw)
        # Another process finishes first: its complete model is at the final path already.
        shutil.copytree(built, tmp_path / "tiny-qwen3-demo-v2")
        (tmp_path / "tiny-qwen3-demo-v2" / "winner").write_text("")
        return built

    monkeypatch.setattr(tiny, "build_tiny_model", build_then_lose_the_race)
    path = tiny.demo_model_path(tmp_path)
    assert path == tmp_path / "tiny-qwen3-demo-v2"
    assert (path / "winner").exists()  # not replaced
    assert json.loads((path / "tiny.json").read_text())["arch"] == "qwen3"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-qwen3-demo-v2"]  # no leftover build

    monkeypatch.setattr(tiny, "build_tiny_model", None)  # built: the next call builds nothing
    assert tiny.demo_model_path(tmp_path) == path
