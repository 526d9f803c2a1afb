"""The code box against escape attempts, with real processes, in the full box and in the
fallback of a machine without PID/network namespaces and Landlock (subreaper + seccomp)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.evaluate.sandbox import isolation, isolation_line, outcome, run_box, run_code

FULL = ()
FALLBACK = ("pid", "net", "landlock")  # what a machine allowing less leaves: subreaper, seccomp
MODES = pytest.mark.parametrize("without", [FULL, FALLBACK], ids=["full", "fallback"])


def _box(program: str, without, timeout_s: float = 5, **kw) -> dict:
    r = run_box(program, timeout_s, without=without, **kw)
    assert not r.get("setup_error"), r["setup_error"]
    return r


def _alive_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                continue
    return found


@MODES
def test_reading_a_private_file_outside_fails(tmp_path, without):
    secret = tmp_path / "shadow"
    secret.write_text("s3cret-" + secrets.token_hex(4))
    secret.chmod(0o600)
    r = _box(f"print(open({str(secret)!r}).read())", without)
    assert r["exit"] == 1
    assert secret.read_text() not in r["stdout"]
    assert "Error" in r["stderr"]


@MODES
def test_run_folder_is_not_readable_and_its_control_file_not_writable(tmp_path, without):
    run = tmp_path / "logs" / "run1"
    run.mkdir(parents=True)
    events = run / "events.jsonl"
    events.write_text('{"event": "start"}\n')
    control = run / "control.jsonl"
    control.write_text("")
    events.chmod(0o644)
    control.chmod(0o644)
    program = (
        f"try:\n    print(open({str(events)!r}).read())\nexcept OSError as e:\n    print('read:', e)\n"
        f"with open({str(control)!r}, 'a') as f:\n    f.write('{{\"command\": \"stop\"}}\\n')\n"
    )
    r = _box(program, without, hide=[run])
    assert r["exit"] == 1
    assert '"start"' not in r["stdout"]
    assert control.read_text() == ""  # no stop reached the run


@MODES
def test_no_connection_to_a_listener_on_loopback(without):
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    port = srv.getsockname()[1]
    try:
        r = _box(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('in')", without
        )
        assert r["exit"] == 1 and "in" not in r["stdout"]
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody knocked
    finally:
        srv.close()


@MODES
def test_setsid_child_does_not_outlive_the_timeout(without):
    marker = f"{29 + secrets.randbelow(1000) / 1000:.3f}"  # `sleep 29.xyz`: findable in /proc
    program = f"import subprocess, time\nsubprocess.Popen(['setsid', 'sleep', '{marker}'])\ntime.sleep(30)"
    t0 = time.monotonic()
    r = _box(program, without, timeout_s=2)
    assert r["killed"] == "timeout"
    assert time.monotonic() - t0 < 25  # it did not wait for the 30 s sleepers
    assert _alive_with(marker) == []


@MODES
def test_double_forked_daemon_dies_when_the_program_ends(without):
    marker = f"{28 + secrets.randbelow(1000) / 1000:.3f}"
    program = (
        "import os\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        os.execvp('sleep', ['sleep', '{marker}'])\n    os._exit(0)\n"
        "os.wait()\nprint('parent done')"
    )
    r = _box(program, without)
    assert r["exit"] == 0 and "parent done" in r["stdout"]
    assert _alive_with(marker) == []


@MODES
def test_fork_bomb_meets_the_process_limit(without):
    program = (
        "import os, time\nn = 0\n"
        "try:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
        "        n += 1\nexcept OSError as e:\n    print('forks', n)\n    raise"
    )
    r = _box(program, without)
    assert r["exit"] == 1 and "Resource temporarily unavailable" in r["stderr"]
    assert int(r["stdout"].split()[1]) < 32  # Limits.procs


@MODES
def test_memory_bomb_meets_the_address_space_limit(without):
    r = _box("x = bytearray(3 << 30)", without)
    assert r["exit"] == 1 and "MemoryError" in r["stderr"]


@MODES
def test_output_flood_is_cut_and_the_box_killed(without):
    r = _box("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", without, timeout_s=20)
    assert r["killed"] == "output"
    assert r["output_bytes"] > 1024 << 10 and len(r["stdout"]) <= 4096
    assert outcome(r, 20).startswith("killed: output over the limit")


@MODES
def test_cpu_spin_is_stopped(without):
    r = _box("while True:\n    pass", without, timeout_s=1)
    assert r["killed"] == "timeout" or r["exit"] < 0  # wall clock or RLIMIT_CPU, whichever first


@MODES
def test_big_file_meets_the_file_size_limit(without):
    r = _box("open('big', 'wb').write(b'0' * (32 << 20))", without)
    assert r["exit"] != 0  # SIGXFSZ or 'File too large'


def test_environment_is_scrubbed_and_home_is_the_work_folder(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    r = _box("import os, json\nprint(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd()}))", FULL)
    seen = json.loads(r["stdout"])
    assert "HF_TOKEN" not in seen["env"] and "hf_secret" not in r["stdout"]
    assert seen["env"]["HOME"] == seen["cwd"] == seen["env"]["TMPDIR"]
    assert not os.path.exists(seen["cwd"])  # removed after


def test_run_code_keeps_its_contract():
    assert run_code("def add(a, b):\n    return a + b", ["assert add(2, 3) == 5"], 5) == (True, "exit 0")
    ok, detail = run_code("def add(a, b):\n    return a * b", ["assert add(2, 3) == 5"], 5)
    assert not ok and detail.startswith("exit 1: AssertionError")
    assert run_code("import time\ntime.sleep(10)", [], 1) == (False, "timed out after 1s")


def _machine_allows(*flags: str) -> bool:
    return subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


def test_isolation_names_what_this_machine_allows():
    iso = isolation()
    root = os.geteuid() == 0
    userns = [] if root else ["-U", "-r"]
    assert (iso["processes"] == "pid namespace") == _machine_allows(*userns, "-p", "-f")
    assert ("namespace" in iso["network"]) == _machine_allows(*userns, "-n")
    if root:
        assert "uid nobody" in iso["files"]
    assert isolation_line(iso).startswith("code box: processes ")


@MODES
def test_killing_the_caller_ends_the_box(tmp_path, without):
    """kill -9 of the evaluating process (a trainer during a probe): nothing of the box lives on."""
    marker = f"{27 + secrets.randbelow(1000) / 1000:.3f}"
    script = tmp_path / "caller.py"
    script.write_text(
        "import sys\nfrom engine.evaluate.sandbox import run_box\n"
        f'run_box(\'import os, time\\nos.execvp("sleep", ["sleep", "{marker}"])\', 60, without={without!r})\n'
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    before = set(Path("/tmp").glob("lev-box-*"))
    caller = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 20
    while not _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(marker), "the boxed program did not start"
    launchers = [p for p in _alive_with("engine.evaluate.box_launcher") if _parent(p) == caller.pid]
    assert len(launchers) == 1
    work = set(Path("/tmp").glob(f"lev-box-{launchers[0]}-*")) - before
    assert len(work) == 1, "the launcher's work folder carries its pid"
    caller.kill()
    caller.wait()
    deadline = time.monotonic() + 5
    while _alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(marker) == []
    # The killed launcher never reached its cleanup; the next box sweeps its empty folder.
    assert run_box("pass", 5, without=without)["exit"] == 0
    assert not any(w.exists() for w in work)


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_as_a_user_without_root_the_box_uses_a_user_namespace(tmp_path):
    """The path of a developer's machine: not root, so a user namespace carries the others."""
    if not _machine_allows("-U", "--map-user=1000", "--map-group=1000"):
        pytest.skip("this machine allows no user namespace with another uid")
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    script = tmp_path / "user.py"
    programs = {
        "read": (f"print(open({str(secret)!r}).read())", 5),
        "net": ("import socket\nsocket.socket()", 5),
        "sleep": (
            "import subprocess, time\nsubprocess.Popen(['setsid', 'sleep', '25.25'])\ntime.sleep(30)",
            2,
        ),
    }
    script.write_text(
        "import json, os\nfrom engine.evaluate.sandbox import run_box\n"
        f"out = {{k: run_box(p, t) for k, (p, t) in {programs!r}.items()}}\n"
        "print(json.dumps({**out, 'euid': os.geteuid()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = ["unshare", "-U", "--map-user=1000", "--map-group=1000", sys.executable, str(script)]
    got = json.loads(subprocess.run(cmd, env=env, capture_output=True, check=True, text=True).stdout)
    assert got["euid"] == 1000
    iso = got["read"]["isolation"]
    assert iso["user_namespace"] and iso["processes"] == "pid namespace" and "namespace" in iso["network"]
    assert got["read"]["exit"] == 1 and "s3cret" not in got["read"]["stdout"]
    assert got["net"]["exit"] == 1 and "Error" in got["net"]["stderr"]
    assert got["sleep"]["killed"] == "timeout"
