"""Start-up checks: everything that can be known wrong before training starts, found at once.

``preflight(config, ...)`` runs after the config has loaded and before a trainer (or the
cockpit's screen) starts: the base model folder or cache entry, the data files, what the
config asks of the machine (QLoRA, 4-bit and 8-bit need a CUDA GPU and bitsandbytes), the
run folder and ``output_dir`` (another trainer on them; ``--resume never`` over old
checkpoints) and whether the folders can be written. Every problem is collected and raised
as one ``UserError`` (exit 2), so a user fixes them all in one go instead of one per attempt.

Cheap by design: no model, tokenizer or data set is loaded (``check`` validates every row),
and torch is imported only when the config needs a GPU. Locks are only read, never taken:
a probe must not make a trainer starting at that instant think its run is taken.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.run.runlock import lock_holder, lock_run

CHECKS = [0]
"""How many times this process ran the setup checks (once per start: tests read it)."""


@dataclass
class Problem:
    message: str
    fix: str


def preflight(
    config,
    run_dir: Path,
    *,
    resume: str = "auto",
    force: bool = False,
    cuda: bool | None = None,
    config_file: str | Path | None = None,
    nproc: int = 1,
) -> None:
    """Raise one UserError listing every problem found; return quietly when there is none.

    ``cuda``: whether a CUDA GPU is usable (None: ask torch, only if the config needs one).
    ``config_file`` names the file in the messages about its keys.
    """
    CHECKS[0] += 1
    at = f"{config_file}: " if config_file else ""
    problems = [
        *model_problems(config.base_model, at),
        *data_problems(config.datasets, at),
        *device_problems(config, cuda),
        *folder_problems(config, Path(run_dir), resume, force),
        *process_problems(config, nproc),
    ]
    if problems:
        raise combined(problems)


def combined(problems: list[Problem]) -> UserError:
    if len(problems) == 1:
        return UserError(problems[0].message, problems[0].fix)
    lines = [f"{len(problems)} problems stop this run before it starts:"]
    for i, p in enumerate(problems, 1):
        lines.append(f"  {i}. {p.message}\n     fix: {p.fix}")
    return UserError("\n".join(lines), "fix the problems above and run the same command again")


# -- the model --------------------------------------------------------------------------------


def model_problems(base_model: str, at: str = "") -> list[Problem]:
    if base_model.startswith("builtin:"):
        return []  # built offline on first use
    p = Path(base_model)
    if p.exists():
        if not p.is_dir():
            return [
                Problem(
                    f"base_model {base_model}: a file, not a model folder", "point base_model at a folder"
                )
            ]
        from engine.model.model import check_model_folder

        try:
            check_model_folder(p)
        except UserError as e:
            return [Problem(e.message, e.fix)]
        return []
    if _looks_like_path(base_model) or not _in_hub_cache(base_model):
        return [
            Problem(
                f"{at}base_model `{base_model}` is not a local folder and is not in the local Hugging Face "
                "cache (nothing is downloaded at run time)",
                f"download it once with `hf download {base_model}`, or point base_model at a model folder",
            )
        ]
    return []


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return False
    return isinstance(found, str)


# -- the data ---------------------------------------------------------------------------------


_WHITESPACE = b" \t\r\n\f\v"


def dataset_problem(path: str | Path) -> str | None:
    """Why an existing local dataset path cannot be read, or None: a folder with no data files,
    a format this engine does not read, an empty or blank text file."""
    from engine.data import readers

    try:
        files = readers.files_of(str(path))
    except UserError as e:
        return e.message.removeprefix(f"{path}: ")
    for f in files:
        if not f.name.endswith((".jsonl", ".json")):
            continue  # binary and compressed formats are checked by their readers
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):  # the first non-blank byte ends it: at once, for real data
                    if chunk.strip(_WHITESPACE):
                        break
                else:
                    what = "is empty" if f.stat().st_size == 0 else "holds only blank lines"
                    return f"the data file {what}" if f == Path(path) else f"the data file {f} {what}"
        except OSError as e:
            return f"cannot be read ({e.strerror})"
    return None


def data_problems(datasets, at: str = "") -> list[Problem]:
    from engine.data import readers

    out = []
    for i, ds in enumerate(datasets):
        p = Path(ds.path)
        where = f"{at}datasets[{i}].path {ds.path}"
        if readers.is_hub_id(ds.path):
            continue  # a hub id: its reader looks in the local cache and says how to get it
        if not p.exists():
            out.append(
                Problem(
                    f"{where}: no such file or folder",
                    "fix the path (relative paths are looked up beside the config, then in the current folder)",
                )
            )
        elif why := dataset_problem(p):
            out.append(Problem(f"{where}: {why}", "point it at a JSONL file with one example a line"))
    return out


# -- the machine ------------------------------------------------------------------------------


def process_problems(config, nproc: int) -> list[Problem]:
    """Keys that need several processes, on one (``nproc``: how many this start launches)."""
    from engine.train.dist import fsdp_alone

    error = fsdp_alone(config) if nproc <= 1 and config.distributed.num_machines <= 1 else None
    return [Problem(error.message, error.fix)] if error is not None else []


def device_problems(config, cuda: bool | None = None) -> list[Problem]:
    bits = config.quant_bits
    if not bits:
        return []
    what = (
        "adapter: qlora (4-bit)"
        if config.adapter == "qlora"
        else ("load_in_4bit" if bits == 4 else "load_in_8bit")
    )
    out = []
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        out.append(
            Problem(
                f"{what} needs an NVIDIA GPU with CUDA, and this machine has none (bitsandbytes quantizes on the GPU)",
                "use `adapter: lora` without load_in_4bit/load_in_8bit on this machine, or run on a GPU host",
            )
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        out.append(Problem(f"{what} needs the bitsandbytes package", "pip install 'leviathan-cockpit[gpu]'"))
    return out


# -- the folders ------------------------------------------------------------------------------


def folder_problems(config, run_dir: Path, resume: str, force: bool) -> list[Problem]:
    out_dir = Path(config.output_dir)
    out = [p for p in [output_dir_problem(out_dir)] if p]
    if out:
        return out
    for what, folder in (("run folder", run_dir), ("output_dir", out_dir)):
        holder = lock_holder(folder)
        if holder is not None:
            fix = (
                f"watch it with `leviathan-cockpit attach {run_dir}`, or stop that process first"
                if folder == run_dir
                else f"another run writes its checkpoints there: give this run its own output_dir, or stop pid {holder}"
            )
            by = lock_run(folder)
            run = f" for run {by}" if by else ""
            out.append(Problem(f"{what} {folder} is in use by a running trainer (pid {holder}){run}", fix))
        elif not _writable(folder):
            out.append(
                Problem(
                    f"{what} {folder}: cannot be created or written", "check the path and its permissions"
                )
            )
    if resume == "never" and not force and _has_checkpoints(out_dir):
        out.append(
            Problem(
                f"{out_dir} already holds checkpoints and --resume never was given",
                "choose a new output_dir, remove the old checkpoints, or pass --force to train over them",
            )
        )
    return out


def output_dir_problem(output_dir: Path) -> Problem | None:
    p = Path(output_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    if p.is_dir():
        return None
    return Problem(
        f"output_dir {output_dir}: {p} is a file, not a folder",
        "point output_dir at a folder (it is created if missing), or move that file away",
    )


def problems(config) -> list[Problem]:
    """What can be found wrong before any work with no run folder known yet (`check`, `train`)."""
    local = not config.base_model.startswith("builtin:") and Path(config.base_model).exists()
    return [
        *(model_problems(config.base_model) if local else []),  # a hub id: resolved where it is loaded
        *data_problems(config.datasets),
        *[p for p in [output_dir_problem(Path(config.output_dir))] if p],
    ]


def check_setup(config) -> None:
    """Raise one UserError listing every problem `problems` finds, with the fix of each."""
    CHECKS[0] += 1
    found = problems(config)
    if found:
        raise combined(found)


def _writable(folder: Path) -> bool:
    p = Path(folder).absolute()
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _has_checkpoints(out_dir: Path) -> bool:
    from engine.run import checkpoints

    return out_dir.is_dir() and bool(checkpoints.scan(out_dir)[0])
