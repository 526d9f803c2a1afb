"""The code box's launcher: a small process between the caller and model-written code.

Run as ``python -s -E -S -m engine.evaluate.box_launcher`` (stdlib only, so it starts small and
never carries a trainer's memory). It reads the box's spec (JSON) on stdin, builds the box with
what the machine allows, runs the program in it, and writes the outcome (JSON) on stdout:

- processes: a PID namespace whose init is the program (it ends → the kernel kills everything
  in it), else this launcher as child subreaper killing every descendant; wall time bounded
  either way, ``setsid`` and double-fork children included;
- network: a network namespace (empty: not even loopback is up), and a seccomp filter refusing
  non-Unix sockets;
- files: a mount namespace with the caller's folders hidden under empty tmpfs (the interpreter
  shown again read-only), the work folder a small tmpfs; as root, the uid ``nobody``; Landlock
  (where the kernel has it) lets the program read only the interpreter and system folders and
  write only its work folder;
- limits: processes, address space, CPU seconds, file size, open files, no core files; the
  captured output is cut and the box killed past ``output_bytes``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time

from engine.evaluate import box_kernel as k

NOBODY = 65534


def main() -> int:
    spec = json.loads(sys.stdin.read())
    k.prctl(k.PR_SET_PDEATHSIG, signal.SIGKILL)  # the caller dies: the box goes with it
    if os.getppid() != spec["parent"]:
        return 1
    ns = _enter_namespaces(set(spec.get("without", ())))
    if "pid" not in ns:
        k.prctl(k.PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, to be killed
    _sweep_orphans()
    work = tempfile.mkdtemp(prefix=f"lev-box-{os.getpid()}-")
    try:
        result = _run(spec, ns, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(json.dumps(result))
    return 0


def _sweep_orphans() -> None:
    """Remove the empty work folders of launchers that are gone.

    A launcher killed by its caller's death signal never reaches its ``finally``; its folder (a
    mount point only inside its own namespace, so empty here) stays behind. The name carries the
    launcher's pid: a folder whose launcher lives is left alone, and rmdir never removes content.
    """
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(root):
            parts = name.split("-")
            if len(parts) != 4 or parts[:2] != ["lev", "box"] or not parts[2].isdigit():
                continue
            if not _alive(int(parts[2])):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, name))


def _alive(pid: int) -> bool:
    """Running, not a zombie (a killed launcher may wait a while for a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _enter_namespaces(without: set[str]) -> set[str]:
    """PID, network (and IPC/UTS) namespaces; with a user namespace when not root.

    ``without`` names parts to leave out (``pid``, ``net``, ``user``: to test the fallbacks).
    """
    base = k.CLONE_NEWIPC | k.CLONE_NEWUTS | (0 if "net" in without else k.CLONE_NEWNET)
    pid = 0 if "pid" in without else k.CLONE_NEWPID
    if os.geteuid() != 0 and "user" in without:
        return set()
    if os.geteuid() != 0:
        uid, gid = os.geteuid(), os.getegid()
        try:
            k.unshare(k.CLONE_NEWUSER | pid | base)
            k.map_ids_to_self(uid, gid)
            return {"user"} | _got(pid | base)
        except OSError:
            return set()
    for flags in (pid | base, base):
        try:
            k.unshare(flags)
            return _got(flags)
        except OSError:
            continue
    return set()


def _got(flags: int) -> set[str]:
    return {n for n, bit in (("pid", k.CLONE_NEWPID), ("net", k.CLONE_NEWNET)) if flags & bit}


def _run(spec: dict, ns: set[str], work: str) -> dict:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    st_r, st_w = os.pipe2(os.O_CLOEXEC)  # the child's setup report; closes at exec
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(spec, ns, work, out_w, err_w, st_w)  # never returns
    for fd in (out_w, err_w, st_w):
        os.close(fd)
    setup = _read_all(st_r)
    os.close(st_r)
    got = _supervise(spec, ns, pid, out_r, err_r, t0)
    lines = setup.splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}  # the last: after a failed exec
    except ValueError:
        report = {}
    got["isolation"] = _isolation(ns, report, spec)
    got["setup_error"] = report.get("error")
    return got


# -- inside the box -------------------------------------------------------------------------


def _child(spec: dict, ns: set[str], work: str, out_w: int, err_w: int, st_w: int) -> None:
    report: dict = {}
    try:
        k.prctl(k.PR_SET_PDEATHSIG, signal.SIGKILL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        without = set(spec.get("without", ()))
        report["mount"] = "mount" not in without and _mounts(spec, ns, work, report)
        for name, text in spec["files"].items():
            with open(os.path.join(work, name), "w") as f:
                f.write(text)
        _set_limits(spec["limits"])
        report["uid"] = os.geteuid() if "uid" in without else _drop_uid(work, spec["argv"][0])
        os.chdir(work)
        k.prctl(k.PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it
        if os.getppid() == 1:  # the launcher died in between (outside a PID namespace)
            os._exit(126)
        k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
        report["landlock"] = "landlock" not in without and _landlock(spec, work)
        report["seccomp"] = "seccomp" not in without and _try(k.seccomp_no_network)
        env = {**spec["env"], "HOME": work, "TMPDIR": work}
        os.write(st_w, json.dumps(report).encode() + b"\n")
        os.execve(spec["argv"][0], spec["argv"], env)
    except BaseException as e:  # noqa: BLE001 - any setup failure ends the child, reported
        report["error"] = f"{type(e).__name__}: {e}"
        try:
            os.write(st_w, json.dumps(report).encode() + b"\n")
        finally:
            os._exit(126)


def _try(fn, *args) -> bool | dict:
    try:
        return fn(*args) or True
    except OSError:
        return False


def _mounts(spec: dict, ns: set[str], work: str, report: dict) -> list[str] | bool:
    """A private mount namespace: caller folders hidden, interpreter shown again, work on tmpfs."""
    try:
        k.unshare(k.CLONE_NEWNS)
        k.mount("none", "/", None, k.MS_REC | k.MS_PRIVATE)
    except OSError:
        return False
    if "pid" in ns:
        report["proc"] = _try(k.mount, "proc", "/proc", "proc", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)
    hides = _outermost([os.path.realpath(h) for h in spec["hide"] if os.path.isdir(h)])
    needs = [os.path.realpath(p) for p in spec["read"] if os.path.exists(p)]
    keep = {
        p: (os.open(p, os.O_PATH | os.O_CLOEXEC), os.path.isdir(p))
        for p in needs
        if any(_under(p, h) for h in hides)
    }
    hidden = []
    for h in hides:
        k.mount("tmpfs", h, "tmpfs", k.MS_NOSUID | k.MS_NODEV, "mode=755,size=1m")
        hidden.append(h)
    for p, (fd, is_dir) in keep.items():
        if is_dir:
            os.makedirs(p, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "a").close()
        k.mount(f"/proc/self/fd/{fd}", p, None, k.MS_BIND | k.MS_REC)
        _try(k.mount, "none", p, None, k.MS_REMOUNT | k.MS_BIND | k.MS_RDONLY | k.MS_NOSUID)
        os.close(fd)
    os.makedirs(work, exist_ok=True)
    size = spec["limits"]["disk_mb"]
    k.mount("tmpfs", work, "tmpfs", k.MS_NOSUID | k.MS_NODEV, f"mode=700,size={size}m")
    return hidden


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _outermost(folders: list[str]) -> list[str]:
    out = []
    for f in sorted(set(folders), key=len):
        if f != "/" and not any(_under(f, o) for o in out):
            out.append(f)
    return out


def _set_limits(lim: dict) -> None:
    mib = 1 << 20
    for what, value in (
        (resource.RLIMIT_NPROC, lim["procs"]),
        (resource.RLIMIT_AS, lim["memory_mb"] * mib),
        (resource.RLIMIT_CPU, lim["cpu_s"]),
        (resource.RLIMIT_FSIZE, lim["file_mb"] * mib),
        (resource.RLIMIT_NOFILE, lim["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(what, (value, value))


def _drop_uid(work: str, exe: str) -> int:
    """As root: become ``nobody`` (no capabilities, none of root's files, RLIMIT_NPROC bites)."""
    if os.geteuid() != 0 or os.getuid() != 0:
        return os.geteuid()
    if not _others_can_run(exe):  # and no mount namespace showed it: refuse rather than run as root
        raise PermissionError(f"{exe} is not reachable by nobody and there is no mount namespace to show it")
    os.chown(work, NOBODY, NOBODY)
    for name in os.listdir(work):
        os.chown(os.path.join(work, name), NOBODY, NOBODY)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    return NOBODY


def _others_can_run(exe: str) -> bool:
    path = os.path.realpath(exe)
    folders = [os.path.dirname(path)]
    while folders[-1] != "/":
        folders.append(os.path.dirname(folders[-1]))
    return all(os.stat(f).st_mode & 0o001 for f in folders) and bool(os.stat(path).st_mode & 0o005 == 0o005)


def _landlock(spec: dict, work: str) -> dict | bool:
    try:
        return k.landlock_restrict(spec["read"], [work, os.devnull])
    except OSError:
        return False


# -- outside: supervising ---------------------------------------------------------------------


def _supervise(spec: dict, ns: set[str], pid: int, out_r: int, err_r: int, t0: float) -> dict:
    """Collect output (the tail of each stream) until the program ends or breaks a bound."""
    deadline, keep, cap = t0 + spec["timeout_s"], spec["keep_bytes"], spec["output_bytes"]
    bufs = {out_r: bytearray(), err_r: bytearray()}
    live = {out_r, err_r}
    total, status, reason, drain_end = 0, None, None, 0.0
    while True:
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status, drain_end = st, time.monotonic() + 1.0
                _kill_rest(ns)
            elif total > cap or time.monotonic() > deadline:
                reason = "output" if total > cap else "timeout"
                status, drain_end = _kill_box(ns, pid), time.monotonic() + 1.0
        if status is not None and (not live or time.monotonic() > drain_end):
            break
        ready = select.select(list(live), [], [], 0.02)[0] if live else time.sleep(0.02) or []
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                live.discard(fd)
                continue
            total += len(chunk)
            bufs[fd] += chunk
            del bufs[fd][: max(0, len(bufs[fd]) - keep)]
    for fd in bufs:
        os.close(fd)
    return {
        "exit": os.waitstatus_to_exitcode(status),
        "killed": reason,
        "output_bytes": total,
        "stdout": bytes(bufs[out_r]).decode(errors="replace"),
        "stderr": bytes(bufs[err_r]).decode(errors="replace"),
        "seconds": round(time.monotonic() - t0, 3),
    }


def _kill_box(ns: set[str], pid: int) -> int:
    """Kill the program (in a PID namespace its init: its end ends all inside); its wait status."""
    os.kill(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    _kill_rest(ns)
    return status


def _kill_rest(ns: set[str]) -> None:
    if "pid" not in ns:
        _kill_descendants()


def _kill_descendants(limit_s: float = 5.0) -> None:
    """As subreaper every descendant stays below us: kill and reap until none is left."""
    me, end = os.getpid(), time.monotonic() + limit_s
    while time.monotonic() < end:
        below = _descendants(me)
        for p in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            if not below:
                return
        if not below:
            return
        time.sleep(0.005)


def _descendants(root: int) -> list[int]:
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    out, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        out.extend(frontier)
    return out


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _isolation(ns: set[str], report: dict, spec: dict) -> dict:
    mount, ll = report.get("mount"), report.get("landlock")
    files = []
    if report.get("uid") == NOBODY:
        files.append("uid nobody")
    if mount:
        files.append("mount namespace: " + ", ".join(mount) + " hidden")
    if ll:
        files.append(f"landlock ABI {ll['abi']}: reads only the interpreter and system folders")
    net = ["namespace"] if "net" in ns else []
    if report.get("seccomp"):
        net.append("seccomp")
    if ll and ll.get("tcp"):
        net.append("landlock tcp")
    return {
        "processes": "pid namespace" if "pid" in ns else "subreaper",
        "network": " + ".join(net) or "none",
        "files": "; ".join(files) or "caller's rights",
        "user_namespace": "user" in ns,
        "limits": spec["limits"],
    }


if __name__ == "__main__":
    sys.exit(main())
