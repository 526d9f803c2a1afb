"""One rank of a multi-process run: ``accelerate launch ... -m engine.dist_main CONFIG [flags]``.

``leviathan-cockpit train CONFIG --headless --nproc N`` (engine/cli/launcher.py) starts this through
``accelerate launch``; a user may start it the same way by hand:

    accelerate launch --multi_gpu --num_processes 4 -m engine.dist_main configs/leviathan_full.yaml

Every rank runs ``engine.train.train.run``. Rank 0 writes the run log and prints progress on stderr;
the other ranks print nothing but their own errors. Commands: a line appended to
``logs/<run>/control.jsonl`` (``{"command": "stop"}``; also pause, resume, save, eval), read by
rank 0 at each step boundary and acted on by every rank at the same step. SIGINT or SIGHUP on
any rank: stop at the next step boundary with a checkpoint; SIGTERM too when there is one
process. With several, SIGTERM is left as it is: torchrun sends it to the surviving ranks when
one dies, and they must go at once.

Exit codes as the CLI's: 0 done, 2 bad config or data (printed by rank 0 alone), 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path

RANK0_SPEAKS_S = 10.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.dist_main", description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", help="Axolotl-style YAML (default: the embedded demo)")
    p.add_argument("--resume", default="auto", metavar="auto|never|PATH")
    p.add_argument("--max-steps", type=int, metavar="N")
    p.add_argument("--run-name", metavar="NAME")
    p.add_argument("--logs-dir", metavar="DIR")
    p.add_argument("--force", action="store_true")
    p.add_argument(
        "--launched",
        metavar="FILE",
        help="the config as the launcher loaded and checked it (engine.cli.launcher): CONFIG is not read again",
    )
    p.add_argument(
        "--allow-world-size-change",
        action="store_true",
        help="resume a checkpoint written by another number of processes",
    )
    p.add_argument("--override-gate", metavar="REASON", help="start although the config's gate fails")
    return p


def die_with_parent() -> None:
    """Linux: this rank gets SIGKILL when its parent (torchrun's agent) dies, however it dies,
    so no rank is ever left training, or hanging in a collective, on its own."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the call above
        os._exit(1)


def quiet() -> None:
    """Ranks > 0 print only their errors: no library warnings or progress bars (rank 0 has them)."""
    import warnings

    for key in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        os.environ[key] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    warnings.simplefilter("ignore")


def install_signals(controls, world_size: int = 1) -> None:
    """SIGINT/SIGHUP (and SIGTERM with one process): stop at the next step with a checkpoint.

    Several processes leave SIGTERM as it is: torchrun sends it to the surviving ranks when one
    dies, and they must go at once. One process has no torchrun: SIGTERM is an operator's.
    """

    def handler(signum, frame):
        controls.request_stop(f"signal {signal.Signals(signum).name}")

    sigs = [signal.SIGINT, signal.SIGHUP] + ([signal.SIGTERM] if world_size == 1 else [])
    for sig in sigs:
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from engine.train import dist

    if dist.world_size() > 1:
        die_with_parent()
    if not dist.is_main():
        quiet()
    args = parser().parse_args(argv)
    if args.override_gate is not None:
        from engine.evaluate.gate import OVERRIDE_ENV

        os.environ[OVERRIDE_ENV] = args.override_gate
    from engine.errors import UserError
    from engine.run.control import Controls

    main_rank = dist.is_main()
    controls = Controls()
    install_signals(controls, dist.world_size())
    try:
        from engine.cli.headless import Progress, load_for_cli, run_name_for
        from engine.train.train import run

        if args.launched:  # loaded and checked once, by the launcher
            from engine.config.saved_config import read_handoff

            config, notes = read_handoff(args.launched)
            path = Path(args.config or args.launched)
        else:
            config, notes, path = load_for_cli(args)
        if main_rank:
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        result = run(
            config,
            controls=controls,
            listeners=[Progress()] if main_rank else [],
            resume=args.resume,
            run_name=run_name_for(args, config, path),
            logs_dir=args.logs_dir,
            notes=notes,
            force_fresh=args.force,
            allow_world_size_change=args.allow_world_size_change,
            setup_checked=bool(args.launched),
        )
        if main_rank:
            from engine.run.rundir import RunDir

            print(
                f"\n{result.status} at step {result.step}; run log {RunDir(result.run_dir).events}",
                file=sys.stderr,
            )
        dist.shutdown()
        return 0
    except UserError as e:
        if main_rank:  # every rank reads the same config and data: one message is enough
            print(f"leviathan-cockpit: {e}", file=sys.stderr)
        else:
            # Let rank 0 say it: a rank that left first would have torchrun end rank 0 unheard.
            import time

            time.sleep(RANK0_SPEAKS_S)
        code = 2
    except dist.RankAborted:
        code = 1  # rank 0 reports its own failure
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        print(f"[rank {dist.rank()}] " + traceback.format_exc(), file=sys.stderr)
        code = 1
    # A failed job may have a peer gone: leaving the group could wait on it. The run log is
    # closed already (train.run's finally), so leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
