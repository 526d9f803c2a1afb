#!/usr/bin/env python3
"""Issue 15, part B: move engine/'s flat modules into sub-packages by stage, in one go.

    python3 relayout.py /path/to/repo   # then: ruff check --fix . && ruff format . && lint-imports

Run it on a clean tree (everything committed): it stages its moves with git, and its text
rewrites are plain edits that `git diff` shows. About 3 s.

What it does (idempotent only in the sense that a second run finds nothing left to move):
1. git mv engine/data/ (the asset folder) to engine/assets/, so engine/data/ can be a package;
2. creates engine/<stage>/__init__.py for each stage with a docstring (what it owns, what it
   may import);
3. git mv engine/<module>.py to engine/<stage>/<module>.py by the STAGES table below; a module
   that is not in the table is printed and left where it is (add it to the table and run again
   on a fresh tree, or move it by hand);
4. rewrites, in engine/ cockpit/ tests/ benchmarks/ README.md pyproject.toml .ci/:
   ``engine.<module>`` wherever it is spelled (imports, ``import engine.x``, mock and monkeypatch
   paths, ``-m engine.x`` argv), ``from engine import a, b`` (split per stage),
   ``engine/<module>.py`` and ``engine/data/`` path spellings, and in moved modules
   ``Path(__file__).resolve().parent`` (one level deeper now); symbolic links into engine/data/
   (configs/demo.yaml) follow the assets;
5. updates pyproject.toml: package-data (assets/) and the import-linter stage contract.
engine/dist_main.py, engine/errors.py and engine/faults.py stay at the top (``python -m
engine.dist_main`` is what users and the README run; errors and fault injection sit below every
stage: the run log and the trainer both have injection points).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# stage -> (its modules, the docstring of its __init__.py). Top stage first: a stage may import
# the stages after it in this table, never those before it.
STAGES: dict[str, tuple[list[str], str]] = {
    "cli": (
        ["headless", "launcher", "cli_extra", "chat_cli", "show_masks", "cli_config", "prepare_cli"],
        "The command line's engine side: headless training and check, the multi-process launcher,\n"
        "the extra sub-commands, start-up checks. The only code that sees argparse.\n"
        "May import every stage below.",
    ),
    "ship": (
        ["export", "publish", "serve", "quantize", "merge", "card"],
        "After training: merge the adapter, quantize, serve, write the model card, publish.\n"
        "May import train, evaluate, chat, model, data, config, run.",
    ),
    "train": (
        [
            "train",
            "trainer",
            "callback",
            "guard",
            "dist",
            "curriculum",
            "health",
            "loss_watchdog",
            "trainer_args",
            "preflight",
            "bands",
        ],
        "One fine-tuning run: the recipe (train.py), the SFTTrainer subclass, the callback, the\n"
        "fault guard, several processes (dist), curriculum sampling, health bands, start-up checks.\n"
        "May import evaluate (on-save probes), chat, model, data, config, run.",
    ),
    "evaluate": (
        ["evaluate", "lmeval", "lmeval_engine", "checklist", "probes", "scoring"],
        "Evaluation: the built-in suites and their sandbox, lm-eval, on-save probes, the checklist.\n"
        "May import chat, model, data, config, run.",
    ),
    "chat": (
        ["chat", "chat_backend", "chat_bridge", "generate", "decode", "routing", "stop_tokens"],
        "Talking to a model: chat sessions and backends, the live-weights bridge, the generation\n"
        "engine (KV cache, decode steps, adapter routing).\n"
        "May import model, data, config, run.",
    ),
    "model": (
        ["model", "loading", "attention", "memory", "tiny", "demo", "gpu", "mfu"],
        "Models: loading a base (and adapters), attention choice, memory estimate, GPU sampling,\n"
        "MFU, the tiny offline models and the demo data they train on.\n"
        "May import data, config, run.",
    ),
    "data": (
        [
            "data",
            "prepare",
            "sample",
            "masks",
            "mask_locate",
            "readers",
            "prompt_formats",
            "prepwork",
            "prepcache",
            "datafp",
            "packview",
        ],
        "Data: dataset readers, rendering with chat templates and loss masks, preparation, sampling.\n"
        "May import config, run.",
    ),
    "config": (
        [
            "config",
            "evalconfig",
            "config_sections",
            "config_dist",
            "config_report",
            "axolotl_keys",
            "axolotl_schema",
            "yamlload",
            "optimizers",
            "rule_names",
            "saved_config",
            "bundled",
        ],
        "The run config: the pydantic schema by concern, Axolotl's key tables, loading and messages,\n"
        "the files bundled with the package (assets/).\n"
        "May import run (and engine.errors). No torch at import.",
    ),
    "run": (
        [
            "rundir",
            "events",
            "runlock",
            "runstate",
            "control",
            "control_file",
            "checkpoints",
            "lineage",
            "chat_log",
            "jobs",
        ],
        "The run folder (logs/<run>/) and what lives in it: RunDir, the run log, the lock, the run\n"
        "state, the control-file protocol, checkpoints and their markers, lineage, chat logs, jobs.\n"
        "Standard library (and yaml) only; imports no other stage. Shared by trainer, cockpit and CLI.",
    ),
}
STAY = {"__init__", "dist_main", "errors", "faults"}  # top-level on purpose: below every stage
TEXT_ROOTS = ["engine", "cockpit", "tests", "benchmarks", "configs", "README.md", "pyproject.toml", ".ci"]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ""}


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True)


def text_files(root: Path):
    for name in TEXT_ROOTS:
        p = root / name
        if p.is_file():
            yield p
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if (
                    f.is_file()
                    and f.suffix in TEXT_SUFFIXES
                    and "__snapshots__" not in f.parts
                    and "__pycache__" not in f.parts
                    and "assets" not in f.relative_to(root).parts[:2]
                ):
                    yield f


def retarget_links(root: Path) -> None:
    """Symbolic links into the asset folder (configs/demo.yaml) follow it to engine/assets/."""
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-s"], check=True, capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        meta, path = line.split("\t", 1)
        if not meta.startswith("120000"):
            continue
        link = root / path
        target = os.readlink(link)
        if "engine/data/" in target:
            link.unlink()
            link.symlink_to(target.replace("engine/data/", "engine/assets/"))
            git(root, "add", path)
            print(f"link {path} -> {os.readlink(link)}")


def split_from_engine_import(line: str, stage_of: dict[str, str]) -> str:
    """``from engine import a, b as c`` -> one line per stage (``engine`` for those staying)."""
    if re.match(r"^\s*from engine import\s*[(\\]", line):
        print(f"rewrite by hand (a multi-line import): {line.strip()}")
    m = re.match(r"^(\s*)from engine import ([^()#\\]+?)(\s*#.*)?$", line)
    if not m:
        return line
    indent, names, comment = m.group(1), m.group(2), m.group(3) or ""
    groups: dict[str, list[str]] = {}
    for item in (n.strip() for n in names.split(",") if n.strip()):
        stage = stage_of.get(item.split()[0])
        groups.setdefault(f"engine.{stage}" if stage else "engine", []).append(item)
    lines = [f"{indent}from {pkg} import {', '.join(items)}" for pkg, items in groups.items()]
    lines[0] += comment
    return "\n".join(lines)


def rewrite(text: str, stage_of: dict[str, str], moved_file: bool) -> str:
    names = "|".join(sorted(stage_of, key=len, reverse=True))
    # The asset folder, wherever a path spells it.
    text = text.replace("engine/data/", "engine/assets/")
    text = re.sub(r'("engine"\s*/\s*)"data"', r'\1"assets"', text)
    text = re.sub(rf"\bengine/({names})\.py\b", lambda m: f"engine/{stage_of[m[1]]}/{m[1]}.py", text)
    # engine.x -> engine.stage.x: imports, import strings, mock paths, -m argv. One pass, so a
    # replaced name is never replaced again. Not after a dot or a slash (a path, an attribute).
    text = re.sub(rf"(?<![\w./])engine\.({names})\b", lambda m: f"engine.{stage_of[m[1]]}.{m[1]}", text)
    # After the pass above, so the new ``from engine.<stage> import`` lines are not rewritten again.
    text = "\n".join(split_from_engine_import(line, stage_of) for line in text.split("\n"))
    if moved_file:
        text = text.replace("Path(__file__).resolve().parent", "Path(__file__).resolve().parent.parent")
        text = re.sub(r'(Path\(__file__\)\.resolve\(\)(?:\.parent)+\s*/\s*)"data"', r'\1"assets"', text)
    return text


def layer_contract(present: dict[str, list[str]]) -> str:
    stages = [f'  "engine.{s}",' for s in STAGES if present.get(s)]
    return (
        'name = "Engine stages import downwards only"\n'
        'type = "layers"\n'
        "layers = [\n"
        '  "engine.dist_main",\n' + "\n".join(stages) + '\n  "engine.faults",\n  "engine.errors",\n]'
    )


def main(root: Path) -> int:
    engine = root / "engine"
    stage_of = {m: s for s, (mods, _) in STAGES.items() for m in mods}
    modules = sorted(p.stem for p in engine.glob("*.py"))
    present = {s: [m for m in mods if (engine / f"{m}.py").exists()] for s, (mods, _) in STAGES.items()}
    left = [m for m in modules if m not in stage_of and m not in STAY]
    for m in left:
        print(f"not in the table, left in engine/: {m}.py")
    stage_of = {m: s for m, s in stage_of.items() if (engine / f"{m}.py").exists()}

    if (engine / "data").is_dir() and not (engine / "data" / "__init__.py").exists():
        git(root, "mv", "engine/data", "engine/assets")
        print("engine/data/ -> engine/assets/")
        retarget_links(root)

    for f in text_files(root):
        moved = f.parent == engine and f.stem in stage_of
        old = f.read_text()
        new = rewrite(old, stage_of, moved)
        if new != old:
            f.write_text(new)

    for stage, (_, doc) in STAGES.items():
        if not present[stage]:
            continue
        (engine / stage).mkdir(exist_ok=True)
        init = engine / stage / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}\n"""\n')
            git(root, "add", str(init.relative_to(root)))
        for m in present[stage]:
            git(root, "mv", f"engine/{m}.py", f"engine/{stage}/{m}.py")
        print(f"engine/{stage}/: {', '.join(present[stage])}")

    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    text = text.replace('"data/*.jsonl", "data/*.yaml"', '"assets/*.jsonl", "assets/*.yaml"')
    text = re.sub(
        r'name = "Engine stages import downwards only"\ntype = "layers"\nlayers = \[\n.*?\n\]',
        layer_contract(present),
        text,
        flags=re.S,
    )
    text = text.replace(
        "# them; the sub-package move (issue 15) makes each stage a package and this list shrinks to it.\n",
        "# them.\n",
    )
    pyproject.write_text(text)
    print("pyproject.toml: package-data and the stage contract updated")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: relayout.py REPO_ROOT")
    sys.exit(main(Path(sys.argv[1]).resolve()))
