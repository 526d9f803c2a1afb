"""Start a run on several processes through ``accelerate launch`` and follow it to its end.

``launch(config_path, nproc)`` starts one child process group::

    python -m engine.cli.launcher --run-dir logs/<run> --events-offset B -- \\
        --multi_gpu --num_processes N ... -m engine.dist_main CONFIG --run-name ... --logs-dir ...

That child runs accelerate's own ``launch`` command in-process (the same parser and the same
torchrun elastic agent as the ``accelerate launch`` console script; ``LaunchedJob.command``
shows the equivalent console line) and, when it returns, turns torchrun's account of a failure
into the run log: an ``alert`` (rule ``rank_failed``) naming the rank, its pid and its exit code
or signal, and the ``end`` record (status ``failed``) when rank 0 could not write one. torchrun's
agent ends every rank when one exits non-zero, and each rank dies with the agent
(``PR_SET_PDEATHSIG``), so a job never hangs on a lost rank.

One process on one host (the cockpit's own training, ``train CONFIG`` without ``--nproc``) needs
no agent: the child is ``python -m engine.dist_main ...`` itself, in its own session, so that
the UI and the trainer never share an interpreter (nor its GIL) and a dropped terminal reaches
the trainer only as the cockpit's ``stop``.

``LaunchedJob`` is what the cockpit holds: ``run_dir`` (attach to ``events.jsonl`` there),
``control(command)`` (pause, resume, toggle_pause, stop, save, eval: appended to
``control.jsonl``, acted on by every rank at the same step), ``poll()``, ``wait()``,
``terminate()``. ``train_headless_multi`` is ``train CONFIG --headless --nproc N``.

Only the standard library (and engine modules that import no more) load at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.run.control_file import CONTROL_FROM_START_ENV, append_command
from engine.run.rundir import RunDir

EXIT_USAGE = 2


# -- the command ---------------------------------------------------------------------------


def accelerate_args(config, nproc: int, machine_rank: int) -> list[str]:
    """``accelerate launch`` flags for the config's ``distributed:`` section and ``nproc``.

    ``--multi_gpu`` selects torchrun (its elastic agent) for any number of devices, on CPU hosts
    too: there the trainer runs its ranks with the gloo backend. (``--cpu`` would pick
    accelerate's simple launcher, which starts one process and leaves the rest to mpirun.)
    DeepSpeed and FSDP come from the run config through the trainer, as in Axolotl.
    """
    d = config.distributed
    out = ["--num_processes", str(nproc), "--num_machines", str(d.num_machines)]
    if nproc > 1:
        out.insert(0, "--multi_gpu")
    out += ["--mixed_precision", "no", "--dynamo_backend", "no"]  # precision is the trainer's (bf16 key)
    if d.num_machines > 1:
        out += ["--machine_rank", str(machine_rank), "--main_process_ip", d.main_process_ip]
        out += ["--main_process_port", str(d.main_process_port)]
    else:
        out += ["--main_process_port", str(d.main_process_port or 0)]  # 0: a free port
    return out


def rank_args(
    config_path: Path,
    run_name: str,
    logs_dir: Path,
    resume: str,
    max_steps: int | None,
    force: bool,
    allow_world_size_change: bool,
) -> list[str]:
    out = [str(config_path), "--run-name", run_name, "--logs-dir", str(logs_dir), "--resume", resume]
    if max_steps:
        out += ["--max-steps", str(max_steps)]
    if force:
        out.append("--force")
    if allow_world_size_change:
        out.append("--allow-world-size-change")
    return out


# -- the job ---------------------------------------------------------------------------------


@dataclass
class LaunchedJob:
    """A multi-process run started by ``launch``; the cockpit attaches to ``run_dir``."""

    run_dir: Path
    nproc: int
    machine_rank: int
    proc: subprocess.Popen
    command: list[str]
    """The equivalent console line (``accelerate launch ...``, or ``python -m engine.dist_main ...``)."""
    log_path: Path | None
    """Where the processes' stdout and stderr go (None: inherited from this process)."""
    events_offset: int = 0
    started: float = field(default_factory=time.time)
    _finalized: bool = False

    @property
    def events(self) -> Path:
        return RunDir(self.run_dir).events

    @property
    def pid(self) -> int:
        return self.proc.pid

    def control(self, command: str, **fields) -> dict:
        """Send a command to every rank: pause, resume, toggle_pause, stop, save, eval."""
        return append_command(self.run_dir, command, **fields)

    def stop(self, reason: str = "operator") -> dict:
        """Stop at the next step boundary, with a checkpoint (the same step on every rank)."""
        return self.control("stop", reason=reason)

    def poll(self) -> int | None:
        """The exit code once the job has ended (0 done, 2 bad config or data, else failed)."""
        code = self.proc.poll()
        if code is not None:
            self._finalize(code)
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = self.proc.wait(timeout)
        self._finalize(code)
        return code

    def terminate(self, grace_s: float = 40.0) -> int:
        """End the job now (no checkpoint): SIGTERM to the launcher, which ends the ranks through
        torchrun (30 s grace, then SIGKILL); SIGKILL after ``grace_s`` (the ranks die with it)."""
        if self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.wait()

    def _finalize(self, code: int) -> None:
        # The launcher child writes the ending; this covers a child that was killed itself.
        if self._finalized:
            return
        self._finalized = True
        if self.machine_rank != 0 or not self.events.exists():
            return
        if not any(r.get("kind") == "end" for r in records_since(self.events, self.events_offset)):
            how = f"signal {_signame(-code)}" if code < 0 else f"code {code}"
            finish(
                self.run_dir,
                self.events_offset,
                f"the launcher (pid {self.proc.pid}) ended with {how} before the run log was closed",
            )


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def launch(
    config_path: str | Path,
    nproc: int | None = None,
    *,
    resume: str = "auto",
    max_steps: int | None = None,
    run_name: str | None = None,
    logs_dir: str | Path | None = None,
    force: bool = False,
    allow_world_size_change: bool = False,
    machine_rank: int | None = None,
    output: str | Path | None = "file",
    env: dict[str, str] | None = None,
    checked: tuple | None = None,
) -> LaunchedJob:
    """Start ``nproc`` training processes (default: the config's ``distributed.num_processes``).

    ``output``: "file" (``run_dir/launch.log``, for the cockpit), None (inherit this process's
    stdout and stderr: headless), or a path. ``checked``: (config, notes) that the caller loaded
    and checked (``preflight``) from ``config_path``; without it they are loaded and checked here.
    The trainers receive that config as it is (``launch-config.json`` in the run folder): the
    user's file is read and validated once per start. Raises UserError (nothing started) on bad input.
    """
    from engine.config.config import load_config
    from engine.config.saved_config import write_handoff
    from engine.train.train import run_paths

    config_path = Path(config_path).resolve()
    if checked is None:
        config, notes = load_config(config_path, {"max_steps": max_steps} if max_steps else None)
    else:
        config, notes = checked
    d = config.distributed
    n = nproc or d.num_processes or 1
    rank = d.machine_rank if machine_rank is None else machine_rank
    _check_launchable(config, n, rank)
    name = run_name or config.run_name or config_path.stem
    paths = run_paths(config, name, str(logs_dir) if logs_dir else None)
    run_dir = paths.run_dir.resolve()
    offset = claim_run_dir(config, run_dir, paths.output_dir, checked is None, resume) if rank == 0 else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    write_handoff(config, notes, RunDir(run_dir).launch_config)
    ranks = rank_args(config_path, name, run_dir.parent, resume, max_steps, force, allow_world_size_change)
    handoff = ["--launched", str(RunDir(run_dir).launch_config)]  # not in the line shown to users
    cmd, _, launcher = _commands(config, n, rank, ranks + handoff, run_dir, offset)
    display = _commands(config, n, rank, ranks, run_dir, offset)[1]
    log_path = None if output is None else RunDir(run_dir).launch_log if output == "file" else Path(output)
    proc = _spawn(cmd, _child_env(env, launcher), log_path)
    return LaunchedJob(run_dir, n, rank, proc, display, log_path, offset)


def _check_launchable(config, n: int, rank: int) -> None:
    import importlib.util

    from engine.train.dist import require_deepspeed

    d = config.distributed
    if d.num_machines > 1 and (n % d.num_machines or rank >= d.num_machines):
        raise UserError(
            f"{n} processes on {d.num_machines} machines with machine_rank {rank} does not add up",
            "give --nproc as hosts x processes per host and --machine-rank below num_machines",
        )
    if n > 1 and importlib.util.find_spec("accelerate") is None:
        raise UserError("several processes need the accelerate package", "pip install accelerate")
    if config.deepspeed:
        require_deepspeed(config.deepspeed)


def claim_run_dir(config, run_dir: Path, output_dir: Path, check: bool = True, resume: str = "auto") -> int:
    """Check the setup (unless the caller did) and the gate, refuse a run (or output_dir) being
    trained already, empty the control file (this job's trainer reads it from its start: a
    command written from now on counts); the run log's size, where this job's records begin."""
    from engine.evaluate import gate
    from engine.run import checkpoints
    from engine.run.runlock import OutputLock, RunLock
    from engine.train.preflight import check_setup

    if check:
        check_setup(config)  # before the first byte is written
    # the 10% run's checks (the trainer records the outcome): a refused start writes nothing
    gate.enforce(config, run_dir, fresh=resume == "never" or checkpoints.latest(output_dir) is None)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir), OutputLock(output_dir, run_dir):
        pass
    folder = RunDir(run_dir)
    folder.control.write_text("")  # commands of an earlier job are not for this one
    return folder.events.stat().st_size if folder.events.exists() else 0


def _commands(
    config, n: int, rank: int, ranks: list[str], run_dir: Path, offset: int
) -> tuple[list[str], list[str], bool]:
    """(the child's command, its console equivalent, whether the child is the launcher agent)."""
    if n == 1 and config.distributed.num_machines == 1:
        # One process needs no agent: the trainer writes its own ending, and ``LaunchedJob``
        # writes it for a trainer that was killed.
        cmd = [sys.executable, "-m", "engine.dist_main", *ranks]
        return cmd, ["python", "-m", "engine.dist_main", *ranks], False
    accel = accelerate_args(config, n, rank)
    cmd = [sys.executable, "-m", "engine.cli.launcher", "--run-dir", str(run_dir)]
    cmd += ["--events-offset", str(offset), "--machine-rank", str(rank)]
    cmd += ["--", *accel, "-m", "engine.dist_main", *ranks]
    return cmd, ["accelerate", "launch", *accel, "-m", "engine.dist_main", *ranks], True


def _child_env(env: dict[str, str] | None, launcher: bool) -> dict[str, str]:
    from engine.train.dist import LAUNCHER_ENV

    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env[CONTROL_FROM_START_ENV] = "1"
    root = str(Path(__file__).resolve().parent.parent.parent)  # ranks import this engine, wherever they start
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, child_env.get("PYTHONPATH")) if p)
    if launcher:
        child_env[LAUNCHER_ENV] = "1"
    return child_env


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path | None) -> subprocess.Popen:
    """The child in a session of its own; its output to ``log_path`` (None: this process's)."""
    out = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )
    finally:
        if out is not None:
            out.close()


# -- the launcher child: accelerate launch, then the ending in the run log -------------------


def records_since(events: Path, offset: int) -> list[dict]:
    from engine.run.events import parse_line

    try:
        with open(events, "rb") as f:
            f.seek(offset)
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    return [r for r in (parse_line(line) for line in lines if line.strip()) if r is not None]


@dataclass
class Failure:
    rank: int
    pid: int
    exitcode: int
    host: str = ""

    def describe(self) -> str:
        how = (
            f"was killed by {_signame(-self.exitcode)} (exit {self.exitcode})"
            if self.exitcode < 0
            else f"exited with code {self.exitcode}"
        )
        where = f" on {self.host}" if self.host else ""
        return f"rank {self.rank} (pid {self.pid}{where}) {how}"


# Signals the agent itself sends when it ends the other ranks: not a cause.
_TEARDOWN = {-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP}


def root_cause(failures: list[Failure]) -> Failure | None:
    """The rank that took the job down: a death by signal (kill -9, a crash) first, then a
    non-zero exit, then one ended by the agent's teardown signal; the lowest rank among equals."""

    def order(f: Failure):
        if f.exitcode < 0 and f.exitcode not in _TEARDOWN:
            return (0, f.rank)
        if f.exitcode > 0:
            return (1, f.rank)
        return (2, f.rank)

    return min(failures, key=order) if failures else None


def finish(run_dir: Path, offset: int, message: str, failures: list[Failure] | None = None) -> None:
    """End the run log of a job that did not end well: name the rank that took it down (an
    ``alert``, rule ``rank_failed``, unless rank 0's own record explains it) and write the
    ``end`` record, unless rank 0 wrote one (bad config or data: status ``error``)."""
    from engine.run import checkpoints
    from engine.run.events import RunLog

    events = RunDir(run_dir).events
    records = records_since(events, offset)
    start = next((r for r in reversed(records) if r.get("kind") == "start"), {})
    if failures is not None and start.get("ranks"):
        hosts = {r["rank"]: r.get("host", "") for r in start["ranks"]}
        for f in failures:
            f.host = hosts.get(f.rank, "")
    root = root_cause(failures or [])
    own = next((r for r in reversed(records) if r.get("kind") == "rank_error"), None)  # rank 0's exception
    ended = any(r.get("kind") == "end" for r in records)
    explained = root is not None and root.rank == 0 and (ended or own is not None)
    last = None
    if start.get("output_dir"):
        ck = checkpoints.latest(start["output_dir"])
        last = str(ck.path) if ck else None
    what = f"{root.describe()}; torchrun ended the other ranks" if root is not None else message
    log = RunLog(events)
    try:
        if root is not None and not explained:
            log.emit(
                "alert",
                rule="rank_failed",
                level="critical",
                message=what,
                advice="see that rank's error in the launcher's output; the run resumes from the last "
                f"complete checkpoint ({last or 'none yet'}) with the same command",
                rank=root.rank,
                exitcode=root.exitcode,
                failures=[{"rank": f.rank, "pid": f.pid, "exitcode": f.exitcode} for f in failures or []],
            )
        if not ended:
            if explained and own is not None:
                what = own.get("message", what)
            log.emit(
                "end",
                status="failed",
                message=what,
                rank=root.rank if root else None,
                exitcode=root.exitcode if root else None,
                checkpoint=last,
                traceback=own.get("traceback") if (explained and own is not None) else None,
            )
    finally:
        log.close()


def agent_main(argv: list[str] | None = None) -> int:
    """``python -m engine.cli.launcher --run-dir D --events-offset B -- ACCELERATE_LAUNCH_ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m engine.cli.launcher")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--events-offset", type=int, default=0)
    p.add_argument("--machine-rank", type=int, default=0)
    ours = p.parse_args(argv[:split])
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv[split + 1 :])
    failures: list[Failure] | None = None
    message = ""
    try:
        launch_command(args)
        code = 0
    except ChildFailedError as e:
        failures = [Failure(r, f.pid, f.exitcode) for r, f in sorted(e.failures.items())]
        root = root_cause(failures)
        code = EXIT_USAGE if root is not None and root.exitcode == EXIT_USAGE else 1
    except subprocess.CalledProcessError as e:  # one process: accelerate's simple launcher
        failures = [Failure(0, 0, e.returncode)]
        code = EXIT_USAGE if e.returncode == EXIT_USAGE else 1
    except SignalException as e:
        message = f"the launcher got {_signame(e.sigval)} and ended every rank"
        code = 128 + int(e.sigval)
    except KeyboardInterrupt:
        message = "the launcher was interrupted and ended every rank"
        code = 130
    if ours.machine_rank == 0:
        records = records_since(RunDir(ours.run_dir).events, ours.events_offset)
        ended = any(r.get("kind") == "end" for r in records)
        if code != 0 or not ended:
            finish(
                Path(ours.run_dir), ours.events_offset, message or f"the job ended with code {code}", failures
            )
    root = root_cause(failures or [])
    if root is not None and root.exitcode != EXIT_USAGE:  # exit 2: rank 0 has printed the reason
        print(f"leviathan-cockpit: {root.describe()}; the job was ended", file=sys.stderr)
    return code


# -- train CONFIG --headless --nproc N ---------------------------------------------------------


def launch_from_args(
    args, nproc: int, output: str | None = "file", checked: tuple | None = None
) -> LaunchedJob:
    """``launch`` with the `train` command line's arguments (the embedded demo without a config);
    ``checked``: the (config, notes) the caller loaded and checked from them."""
    from engine.config.bundled import demo_config_path

    return launch(
        args.config or demo_config_path(),
        nproc,
        resume=args.resume,
        max_steps=args.max_steps,
        run_name=args.run_name,
        logs_dir=args.logs_dir,
        force=args.force,
        allow_world_size_change=getattr(args, "allow_world_size_change", False),
        machine_rank=getattr(args, "machine_rank", None),
        output=output,
        checked=checked,
    )


def _wait_watching(job: LaunchedJob, poll_s: float = 1.0) -> int:
    """``job.wait()``, saying on stderr when rank 0 stalls (no record or heartbeat) and recovers."""
    from engine.run.heartbeat import StallWatch

    watch = StallWatch(job.run_dir, job.started)
    while True:
        try:
            return job.wait(poll_s)
        except subprocess.TimeoutExpired:
            line = watch.check()
            if line:
                print(f"\n{line}", file=sys.stderr)


def train_headless_multi(args, nproc: int, checked: tuple | None = None) -> int:
    """Launch, wait, and stop gracefully on the first Ctrl-C (every rank saves at the same step)."""

    job = launch_from_args(args, nproc, output=None, checked=checked)
    print(f"launched: {' '.join(job.command)}", file=sys.stderr)
    print(f"run log: {job.events}", file=sys.stderr)
    asked = []

    def handler(signum, frame):
        asked.append(signum)
        if len(asked) == 1:
            job.stop(f"signal {signal.Signals(signum).name}")
            print("\nstopping at the next step boundary (again: end the job now)", file=sys.stderr)
        else:
            _killpg(job.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    code = _wait_watching(job)
    end = next(
        (r for r in reversed(records_since(job.events, job.events_offset)) if r.get("kind") == "end"), None
    )
    if end is not None and code != 0:
        _say_end(end)
    return 0 if code == 0 else (EXIT_USAGE if code == EXIT_USAGE else 1)


def _say_end(record: dict) -> None:
    """How the run ended, on stderr; a trainer's UserError as its message and its fix apart."""
    from engine.run import records

    end = records.decode(record)
    if not isinstance(end, records.End):
        print(f"{record.get('status')}: {record.get('message', '')}", file=sys.stderr)
        return
    error = end.user_error() if end.status == "error" else None
    print(f"{end.status}: {error.message if error else end.message or ''}", file=sys.stderr)
    if error is not None and error.fix:
        print(f"  fix: {error.fix}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(agent_main())
