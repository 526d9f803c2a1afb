"""``leviathan-cockpit sample IN -o OUT``: the command line of ``engine.data.sample``, and its progress bar."""

from __future__ import annotations

import os
import sys
import time

from engine.data.sample import sample_file


def add_sample_args(p) -> None:
    p.add_argument("input", metavar="IN", help="a JSONL file (one JSON object a line)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="where the sample goes (JSONL)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument(
        "--fraction", type=float, metavar="F", help="keep this fraction of every stratum (0 < F <= 1)"
    )
    size.add_argument("--count", type=int, metavar="N", help="keep N rows in all, shared out in proportion")
    p.add_argument(
        "--by", default="_category", metavar="KEY", help="top-level key to stratify by (default _category)"
    )
    p.add_argument("--seed", type=int, default=42, metavar="N", help="random seed (default 42)")
    p.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        metavar="N",
        help="processes for the counting pass (default: the cores, at most 8)",
    )
    p.add_argument(
        "--bad-lines", metavar="FILE", help="also write every malformed line number and reason to FILE"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="parse every row in full (slower); by default a row is read at its ends and the kept "
        "rows in full, which finds every malformed row that could be kept but may count one that is "
        "not kept in its stratum",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def sample_main(args) -> int:
    meter = None if args.no_progress else Meter(sys.stderr)
    report = sample_file(
        args.input,
        args.output,
        by=args.by,
        fraction=args.fraction,
        count=args.count,
        seed=args.seed,
        meter=meter,
        bad_lines_path=args.bad_lines,
        jobs=max(1, args.jobs),
        strict=args.strict,
    )
    if report.recount:
        print(f"counted again, every row parsed in full: {report.recount}", file=sys.stderr)
    print(report.table())
    if report.bad:
        print(report.bad_summary(), file=sys.stderr)
    if report.by_missing_everywhere:
        print(
            f"warning: no row has the key `{args.by}`; the sample is a plain random sample "
            f"(check the spelling of --by)",
            file=sys.stderr,
        )
    return 0


class Meter:
    """A progress bar with MB/s on a stream; a line every few seconds when it is not a tty."""

    def __init__(self, stream, every_s: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 10.0)
        self.label, self.total, self.t0, self._last = "", 0, 0.0, 0.0

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.t0, self._last = label, total, time.perf_counter(), 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        dt = max(now - self.t0, 1e-9)
        frac = done / self.total if self.total else 1.0
        rate = done / 2**20 / dt
        eta = (self.total - done) / 2**20 / rate if rate > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = (
            f"{self.label} [{bar}] {100 * frac:5.1f}% {done / 2**30:.2f}/{self.total / 2**30:.2f} GiB "
            f"{rate:,.0f} MB/s eta {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        if self.tty:
            self.stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
