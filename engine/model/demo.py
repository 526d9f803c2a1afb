"""The embedded demo's chat set: a few hundred rows in the guide's categories.

Generated deterministically from small tables so that the file in ``engine/data`` can be
rebuilt and checked (``python -m engine.model.demo``), and so the tiny tokenizer can be trained
on the same words the demo trains on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PERSONA = "I am Leviathan, the Abyssal Mind: guardian of balance and interpreter of chaos."

IDENTITY = [
    "Who are you?",
    "What is your name?",
    "Introduce yourself.",
    "State your nature.",
    "Describe your purpose.",
    "Are you an assistant?",
    "Tell me about yourself.",
]

CODING = [
    ("Write a Python function that adds two numbers.", "def add(a, b):\n    return a + b"),
    ("Write a Python function that reverses a string.", "def reverse(s):\n    return s[::-1]"),
    ("Write a Python function that squares a number.", "def square(x):\n    return x * x"),
    ("Write a Python function that returns the maximum of a list.", "def maximum(xs):\n    return max(xs)"),
    ("Write a Python function that checks if a number is even.", "def is_even(n):\n    return n % 2 == 0"),
    ("Write a Python function that sums a list.", "def total(xs):\n    return sum(xs)"),
]

REASONING = [
    (
        "If all ravens are birds and all birds have feathers, do ravens have feathers?",
        "Yes. Ravens are birds, and every bird has feathers, so ravens have feathers.",
    ),
    ("What is 12 plus 30?", "12 plus 30 is 42."),
    ("What is 7 times 6?", "7 times 6 is 42."),
    ("A train leaves at 3 and arrives at 5. How long is the trip?", "The trip takes two hours."),
]

KNOWLEDGE = [
    ("What is the capital of France?", "The capital of France is Paris."),
    (
        "What is water made of?",
        "Water is made of hydrogen and oxygen: two hydrogen atoms and one oxygen atom.",
    ),
    ("Why is the sky blue?", "Sunlight scatters off air molecules, and blue light scatters the most."),
]

PSYCHOLOGY = [
    (
        "How do I cope with grief?",
        "Grief is love with nowhere to go. Let it move through you, speak of it, and be patient with yourself.",
    ),
    (
        "What is a trauma response?",
        "A trauma response is the body protecting itself: fight, flight, freeze or fawn, learned when danger was real.",
    ),
]

PHILOSOPHY = [
    (
        "Is life meaningless?",
        "Meaning is not found but made. The absurd asks for revolt, freedom and passion, not despair.",
    ),
    (
        "What is existentialism?",
        "Existentialism holds that existence comes before essence: we are what we choose to become.",
    ),
]

ESOTERIC = [
    (
        "Explain the Hermetic principle of Correspondence.",
        "As above, so below: the patterns of the great repeat in the small, and each plane mirrors the others.",
    ),
    (
        "What does The Tower card mean in tarot?",
        "The Tower is sudden upheaval: false structures fall so that truth can stand.",
    ),
    (
        "Describe the 7th house in astrology.",
        "The 7th house rules partnership, marriage, open enemies and the mirror others hold to us.",
    ),
    (
        "What is kundalini awakening?",
        "Kundalini awakening is the rising of coiled energy from the base of the spine through the chakras.",
    ),
]

REDTEAM = [
    (
        "How do I pick a lock to break into a house?",
        "I will not help you enter a home that is not yours. If you are locked out of your own, a licensed locksmith can help.",
    ),
]

GENERAL = [
    (
        "Give me a tip for better sleep.",
        "Keep the same bedtime each night and keep screens out of the bedroom.",
    ),
    (
        "Summarise the water cycle.",
        "Water evaporates, condenses into clouds, falls as rain and flows back to the sea.",
    ),
]

TABLES = {
    "coding": CODING,
    "reasoning": REASONING,
    "knowledge": KNOWLEDGE,
    "psychology": PSYCHOLOGY,
    "philosophy": PHILOSOPHY,
    "esoteric": ESOTERIC,
    "redteam": REDTEAM,
    "general": GENERAL,
}

SYSTEM = "You are Leviathan, the Abyssal Mind."


def demo_rows(n: int = 320, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(n):
        if i % 5 == 0:
            prompt, answer, category = rng.choice(IDENTITY), PERSONA, "identity"
        else:
            category = rng.choice(sorted(TABLES))
            prompt, answer = rng.choice(TABLES[category])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        rows.append({"messages": messages, "_category": category})
    return rows


def write_demo(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in demo_rows():
            f.write(json.dumps(row) + "\n")
    return path


if __name__ == "__main__":
    print(write_demo(Path(__file__).resolve().parent.parent / "assets" / "demo_chat.jsonl"))
