"""A tiny, dependency-free client for systemd's notification protocol (``sd_notify(3)``).

The unit in ``deploy/systemd/streamer.service`` runs the daemon with ``Type=notify``, ``NotifyAccess=main``
and ``WatchdogSec=30``. systemd then passes two things in the environment:

* ``NOTIFY_SOCKET``: a unix datagram socket, either a path (``/run/systemd/notify``) or an abstract
  socket written with a leading ``@``. Every message is one datagram of newline-separated
  ``KEY=value`` assignments.
* ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the watchdog timeout. If no ``WATCHDOG=1`` arrives within it,
  systemd kills the service (SIGABRT) and ``Restart=on-failure`` starts a new one.

Everything here is a no-op that returns ``False`` when ``NOTIFY_SOCKET`` is unset (a terminal, a
container, tests), and a failed send never raises: the service manager being gone must not take the
daemon down with it.

Usage in the run loop::

    watchdog = Watchdog()
    ready("consuming ticks")                       # once the consumer and metrics server are up
    while running:
        ...process one batch...
        watchdog.maybe_ping(time.monotonic(), healthy=not loop_stuck)
    stopping()
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Watchdog", "notify", "ready", "status", "stopping", "watchdog_interval"]


def _address(env: Mapping[str, str]) -> str | None:
    """The address to send to, or None. ``@name`` is the abstract namespace (a leading NUL byte)."""
    path = env.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # unset, empty, or a form we do not speak (e.g. systemd 254+'s "vsock:")


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager; True if a datagram was sent."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram: STATUS= must stay a single line.
    return " ".join(text.splitlines())


def ready(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd that start-up finished (``Type=notify`` waits for this), with an optional status."""
    state = "READY=1"
    if status_text:
        state += "\nSTATUS=" + _one_line(status_text)
    return notify(state, env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Set the free-form status line shown by ``systemctl status streamer``."""
    return notify("STATUS=" + _one_line(text), env=env)


def stopping(*, env: Mapping[str, str] | None = None) -> bool:
    """Tell systemd that a clean shutdown began (sent on SIGTERM before the final commit)."""
    return notify("STOPPING=1", env=env)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises).

    None when the watchdog is not enabled for this process: ``WATCHDOG_USEC`` unset or not a positive
    integer, or ``WATCHDOG_PID`` set to another process (the variables leaked to a child).
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2


class Watchdog:
    """Rate-limits ``WATCHDOG=1`` pings; the run loop calls :meth:`maybe_ping` on every iteration.

    A ping goes out at most once per :attr:`interval` and only while the loop reports itself healthy,
    so a loop that is stuck (or that declares itself unhealthy) stops pinging and systemd restarts the
    service after ``WatchdogSec``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        send: Callable[[str], bool] | None = None,
    ) -> None:
        env = dict(os.environ if env is None else env)
        self.interval: float | None = watchdog_interval(env, pid)
        if _address(env) is None:
            self.interval = None  # nowhere to send to
        self._send = send if send is not None else (lambda state: notify(state, env=env))
        self._last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def maybe_ping(self, now: float | None, healthy: bool) -> bool:
        """Send ``WATCHDOG=1`` if enabled, ``healthy`` and the interval since the last ping has passed.

        ``now`` is a monotonic time in seconds (``time.monotonic()`` when None). Returns True if a ping
        was sent.
        """
        if self.interval is None or not healthy:
            return False
        if now is None:
            now = time.monotonic()
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        if not self._send("WATCHDOG=1"):
            return False  # try again on the next iteration rather than waiting a whole interval
        self._last_ping = now
        return True
