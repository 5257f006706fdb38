"""deploy/systemd: systemd-analyze verifies the unit and scores its sandbox; the sandbox is re-created
for a child process (seccomp, PR_SET_MDWE) to show that the daemon's workload runs inside it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploytools import DEPLOY, IN_CI, REPO, read_text, require, run, tool, used

from streamer import config
from streamer.cli import build_parser

UNIT = DEPLOY / "systemd" / "streamer.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "streamer.env.example"
HERE = Path(__file__).resolve().parent
EXPOSURE_THRESHOLD = 2.5  # systemd-analyze calls < 2.5 "OK"; the unit scores about 1.2


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd unit files repeat keys to extend lists)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"assignment outside a section: {raw}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    """The unit's [Service] section, read for (and recorded against) the running test."""
    return parse_unit(read_text(UNIT))["Service"]


def last(key: str) -> str:
    return service()[key][-1]


@pytest.fixture
def systemd_analyze() -> str:
    return tool("systemd-analyze")


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A --root for `systemd-analyze verify`: the distribution's units, ours, and an executable at the
    unit's ExecStart path, so that verify checks the shipped unit unchanged (it refuses a missing binary)."""
    root = tmp_path / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/streamer.service").write_text(unit_text)
    exec_start = Path(last("ExecStart").split()[0].lstrip("-@:+!"))
    binary = root / exec_start.relative_to("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return root


def test_systemd_analyze_verify_prints_nothing(systemd_analyze: str, tmp_path: Path) -> None:
    root = _verify_root(tmp_path, read_text(UNIT))
    proc = run([systemd_analyze, "verify", "--man=no", f"--root={root}", "streamer.service"], check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_broken_unit(systemd_analyze: str, tmp_path: Path) -> None:
    # The harness above must be able to fail: a misspelt directive and a bad Type= are reported.
    broken = read_text(UNIT).replace("NoNewPrivileges=yes", "NoNewPrivilege=yes").replace(
        "Type=notify", "Type=notfy")
    root = _verify_root(tmp_path, broken)
    proc = run([systemd_analyze, "verify", "--man=no", f"--root={root}", "streamer.service"], check=False)
    output = proc.stdout + proc.stderr
    assert "Unknown key 'NoNewPrivilege'" in output
    assert "notfy" in output


def exposure(systemd_analyze: str, unit: Path) -> float:
    proc = run([systemd_analyze, "security", "--offline=yes", unit])
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert match, proc.stdout
    return float(match.group(1))


def test_security_exposure_is_ok(systemd_analyze: str) -> None:
    score = exposure(systemd_analyze, UNIT)
    print(f"systemd-analyze security exposure of streamer.service: {score}")
    assert score < EXPOSURE_THRESHOLD
    # deploy/README.md quotes the score: keep it true
    quoted = re.search(r"scores \*\*(\d+\.\d+) ", read_text(DEPLOY / "README.md"))
    assert quoted and float(quoted.group(1)) == score
    # And systemd-analyze's own gate (the threshold is in tenths) agrees.
    gate = run([systemd_analyze, "security", "--offline=yes", f"--threshold={int(EXPOSURE_THRESHOLD * 10) - 1}",
                UNIT], check=False)
    assert gate.returncode == 0, gate.stdout


def test_security_exposure_of_an_unhardened_unit_is_high(systemd_analyze: str, tmp_path: Path) -> None:
    plain = tmp_path / "plain.service"
    plain.write_text(f"[Service]\nType=notify\nExecStart={last('ExecStart')}\n")
    assert exposure(systemd_analyze, plain) > 9.0
    gate = run([systemd_analyze, "security", "--offline=yes", "--threshold=24", plain], check=False)
    assert gate.returncode != 0


def test_unit_has_the_required_settings() -> None:
    assert last("Type") == "notify"
    assert last("NotifyAccess") == "main"
    assert last("WatchdogSec") == "30"
    assert last("ExecStart") == "/opt/streamer/bin/streamer --config /etc/streamer/config.toml run"
    args = build_parser().parse_args(last("ExecStart").split()[1:])  # the CLI accepts it
    assert args.command == "run" and str(args.config) == "/etc/streamer/config.toml"
    assert last("DynamicUser") == "yes"
    assert last("StateDirectory") == "streamer"
    assert last("ProtectSystem") == "strict"
    assert last("NoNewPrivileges") == "yes"
    assert last("PrivateTmp") == "yes"
    assert last("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert last("Restart") == "on-failure"
    assert last("EnvironmentFile") == "-/etc/streamer/streamer.env"
    assert last("TimeoutStopSec") == "20"
    # the daemon's clean shutdown takes up to 10 s; the stop timeout must leave room for it
    assert int(last("TimeoutStopSec")) > 10
    assert "STREAMER_CHECKPOINT__PATH=%S/streamer" in service()["Environment"]


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments start with # or ;)."""
    out = {}
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"not an assignment: {line}"
            out[key] = value
    return out


def test_env_example_is_understood_by_the_daemon_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file(ENV_EXAMPLE)
    assert env and all(key.startswith("STREAMER_") for key in env)
    for key in [k for k in os.environ if k.startswith("STREAMER_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = config.load_settings(used(DEPLOY / "k8s" / "base" / "config.toml"))
    assert settings.kafka.bootstrap_servers == env["STREAMER_KAFKA__BOOTSTRAP_SERVERS"].split(",")
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_plain_password.get_secret_value() == "change-me"


# --- the sandbox, re-created without systemd ---------------------------------------------------------------

def syscall_group(systemd_analyze: str, group: str) -> set[str]:
    """The syscalls of a SystemCallFilter= group, nested groups expanded, as systemd-analyze lists them."""
    out = run([systemd_analyze, "syscall-filter", group]).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        names |= syscall_group(systemd_analyze, entry) if entry.startswith("@") else {entry}
    return names


def allowed_syscalls(systemd_analyze: str) -> set[str]:
    """SystemCallFilter= semantics: the first (allow-list) assignment, minus every later ~ assignment."""
    values = service()["SystemCallFilter"]
    assert not values[0].startswith("~"), "the unit is expected to use an allow-list"
    allowed: set[str] = set()
    for value in values:
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.lstrip("~").split():
            item = item.split(":")[0]
            names |= syscall_group(systemd_analyze, item) if item.startswith("@") else {item}
        allowed = allowed - names if deny else allowed | names
    return allowed


def sandbox_prereqs() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip(f"seccomp is Linux only (this is {sys.platform}): the unit's sandbox cannot be re-created here")
    if ctypes.util.find_library("seccomp") is None:
        message = "libseccomp is not installed (Debian libseccomp2, a dependency of systemd: make system-deps)"
        if IN_CI:
            pytest.fail(message + "; CI=true, and CI installs systemd", pytrace=False)
        pytest.skip(message)
    for module in ("numpy", "numba", "prometheus_client", "orjson"):  # the workload's imports: the daemon's
        require(module)


PR_GET_MDWE = 66


def kernel_has_mdwe() -> bool:
    """Linux >= 6.3 has PR_SET_MDWE; older kernels answer EINVAL to PR_GET_MDWE."""
    return ctypes.CDLL(None, use_errno=True).prctl(PR_GET_MDWE, 0, 0, 0, 0) >= 0


def run_sandboxed(args: list[str], workload_args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    cmd = [sys.executable, str(HERE / "sandbox_emulation.py"), *args, "--",
           sys.executable, str(HERE / "sandbox_workload.py"), *workload_args]
    env = dict(os.environ, STATE_DIR=str(state), OMP_NUM_THREADS="2")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def test_the_daemon_workload_runs_under_the_units_syscall_and_socket_filters(
        systemd_analyze: str, tmp_path: Path) -> None:
    sandbox_prereqs()
    allow = tmp_path / "allow.txt"
    allow.write_text("\n".join(sorted(allowed_syscalls(systemd_analyze))) + "\n")
    args = ["--syscall-allow", str(allow), "--address-families", *last("RestrictAddressFamilies").split()]
    if last("MemoryDenyWriteExecute") == "yes":
        args.append("--mdwe")
    proc = run_sandboxed(args, [], tmp_path)
    # SIGSYS (-31) would name a syscall the unit forbids but the workload needs.
    assert proc.returncode == 0 and "WORKLOAD OK" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)


def test_the_emulated_syscall_filter_does_bite(systemd_analyze: str, tmp_path: Path) -> None:
    # Without @network-io the workload's first socket() is fatal: proof that the emulation is in force.
    sandbox_prereqs()
    allow = tmp_path / "allow.txt"
    allowed = allowed_syscalls(systemd_analyze) - syscall_group(systemd_analyze, "@network-io")
    allow.write_text("\n".join(sorted(allowed)) + "\n")
    proc = run_sandboxed(["--syscall-allow", str(allow)], [], tmp_path)
    assert proc.returncode == -31, (proc.returncode, proc.stderr[-2000:])  # SIGSYS


def test_memory_deny_write_execute_is_off_because_the_jit_compilers_need_wx_memory(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute=yes forbids making writable memory executable. The detector's kernel is
    compiled by numba (LLVM) at start-up, so the daemon cannot run under it; keep it off. systemd enforces it
    with PR_SET_MDWE where the kernel has it (Linux >= 6.3) and with a seccomp filter everywhere: both are
    emulated (the first where the kernel has it)."""
    sandbox_prereqs()
    assert last("MemoryDenyWriteExecute") != "yes"
    for mechanism in ["--mdwe-seccomp"] + (["--mdwe"] if kernel_has_mdwe() else []):
        proc = run_sandboxed([mechanism], [], tmp_path)
        assert proc.returncode != 0 and "cannot allocate executable memory" in proc.stderr, \
            (mechanism, proc.stderr[-2000:])
        # Precompiled numpy code (no numba imported) does run under the emulation: the failure is the JIT's,
        # not the sandbox's.
        probe = run_sandboxed([mechanism], ["--mdwe-probe"], tmp_path)
        assert "WORKLOAD OK" in probe.stdout, (mechanism, probe.stderr[-2000:])
