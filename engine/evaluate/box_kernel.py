"""The Linux calls the code box is made of, through ctypes (Python 3.11 has no ``os.unshare``).

Namespaces (``unshare``), mounts, ``prctl`` (parent-death signal, child subreaper, no new
privileges), a seccomp filter that refuses network sockets, and a Landlock ruleset that lets a
process read only the folders named and write only its own. Each function raises ``OSError``
when the kernel refuses, so the box can fall back to what the machine allows. Stdlib only: the
box launcher imports this module and nothing else of the project.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18

PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 22, 36, 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def prctl(option: int, arg: int = 0) -> None:
    z = ctypes.c_ulong(0)
    _check(_libc.prctl(option, ctypes.c_ulong(arg), z, z, z), "prctl")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def map_ids_to_self(uid: int, gid: int) -> None:
    """In a fresh user namespace: this process is ``uid``/``gid`` inside as outside (one id each)."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


# -- seccomp: no socket outside AF_UNIX, no io_uring (it can open sockets too) ---------------

_ARCH = {  # machine -> (AUDIT_ARCH_*, socket nr, io_uring_setup nr)
    "x86_64": (0xC000003E, 41, 425),
    "aarch64": (0xC00000B7, 198, 425),
}
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_RET_EACCES = 0x00050000 | errno.EACCES


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_no_network() -> None:
    """Refuse ``socket()`` for every family but AF_UNIX (EACCES); needs no-new-privs set first."""
    if platform.machine() not in _ARCH:
        raise OSError(errno.ENOSYS, f"seccomp filter: no syscall table for {platform.machine()}")
    arch, nr_socket, nr_uring = _ARCH[platform.machine()]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = [
        _insn(ld, 0, 0, 4),  # arch
        _insn(jeq, 1, 0, arch),
        _insn(ret, 0, 0, _RET_KILL),
        _insn(ld, 0, 0, 0),  # syscall nr
        _insn(jge, 5, 0, 0x40000000),  # x32 ABI numbers: refuse (jumps count from the next)
        _insn(jeq, 4, 0, nr_uring),
        _insn(jeq, 0, 2, nr_socket),
        _insn(ld, 0, 0, 16),  # args[0]: the address family
        _insn(jeq, 0, 1, 1),  # AF_UNIX
        _insn(ret, 0, 0, _RET_ALLOW),
        _insn(ret, 0, 0, _RET_EACCES),
    ]
    buf = ctypes.create_string_buffer(b"".join(prog))
    fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf))
    arg = ctypes.create_string_buffer(fprog)
    z = ctypes.c_ulong(0)
    _check(_libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(2), arg, z, z), "seccomp")


# -- Landlock ------------------------------------------------------------------------------

_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446
_EXEC, _WRITE, _READ, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FILE_RIGHTS_V1 = _EXEC | _WRITE | _READ
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none."""
    ret = _libc.syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(ret), 0)


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= 1 << 14  # truncate
    if abi >= 5:
        rights |= 1 << 15  # ioctl_dev
    return rights


def landlock_restrict(read: list[str], write: list[str]) -> dict:
    """Only ``read`` (read, execute) and ``write`` (everything) for this process and its children.

    Where the ABI has them (4, 6) TCP bind/connect and signals to processes outside are refused
    too. Returns what was restricted. Needs no-new-privs set first.
    """
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "landlock: not in this kernel")
    fs = _fs_rights(abi)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = struct.pack("QQQ", fs, net, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(_libc.syscall(_LL_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)), "landlock")
    try:
        for paths, rights in ((read, _EXEC | _READ | _READ_DIR), (write, fs)):
            for p in paths:
                _landlock_path(fd, p, rights & fs)
        _check(_libc.syscall(_LL_RESTRICT, ctypes.c_int(fd), ctypes.c_uint32(0)), "landlock restrict")
    finally:
        os.close(fd)
    return {"abi": abi, "files": True, "tcp": bool(net), "signals": bool(scoped)}


def _landlock_path(ruleset: int, path: str, rights: int) -> None:
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # absent here: nothing to allow
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS_V1 | (1 << 14) | (1 << 15)  # a file takes file rights only
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, pfd), 12)
        _check(_libc.syscall(_LL_ADD, ctypes.c_int(ruleset), ctypes.c_int(1), attr, ctypes.c_uint32(0)), path)
    finally:
        os.close(pfd)
