"""Keys during probes on the guide's QLoRA path: how fast the engine acts, read from the run's files.

    python3 benchmarks/probe_keys.py                    # GPU: 8B-shaped Qwen3-VL, QLoRA, 4096
    python3 benchmarks/probe_keys.py --tiny             # CPU smoke run: tiny Qwen3-VL, LoRA, 256

Builds the random 8B-shaped model of ``engine_8b`` (Qwen3-VL, the guide's base, by default),
writes synthetic chat data and a config (save every 5 steps, eval every 10, both probe suites on
save, their max_new_tokens left at the default), starts ``leviathan-cockpit train CFG --headless``
and follows its run log (the engine's ``events.follow``, every 50 ms). At each scheduled save's
first ``probing`` record it presses keys the way the cockpit does (``control_file.append_command``;
chat through ``chat_bridge``'s request and reply file) and times the engine's answer from the
records' own ``t``:

1. ``pause`` -> ``paused`` (at the step just saved), then ``resume`` -> ``resumed``; the probe
   record's ``cut``. Then ``save`` while training -> its ``save`` record (an unscheduled save).
2. a chat on the live weights ("Who are you?", greedy, 64 tokens): request -> first event and
   ``Done``, and the step boundary it was answered at (the chat job's start) -> ``Done``; then
   ``save`` -> the ``save`` record, or the note that the step being probed is saved already.
3. ``stop`` -> ``end`` and the process's exit.

Then from the whole log: each probe (suite, seconds, cut, decode), the saves (did any save the
schedule did not ask for run probes again?), alerts per rule (one raised twice flaps), step
times. Prints one table, writes it as JSON to ``$OUT/probe_keys.json`` when ``OUT`` is set;
exit 1 when a target is missed or a phase never came.

On the GPU (``--qlora``, the default there; ``--lora`` for bf16): 8B weights, sequence 4096,
micro batch 2 (``--grad-accum 8`` for the guide's 16 micro-batches a step, ~8x longer steps),
probes of a 4-bit base (decoded on its bf16 copy when it fits): a suite lasts seconds to a
minute, so each key lands inside one; building and saving the 16 GB model takes ~1 min and
loading it in 4 bits ~40 s (``--budget`` bounds the whole run). On CPU (``--tiny``) QLoRA is
refused (bitsandbytes needs CUDA): LoRA on a tiny Qwen3-VL, whose identity suite still lasts
~0.3 s of 256-token answers, long enough for a key seen within 50 ms of its first record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine_8b import build, cli_argv, cli_env, write_config  # noqa: E402
from synthetic import write_chat_data  # noqa: E402

from engine.run.control_file import append_command  # noqa: E402
from engine.run.events import follow  # noqa: E402
from engine.run.rundir import RunDir  # noqa: E402

POLL_S = 0.05
TARGET_S = 5.0
SAVE_STEPS = 5
EVAL_STEPS = 10
QUESTION = "Who are you?"


class Log:
    """The run log as the trainer writes it: ``events.follow`` in a thread, every record kept."""

    def __init__(self, path: Path, proc: subprocess.Popen, deadline: float) -> None:
        self.path, self.proc, self.deadline = path, proc, deadline  # time.monotonic()'s
        self.records: list[dict] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()

    def start(self, timeout: float) -> bool:
        deadline = min(time.monotonic() + timeout, self.deadline)
        while not self.path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        threading.Thread(target=self._read, name="run-log", daemon=True).start()
        return True

    def _read(self) -> None:
        for record in follow(self.path, self.stop, poll_s=POLL_S):
            with self.cond:
                self.records.append(record)
                self.cond.notify_all()

    def wait(
        self, kind: str | tuple, timeout: float, after: float = 0.0, where=lambda r: True
    ) -> dict | None:
        """The first ``kind`` record (or one of these kinds) written at or after ``after`` that ``where`` accepts; None
        after ``timeout`` s (or past the whole run's deadline), or once the trainer has exited
        and its log is read to the end."""
        deadline = min(time.monotonic() + timeout, self.deadline)
        gone_since = None
        with self.cond:
            while True:
                for r in self.records:
                    if (
                        r["kind"] in (kind if isinstance(kind, tuple) else (kind,))
                        and r["t"] >= after
                        and where(r)
                    ):
                        return r
                now = time.monotonic()
                if self.proc.poll() is not None:
                    gone_since = gone_since or now
                if now > deadline or (gone_since and now - gone_since > 1.0):
                    return None
                self.cond.wait(POLL_S)

    def of(self, kind: str) -> list[dict]:
        with self.cond:
            return [r for r in self.records if r["kind"] == kind]


class Reply:
    """A live chat's reply file (``chat_bridge.reply_path``), followed: each event and when it came."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[float, dict]] = []
        self.stop = threading.Event()
        threading.Thread(target=self._read, name="chat-reply", daemon=True).start()

    def _read(self) -> None:
        offset, pending = 0, b""
        while not self.stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            now = time.time()
            self.events += [(now, json.loads(line)) for line in lines if line.strip()]
            if any(e["event"] in ("Done", "Failed") for _, e in self.events):
                return
            time.sleep(POLL_S)

    def wait(self, timeout: float, final: bool) -> tuple[float, dict] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, e in list(self.events):
                if not final or e["event"] in ("Done", "Failed"):
                    return at, e
            time.sleep(POLL_S)
        return None


class Table:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(
        self, phase: str, what: str, seconds: float | None, target: float | None = TARGET_S, note: str = ""
    ):
        ok = seconds is not None and (target is None or seconds <= target)
        self.rows.append(dict(phase=phase, what=what, seconds=_r(seconds), target=target, ok=ok, note=note))

    def check(self, phase: str, what: str, ok: bool, note: str = "") -> None:
        self.rows.append(dict(phase=phase, what=what, seconds=None, target=None, ok=ok, note=note))


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _since(record: dict | None, t: float) -> float | None:
    return None if record is None else record["t"] - t


# -- the scenario ---------------------------------------------------------------------------


def next_probing(log: Log, after_step: int, timeout: float) -> dict | None:
    return log.wait("probing", timeout, where=lambda r: r.get("step", 0) > after_step)


def cut_of(log: Log, step: int, after: float) -> str:
    """What the probe record in flight at ``step`` says about the cut."""
    probe = log.wait("probe", 30, after=after, where=lambda r: r.get("step") == step)
    if probe is None:
        return "no probe record"
    return (
        f"{probe.get('suite')} cut: {probe.get('cut')}"
        if probe.get("cut")
        else f"{probe.get('suite')} not cut"
    )


def phase_whole(log: Log, table: Table, args) -> int:
    """The first save's probes, left to run whole: each suite's seconds as a probe costs them
    (the identity suite's target: under 3 s on the 8B shape)."""
    probing = next_probing(log, 0, args.first_timeout)
    if probing is None:
        table.add("0 probes", "no probing record came", None, None, note=f"within {args.first_timeout:.0f}s")
        return 0
    step = probing["step"]
    for suite in _suites():
        probe = log.wait(
            "probe", args.save_timeout, where=lambda r, s=suite: r.get("step") == step and r.get("suite") == s
        )
        seconds = probe.get("seconds") if probe else None
        note = (
            ""
            if probe is None
            else (probe.get("decode") or "") + (f" cut: {probe['cut']}" if probe.get("cut") else "")
        )
        table.add(
            "0 probes",
            f"{suite} suite whole at step {step}",
            seconds,
            3.0 if suite == "identity" else None,
            note,
        )
    return step


def phase_pause(log: Log, run: RunDir, table: Table, args, after_step: int = 0) -> int:
    probing = next_probing(log, after_step, args.first_timeout)
    if probing is None:
        table.add("1 pause", "no probing record came", None, None, note=f"within {args.first_timeout:.0f}s")
        return 0
    step = probing["step"]
    t = append_command(run, "pause")["t"]
    paused = log.wait("paused", args.key_timeout, after=t)
    table.add(
        "1 pause", f"p while probing step {step} -> paused", _since(paused, t), note=cut_of(log, step, t)
    )
    if paused is None:
        return step
    t = append_command(run, "resume")["t"]
    resumed = log.wait("resumed", args.key_timeout, after=t)
    table.add("1 pause", "resume -> resumed", _since(resumed, t), note=f"paused at step {paused.get('step')}")
    if resumed is None:
        return step
    # A save while training (not probing): the unscheduled save whose probes must not run.
    t = append_command(run, "save")["t"]
    acted, said = saved_or_noted(log, t, args.key_timeout)
    table.add("1 pause", "s while training -> save", _since(acted, t), None, note=said)
    return max(step, acted["step"] if acted else step)


def saved_or_noted(log: Log, t: float, timeout: float) -> tuple[dict | None, str]:
    """The run's answer to a save key written at ``t``: its ``save`` record, or the note that
    the step is saved already (a save asked at the step just saved), and that in words."""
    acted = log.wait(
        ("save", "note"),
        timeout,
        after=t,
        where=lambda r: r["kind"] == "save" or "saved already" in r.get("message", ""),
    )
    if acted is None:
        return None, "no save record"
    if acted["kind"] == "note":
        return acted, acted.get("message") or ""
    return acted, f"saved step {acted.get('step')}, probes: {acted.get('probes_skipped') or 'ran'}"


def phase_chat_save(log: Log, run: RunDir, table: Table, args, model: Path, after_step: int) -> int:
    from engine.chat.chat import LIVE, Request, Settings
    from engine.chat.chat_bridge import reply_path, request_to_dict

    probing = next_probing(log, after_step, args.save_timeout)
    if probing is None:
        table.add("2 chat+save", "no probing record came", None, None, note=f"after step {after_step}")
        return after_step
    step = probing["step"]
    request = Request(QUESTION, [LIVE], Settings(temperature=0.0, top_p=1.0, max_new_tokens=64))
    reply = Reply(reply_path(run, request.id))
    t_chat = append_command(run, "chat", base=str(model), request=request_to_dict(request))["t"]
    # The save key once the trainer has read the question (a control record between steps).
    log.wait("control", 5, after=t_chat, where=lambda r: "chat" in (r.get("commands") or []))
    t_save = append_command(run, "save")["t"]
    acted, said = saved_or_noted(log, t_save, args.key_timeout)
    table.add("2 chat+save", f"s while probing step {step} -> save", _since(acted, t_save), note=said)
    first, done = reply.wait(args.key_timeout, final=False), reply.wait(args.key_timeout, final=True)
    reply.stop.set()
    table.add(
        "2 chat+save", "chat request -> first event", None if first is None else first[0] - t_chat, None
    )
    table.add(
        "2 chat+save", "chat request -> Done", None if done is None else done[0] - t_chat, None, _answer(done)
    )
    boundary = _boundary(log, t_chat)
    table.add(
        "2 chat+save",
        "next step boundary -> Done",
        None if done is None or boundary is None else done[0] - boundary[0],
        note=boundary[1] if boundary else "no step boundary after the request",
    )
    return max(step, acted["step"] if acted else step)


def _answer(done: tuple[float, dict] | None) -> str:
    if done is None:
        return "no reply"
    e = done[1]
    if e["event"] == "Failed":
        return f"failed: {e.get('message')}"
    a = (e.get("answers") or [{}])[0]
    return f"step {e.get('step')}: {a.get('tokens')} tok, {a.get('tokens_per_s') or 0:.0f} tok/s"


def _boundary(log: Log, t: float) -> tuple[float, str] | None:
    """When the chat's step boundary came: the chat job's start (its ``chat`` record less its
    seconds; jobs run before that step's record is written), else the first step record after ``t``."""
    chat = log.wait("chat", 1, after=t)
    if chat is not None:
        return chat["t"] - (chat.get("seconds") or 0.0), f"answered at step {chat.get('step')}"
    step = log.wait("step", 1, after=t)
    return (step["t"], f"step {step.get('step')} record") if step else None


def phase_stop(log: Log, run: RunDir, table: Table, args, after_step: int) -> None:
    probing = next_probing(log, after_step, args.save_timeout)
    if probing is None:
        table.add(
            "3 stop", "no probing record came", None, None, note=f"after step {after_step}; stopping anyway"
        )
    t = append_command(run, "stop", reason="probe_keys")["t"]
    end = log.wait("end", args.key_timeout, after=t)
    step = probing["step"] if probing else None
    table.add(
        "3 stop",
        f"q while probing step {step} -> end" if step else "q (no probes) -> end",
        _since(end, t),
        note=end and end.get("status") or "",
    )
    try:
        log.proc.wait(timeout=max(min(args.key_timeout, log.deadline - time.monotonic()), 0.1))
        table.add("3 stop", "q -> process exit", time.time() - t, None, note=f"exit {log.proc.returncode}")
    except subprocess.TimeoutExpired:
        table.add("3 stop", "q -> process exit", None, None, note="still running")
    if probing is not None:
        table.rows[-2]["note"] += f"; {cut_of(log, probing['step'], t)}"


# -- the whole log ----------------------------------------------------------------------------


def summary(log: Log, table: Table, max_steps: int) -> dict:
    probes = [
        {
            k: p.get(k)
            for k in (
                "step",
                "suite",
                "seconds",
                "cut",
                "planned",
                "passed",
                "total",
                "decode",
                "parts",
                "error",
            )
        }
        for p in log.of("probe")
    ]
    saves = [{k: s.get(k) for k in ("step", "probes_skipped")} for s in log.of("save")]
    unscheduled = [s["step"] for s in saves if s["step"] % SAVE_STEPS and s["step"] != max_steps]
    probed_steps = Counter(p["step"] for p in log.of("probing") if p.get("i") == 0)
    twice = {f"{step}": n for step, n in probed_steps.items() if n > len(_suites())}
    again = sorted({p["step"] for p in probes} & set(unscheduled))
    table.check(
        "4 log", "no probes at saves the schedule did not ask", not again, f"unscheduled saves {unscheduled}"
    )
    table.check("4 log", "no suite probed twice at one step", not twice, json.dumps(twice) if twice else "")
    alerts = Counter(a.get("rule") for a in log.of("alert"))
    flapping = {rule: n for rule, n in alerts.items() if n > 1}
    table.check("4 log", "no alert raised twice (flapping)", not flapping, json.dumps(dict(alerts)))
    steps = [s["s_per_step"] for s in log.of("step") if s.get("s_per_step")]
    steps_sorted = sorted(steps)
    step_s = {
        "n": len(steps),
        "median": steps_sorted[len(steps) // 2] if steps else None,
        "max": max(steps, default=None),
    }
    start = next(iter(log.of("start")), {})
    begin = next(iter(log.of("train_begin")), {})
    setup = {k: start.get(k) for k in ("setup_s", "gradient_checkpointing")}
    setup["decode_warm_s"] = begin.get("decode_warm_s")
    return {"probes": probes, "saves": saves, "alerts": dict(alerts), "step_s": step_s, "setup": setup}


def _suites() -> tuple[str, ...]:
    return ("identity", "inference")


def report(table: Table, extra: dict, meta: dict) -> None:
    print()
    print(f"{'phase':<12} {'what':<40} {'seconds':>8} {'target':>7} {'ok':>4}  note")
    for r in table.rows:
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        target = f"<={r['target']:.0f}" if r["target"] else ""
        print(
            f"{r['phase']:<12} {r['what']:<40} {secs:>8} {target:>7} {'yes' if r['ok'] else 'NO':>4}  {r['note']}"
        )
    print("\nprobes:")
    for p in extra["probes"]:
        cut = f" cut by {p['cut']} ({p['planned']} planned)" if p.get("cut") else ""
        decode = f" decode: {p['decode']}" if p.get("decode") else ""
        decode += f" parts: {p['parts']}" if p.get("parts") else ""
        print(
            f"  step {p['step']} {p['suite']}: {p['seconds']}s {p.get('passed')}/{p.get('total')}{cut}{decode}"
        )
    print(
        "saves:",
        ", ".join(
            f"{s['step']}" + (f" ({s['probes_skipped']})" if s["probes_skipped"] else "")
            for s in extra["saves"]
        ),
    )
    print("alerts:", extra["alerts"] or "none")
    print("start:", ", ".join(f"{k} {v}" for k, v in extra["setup"].items()))
    print(
        "step s (median, max over",
        extra["step_s"]["n"],
        "steps):",
        extra["step_s"]["median"],
        extra["step_s"]["max"],
    )
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "probe_keys.json").write_text(
            json.dumps({**meta, "rows": table.rows, **extra}, indent=1)
        )


# -- setting up ---------------------------------------------------------------------------------


def config(work: Path, model: Path, data: Path, args) -> Path:
    over = dict(
        save_steps=SAVE_STEPS,
        save_total_limit=2,
        eval_steps=EVAL_STEPS,
        val_set_size=8 if args.tiny else 16,
        evaluation={"on_save": ["identity", "inference"]},
        warmup_steps=2,
        gradient_accumulation_steps=args.grad_accum,
    )
    if not args.tiny:
        over.update(sequence_len=4096, micro_batch_size=2)
    if args.qlora:
        over["load_in_4bit"] = True
    adapter = "qlora" if args.qlora else "lora"
    return write_config(
        work, "probe-keys", model, data, adapter=adapter, steps=args.steps, tiny=args.tiny, **over
    )


def trainer_env(profile: str | None) -> dict:
    env = cli_env()
    if profile:  # benchmarks/first_probe_profile/sitecustomize.py, imported at the trainer's start
        here = Path(__file__).resolve().parent / "first_probe_profile"
        env["PYTHONPATH"] = f"{here}:{env['PYTHONPATH']}"
        env["LEV_FIRST_PROBE_PROFILE"] = str(Path(profile).resolve())
    return env


def parse() -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model (the CPU smoke run)")
    ap.add_argument(
        "--steps", type=int, default=25, help="max_steps (saves every 5: four probed saves by 20)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--profile", default=None, help="cProfile the trainer's first probe suite into this file")
    ap.add_argument(
        "--whole",
        action=argparse.BooleanOptionalAction,
        default=gpu,
        help="let the first save's probes run whole (their seconds) before the keys",
    )
    ap.add_argument(
        "--vl", action=argparse.BooleanOptionalAction, default=True, help="Qwen3-VL base (the guide's)"
    )
    ap.add_argument("--qlora", action=argparse.BooleanOptionalAction, default=gpu, help="--lora: bf16 base")
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--first-timeout", type=float, default=240.0, help="s to the first probing record")
    ap.add_argument("--save-timeout", type=float, default=120.0, help="s to the next save's probing record")
    ap.add_argument("--key-timeout", type=float, default=90.0, help="s a key's answer is waited for")
    ap.add_argument("--budget", type=float, default=270.0, help="s for the whole run, build included")
    ap.add_argument("--grad-accum", type=int, default=1, help="gradient_accumulation_steps (the guide's: 8)")
    ap.add_argument("--workdir", default=None)
    return ap.parse_args()


def main() -> int:
    args = parse()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lev-probe-keys-"))
    work.mkdir(parents=True, exist_ok=True)
    t0, deadline = time.time(), time.monotonic() + args.budget
    model = build(work, args.tiny, args.vl)
    print(f"model built and saved in {time.time() - t0:.0f}s at {model}", flush=True)
    # A user's base model has long been on disk. Just written, its 16 GB sit in the page cache,
    # where the run's first fsync (the first probe's result file) may wait for them (not shown).
    t_sync = time.time()
    os.sync()
    print(f"written to disk before the run: {time.time() - t_sync:.1f}s", flush=True)
    data = write_chat_data(work / "chat.jsonl", args.rows)
    cfg = config(work, model, data, args)
    run = RunDir(work / "logs" / "probe-keys")
    table = Table()
    with open(work / "trainer.log", "w") as out:
        proc = subprocess.Popen(
            cli_argv(cfg),
            cwd=work,
            env=trainer_env(args.profile),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log = Log(run.events, proc, deadline)
    try:
        if not log.start(args.first_timeout):
            table.add("0 start", "no run log", None, note=f"exit {proc.poll()}; see {work / 'trainer.log'}")
        else:
            step = phase_whole(log, table, args) if args.whole else 0
            step = phase_pause(log, run, table, args, step)
            step = phase_chat_save(log, run, table, args, model, step)
            phase_stop(log, run, table, args, step)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the trainer and whatever it started (its own session)
        proc.wait()
        log.stop.set()
    extra = summary(log, table, args.steps)
    meta = {
        "tiny": args.tiny,
        "vl": args.vl,
        "adapter": "qlora" if args.qlora else "lora",
        "wall_s": round(time.time() - t0, 1),
    }
    report(table, extra, meta)
    print(f"\nwall {meta['wall_s']}s; trainer output: {work / 'trainer.log'}")
    if not all(r["ok"] for r in table.rows):
        print(
            "trainer output, last lines:\n" + "\n".join((work / "trainer.log").read_text().splitlines()[-30:])
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["ok"] for r in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
