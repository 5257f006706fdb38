"""Re-create parts of the systemd unit's sandbox for one child process, without systemd as PID 1.

Run as ``python sandbox_emulation.py [--mdwe] [--syscall-allow FILE] [--address-families AF_..]
-- python -c CODE``. It installs, in this order and then execs the command:

* ``--mdwe``: the kernel's PR_SET_MDWE (Linux >= 6.3), what MemoryDenyWriteExecute=yes enforces: no
  mapping may be writable and executable, and no mapping may gain PROT_EXEC later.
* ``--mdwe-seccomp``: the same rule as systemd enforces it on kernels without PR_SET_MDWE, with a seccomp
  filter: mmap() of memory both writable and executable, mprotect()/pkey_mprotect() adding PROT_EXEC, and
  shmat() with SHM_EXEC fail with EPERM.
* ``--address-families``: a seccomp filter failing socket() for any other family with EAFNOSUPPORT,
  as RestrictAddressFamilies= does.
* ``--syscall-allow``: a seccomp allow-list (one syscall name a line, as expanded by
  ``systemd-analyze syscall-filter``). Any other syscall raises SIGSYS, which kills the process: stricter
  than the unit's SystemCallErrorNumber=EPERM on purpose, so that a syscall the workload needs and the
  unit forbids shows up as a crash instead of a silently swallowed error.

libseccomp is used through ctypes (Debian libseccomp2, a dependency of systemd).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import socket
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_TRAP = 0x00030000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def SCMP_ACT_ERRNO(value: int) -> int:  # noqa: N802 - the C macro's name
    return 0x00050000 | (value & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


def install_mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_MDWE): {os.strerror(err)}")


def install_mdwe_seccomp() -> None:
    """systemd's seccomp_memory_deny_write_execute(): what MemoryDenyWriteExecute=yes is without PR_SET_MDWE."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    rules = [("mmap", 2, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC), ("mprotect", 2, PROT_EXEC, PROT_EXEC),
             ("pkey_mprotect", 2, PROT_EXEC, PROT_EXEC), ("shmat", 2, SHM_EXEC, SHM_EXEC)]
    for name, arg, mask, value in rules:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue
        cmp = ScmpArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, value)
        _check(lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 1, ctypes.byref(cmp)), f"rule {name}")
    _check(lib.seccomp_load(ctx), "seccomp_load")
    lib.seccomp_release(ctx)


def install_address_families(allowed: list[str]) -> None:
    lib = _libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    allowed_numbers = {getattr(socket, name) for name in allowed}
    nr = lib.seccomp_syscall_resolve_name(b"socket")
    for family in range(0, 64):  # AF_MAX is 46 on Linux 6.x
        if family in allowed_numbers:
            continue
        cmp = ScmpArgCmp(0, SCMP_CMP_EQ, family, 0)
        _check(lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EAFNOSUPPORT), nr, 1, ctypes.byref(cmp)),
               f"rule socket({family})")
    _check(lib.seccomp_load(ctx), "seccomp_load")
    lib.seccomp_release(ctx)


def install_syscall_allowlist(names: list[str]) -> None:
    lib = _libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_TRAP)
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall of this architecture (e.g. arm_fadvise64_64 on x86-64)
            continue
        _check(lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None), f"allow {name}")
    _check(lib.seccomp_load(ctx), "seccomp_load")
    lib.seccomp_release(ctx)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mdwe", action="store_true")
    parser.add_argument("--mdwe-seccomp", action="store_true")
    parser.add_argument("--address-families", nargs="*", default=None)
    parser.add_argument("--syscall-allow")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    if args.mdwe:
        install_mdwe()
    if args.mdwe_seccomp:
        install_mdwe_seccomp()
    if args.address_families is not None:
        install_address_families(args.address_families)
    if args.syscall_allow:
        with open(args.syscall_allow) as f:
            install_syscall_allowlist([line.strip() for line in f if line.strip()])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
