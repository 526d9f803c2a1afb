"""``leviathan-cockpit preprocess CONFIG``: prepare the data ahead of training (Axolotl's verb).

The same parallel pass and the same cache as ``train`` (``engine.data.prepare``): a later ``train``
on this config starts from the prepared data without tokenizing anything. Progress goes to
stderr (rows/s, tokens/s, ETA), the summary to stdout.
"""

from __future__ import annotations

import sys
import time


def prepare_line(r: dict) -> str:
    """One progress line from a ``prepare`` record (or ``Pass.rate()``)."""
    total, done = r.get("bytes_total") or 0, r.get("bytes_done") or 0
    frac = done / total if total else 0.0
    bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
    eta = r.get("eta_s")
    eta_s = f" eta {_hms(eta)}" if eta is not None else ""
    return (
        f"preparing data [{bar}] {100 * frac:3.0f}%  {r.get('rows', 0):,} rows  "
        f"{r.get('rows_per_s', 0):,.0f} rows/s  {r.get('tokens_per_s', 0):,.0f} tok/s{eta_s}"
    )


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Bar:
    """Progress of a preparation pass on stderr: redrawn in place on a tty, a line a few seconds otherwise."""

    def __init__(self, stream=None, every_s: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if self.tty else 10.0
        self._last = 0.0

    def __call__(self, p) -> None:
        now = time.time()
        if now - self._last < self.every_s and p.done_bytes < p.total_bytes:
            return
        self._last = now
        line = prepare_line(p.rate())
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def preprocess_command(args) -> int:
    from engine.cli.cli_config import load_for_cli
    from engine.data.prepare import prepare
    from engine.model.model import load_tokenizer, resolve_base

    config, notes, _ = load_for_cli(args)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    tokenizer = load_tokenizer(
        resolve_base(config.base_model),
        config.chat_template,
        config.chat_template_jinja,
        config.trust_remote_code,
    )
    bar = Bar()
    t0 = time.time()
    try:
        prepared = prepare(config, tokenizer, workers=args.workers, progress=bar)
    finally:
        bar.done()
    for note in prepared.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary(prepared, time.time() - t0))
    return 0


def summary(prepared, seconds: float) -> str:
    s = prepared.stats
    val = len(prepared.val) if prepared.val is not None else 0
    how = "read back (already prepared)" if prepared.cached else f"prepared in {seconds:,.1f} s"
    out = [
        f"{prepared.folder}: {how}",
        s.report(),
        s.token_report(),
        f"kept: {len(prepared.train):,} training rows, {val:,} validation rows, {prepared.tokens:,} tokens",
        f"too long (> sequence_len): {s.too_long_count:,}  truncated {prepared.truncated:,}  "
        f"dropped {prepared.dropped_too_long:,}  cut before tokenizing {prepared.cut:,}",
        f"no trained tokens (skipped): {prepared.no_labels:,}",
    ]
    if s.bad:
        out.append(f"bad rows skipped (skip_bad_rows): {len(s.bad):,}")
    return "\n".join(out)
