"""streamer.daemon.systemd against a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.daemon import systemd


class NotifyListener:
    """The receiving end of NOTIFY_SOCKET, as systemd binds it."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value  # what systemd would put in $NOTIFY_SOCKET

    def received(self) -> list[str]:
        """Every datagram sent so far, without blocking."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    path = tmp_path / "notify"
    short_dir = None
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        short_dir = tempfile.mkdtemp(prefix="sd")
        path = Path(short_dir) / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield NotifyListener(sock, str(path))
    finally:
        sock.close()
        if short_dir:
            shutil.rmtree(short_dir)


@pytest.fixture
def no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


def test_everything_is_a_noop_without_notify_socket(no_socket: None) -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready("up") is False
    assert systemd.status("x") is False
    assert systemd.stopping() is False
    dog = systemd.Watchdog(env={"WATCHDOG_USEC": "30000000"})
    assert not dog.enabled
    assert dog.maybe_ping(0.0, healthy=True) is False


def test_ready_status_and_stopping_reach_the_socket(listener: NotifyListener) -> None:
    assert systemd.ready("consuming 3 partitions") is True
    assert systemd.status("lag 12 messages") is True
    assert systemd.stopping() is True
    assert listener.received() == [
        "READY=1\nSTATUS=consuming 3 partitions",
        "STATUS=lag 12 messages",
        "STOPPING=1",
    ]


def test_ready_without_status_and_multiline_status_is_one_assignment(listener: NotifyListener) -> None:
    systemd.ready()
    systemd.status("line one\nWATCHDOG=1")  # must not smuggle a second assignment
    assert listener.received() == ["READY=1", "STATUS=line one WATCHDOG=1"]


def test_watchdog_pings_at_half_watchdog_usec_with_a_fake_clock(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # WatchdogSec=30
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    dog = systemd.Watchdog()
    assert dog.enabled and dog.interval == pytest.approx(15.0)

    systemd.ready("up")
    sent = [now for now in (1000.0, 1001.0, 1014.9, 1015.0, 1020.0, 1029.99, 1030.0, 1060.0)
            if dog.maybe_ping(now, healthy=True)]
    assert sent == [1000.0, 1015.0, 1030.0, 1060.0]
    assert listener.received() == ["READY=1\nSTATUS=up"] + ["WATCHDOG=1"] * 4


def test_no_pings_while_unhealthy(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")  # interval 1 s
    dog = systemd.Watchdog()
    assert dog.maybe_ping(0.0, healthy=True)
    for now in (1.0, 2.0, 5.0, 10.0):
        assert dog.maybe_ping(now, healthy=False) is False
    assert listener.received() == ["WATCHDOG=1"]
    # Healthy again: the overdue ping goes out at once.
    assert dog.maybe_ping(10.5, healthy=True)
    assert listener.received() == ["WATCHDOG=1"]


def test_watchdog_pid_of_another_process_disables_the_watchdog(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    dog = systemd.Watchdog()
    assert not dog.enabled
    assert not any(dog.maybe_ping(t, healthy=True) for t in (0.0, 100.0, 200.0))
    assert listener.received() == []
    # The same environment with our own pid enables it.
    assert systemd.Watchdog(pid=os.getpid() + 1).enabled


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc"])
def test_invalid_watchdog_usec_disables(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch,
                                        usec: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    assert systemd.watchdog_interval() is None
    assert not systemd.Watchdog().enabled


def test_abstract_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"streamer-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "10000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        assert systemd.ready("abstract") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"
        assert systemd.Watchdog().maybe_ping(5.0, healthy=True) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_unreachable_socket_returns_false_and_the_watchdog_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.ready("x") is False  # no exception
    dog = systemd.Watchdog()
    assert dog.maybe_ping(0.0, healthy=True) is False
    # Once systemd's socket is back, the very next iteration pings (no interval wait after a failure).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "gone"))
        assert dog.maybe_ping(0.1, healthy=True) is True
        assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234"])
def test_unsupported_socket_forms_are_ignored(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert systemd.notify("READY=1") is False
