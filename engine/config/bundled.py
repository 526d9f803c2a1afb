"""The files that ship inside the package: the demo config and data, the default inference suite.

One place names the asset folder, so moving it touches one line.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_CONFIG = ASSETS / "demo.yaml"
DEMO_CHAT = ASSETS / "demo_chat.jsonl"
INFERENCE_SUITE = ASSETS / "inference_suite.jsonl"


def demo_config_path() -> Path:
    return DEMO_CONFIG
