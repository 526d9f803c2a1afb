"""Headless commands: ``train --headless`` (progress on stderr) and ``check``."""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path

from engine.cli.cli_config import load_for_cli  # noqa: F401  (re-exported: commands import it from here)
from engine.config.bundled import demo_config_path  # noqa: F401  (re-exported)
from engine.errors import UserError
from engine.run import records
from engine.run.control import Controls


def run_name_for(args, config, path: Path) -> str:
    return args.run_name or config.run_name or path.stem


def check_before_start(args, config, path: Path) -> None:
    """Every start-up problem at once (engine.train.preflight), before a trainer or a screen starts."""
    from engine.train.preflight import preflight
    from engine.train.train import run_paths

    run_dir = run_paths(config, run_name_for(args, config, path), getattr(args, "logs_dir", None)).run_dir
    resume, force = getattr(args, "resume", "auto"), getattr(args, "force", False)
    nproc = getattr(args, "nproc", None) or config.distributed.num_processes or 1
    preflight(config, run_dir, resume=resume, force=force, config_file=path, nproc=nproc)


class Progress:
    """A one-line progress report on stderr; a new line per record when stderr is not a tty."""

    def __init__(self, stream=None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last = 0.0
        self.t0 = time.time()

    def __call__(self, record: dict) -> None:
        r = records.decode(record)
        if isinstance(r, records.Step):
            self._step(r)
        elif isinstance(r, records.Eval):
            loss, ppl = records.as_float(r.eval_loss), records.as_float(r.perplexity)
            worst = sorted((r.by_category or {}).items(), key=lambda kv: -kv[1])[:3]  # highest loss
            by = f"; highest by _category: {', '.join(f'{k} {v:.3f}' for k, v in worst)}" if worst else ""
            self._write(f"eval step {r.step}: eval_loss {loss:.4f} ppl {ppl:.3f}{by}")
        elif isinstance(r, records.Save):
            self._write(f"saved {r.path}")
        elif isinstance(r, records.Probe):
            got = r.error or f"{r.passed}/{r.total}"
            if r.cut:
                got += f" of {r.planned}, cut short by {r.cut}"
            decode = f"; {r.decode}" if r.decode else ""  # the path a 4-bit base took: the time's why
            self._write(f"probe {r.suite} on step {r.step}: {got} ({r.seconds}s{decode})")
            self._learned(r)
        elif isinstance(r, records.Probing):  # probes hold the step: say so, not a stale tok/s
            from engine.evaluate.probes import probing_line

            self._write(probing_line(record), transient=True)
        elif isinstance(r, records.AlertResolved):
            self._write(f"resolved {r.rule}: {r.message}")
        elif isinstance(r, records.Alert):
            self._write(f"ALERT {r.rule}: {r.message}  -> {r.advice or ''}")
        elif isinstance(r, records.EarlyStopped):  # main's (issue 30), read through its declaration
            self._write(f"early stopping: {r.message}")
        elif isinstance(r, records.Prepare):  # data preparation: its own phase, so a long one is not a hang
            self._prepare(r, record)
        elif isinstance(r, records.Phase):
            mix = ", ".join(f"{k} {v:.0%}" for k, v in (r.weights or {}).items()) or "natural mix"
            self._write(f"phase {r.name} from step {r.step} (epoch {r.epoch}): {mix}")
        elif r.kind in ("resume", "start", "end", "note", "data"):
            skip = {"t", "kind", "traceback", "by_category", "lengths"}
            if isinstance(r, records.End) and r.status == "error":
                skip |= {"message", "fix"}  # bad input: the command prints it once, as its error
            # every field as written (in its order), so a field this code does not know shows too
            fields = {k: v for k, v in record.items() if k not in skip}
            self._write(f"{r.kind}: " + " ".join(f"{k}={v}" for k, v in fields.items()))

    def _step(self, r: records.Step) -> None:
        now = time.time()
        if not self.tty and now - self._last < self.every_s and r.step != r.max_steps:
            return
        self._last = now
        total = r.max_steps or 0
        frac = r.step / total if total else 0
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        eta = f" eta {_hms((total - r.step) * r.s_per_step)}" if r.s_per_step and total else ""
        loss = records.as_float(r.loss)
        line = f"[{bar}] step {r.step}/{total} loss {loss:.4f} {r.tokens_per_s or 0:,.0f} tok/s{eta}"
        self._write(line, transient=True)

    def _prepare(self, r: records.Prepare, record: dict) -> None:
        from engine.cli.prepare_cli import prepare_line

        if r.done:
            how = "read back" if r.cached else "prepared"
            self._write(f"data {how}: {r.rows or 0:,} rows, {r.tokens or 0:,} tokens ({r.path})")
        elif r.bytes_total:
            self._write(prepare_line(record), transient=True)

    def _learned(self, r: records.Probe) -> None:
        """The probe's answers beside the previous checkpoints' (engine.evaluate.learned), compact."""
        if not r.result or r.error:
            return
        from engine.evaluate.learned import compact, learned_table

        for line in compact(learned_table(Path(r.result).parent.parent), r.suite or ""):
            self._write(line)

    def _write(self, line: str, transient: bool = False) -> None:
        if self.tty:
            end = "" if transient else "\n"
            self.stream.write("\r\x1b[2K" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def install_stop_signals(controls: Controls) -> None:
    """SIGINT/SIGTERM/SIGHUP: save a checkpoint at the next step boundary, then exit."""

    def handler(signum, frame):
        if controls.stop.is_set():  # a second Ctrl-C while saving: leave at once
            raise KeyboardInterrupt
        controls.request_stop(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def train_headless(args) -> int:
    config, notes, path = load_for_cli(args)
    check_before_start(args, config, path)
    nproc = getattr(args, "nproc", None) or config.distributed.num_processes or 1
    if nproc > 1 or config.distributed.num_machines > 1:  # several processes: accelerate launch
        from engine.cli.launcher import train_headless_multi

        return train_headless_multi(args, nproc, (config, notes))
    from engine.cli.launcher import claim_run_dir
    from engine.train.train import run_paths

    # Before torch loads (seconds): a command a script appends from here on is this run's.
    paths = run_paths(config, run_name_for(args, config, path), args.logs_dir)
    claim_run_dir(config, paths.run_dir, paths.output_dir, check=False, resume=args.resume)
    from engine.train.train import run

    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    controls = Controls()
    controls.operator_present = False  # nobody to free disk space and press resume: exit 2
    install_stop_signals(controls)
    result = run(
        config,
        controls=controls,
        listeners=[Progress()],
        resume=args.resume,
        run_name=run_name_for(args, config, path),
        logs_dir=args.logs_dir,
        notes=notes,
        force_fresh=args.force,
        allow_world_size_change=getattr(args, "allow_world_size_change", False),
        setup_checked=True,  # check_before_start did
        control_from_start=True,
    )
    print(f"\n{result.status} at step {result.step}; run log {result.run_dir}/events.jsonl", file=sys.stderr)
    ok = ("completed", "stopped", "early_stopped")
    return 0 if result.status in ok else 1  # diverged: NaN/Inf (see the alerts)


def check_command(args) -> int:
    from engine.data.data import bad_rows_error
    from engine.data.prepare import check
    from engine.train.preflight import check_setup

    config, notes, _ = load_for_cli(args)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    check_setup(config)  # before loading anything: folders, empty data files, base_model's config
    machine_notes(config)
    tokenizer = None
    show = getattr(args, "show_masks", None)
    if show is not None and (args.no_tokenizer or show < 1):
        raise UserError(
            "--show-masks N needs the tokenizer and N >= 1", "drop --no-tokenizer; give a row count"
        )
    if not args.no_tokenizer:
        from engine.model.model import check_tokens, load_tokenizer, resolve_base

        tokenizer = load_tokenizer(
            resolve_base(config.base_model),
            config.chat_template,
            config.chat_template_jinja,
            config.trust_remote_code,
        )
        check_tokens(tokenizer, config)
    if show is not None:
        from engine.cli.show_masks import show_masks

        return show_masks(config, tokenizer, show, getattr(args, "json", False))
    tokens = getattr(args, "tokens", False) and tokenizer is not None
    curriculum = tokens and config.curriculum is not None
    from engine.cli.prepare_cli import Bar

    bar = Bar() if tokenizer is not None else None
    workers = max(1, getattr(args, "workers", 1) or 1)
    stats = check(config, tokenizer, workers=workers, collect=curriculum, progress=bar)
    if bar is not None:
        bar.done()
    print(stats.report())
    from engine.data.prepare import cache_report

    for line in cache_report(config, tokenizer):
        print(line)
    if tokens:
        print(stats.token_report())
    if stats.bad:
        raise bad_rows_error(stats.bad, stats.total)
    if config.curriculum is not None:
        from engine.train.curriculum import check_names

        check_names(config.curriculum.phases, set(stats.rows_by_category))
    if curriculum:
        from engine.train.curriculum import preview

        print(preview(config, stats.row_categories, stats.row_lengths))
    return 0


def machine_notes(config) -> None:
    """What differs from Axolotl by default, and what this machine lacks to train the config
    (the config itself is valid: `train` here would stop with exit 2, a CUDA machine runs it)."""
    import torch

    from engine.config.optimizers import needs

    if config._defaults_differ:
        print("note: defaults that differ from Axolotl's (keys not set):", file=sys.stderr)
        for line in config._defaults_differ:
            print(f"  {line}", file=sys.stderr)
    lacks = [needs(config.optimizer)]
    if config.quant_bits and not torch.cuda.is_available():
        lacks.append(f"{config.quant_bits}-bit loading needs a CUDA GPU (this machine has none)")
    for line in filter(None, lacks):
        print(f"cannot train here: {line}", file=sys.stderr)
