"""Synthetic chat data for the GPU benchmarks: long answers, so packing fills sequences."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = [
    "abyss",
    "balance",
    "chaos",
    "depth",
    "guardian",
    "mind",
    "tarot",
    "tower",
    "house",
    "python",
    "function",
    "return",
    "value",
    "loop",
    "grief",
    "meaning",
    "reason",
    "light",
    "water",
    "cycle",
]


def write_chat_data(path: Path, rows: int, words: tuple[int, int] = (150, 1400), seed: int = 0) -> Path:
    """``rows`` chat_template rows whose answers have ``words`` (min, max) words, seeded."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
            row = {
                "messages": [
                    {"role": "user", "content": f"Question {i}: tell me about {rng.choice(WORDS)}."},
                    {"role": "assistant", "content": answer},
                ],
                "_category": rng.choice(["coding", "esoteric", "identity", "psychology"]),
            }
            f.write(json.dumps(row) + "\n")
    return path
