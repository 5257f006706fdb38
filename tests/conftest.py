"""Shared fixtures: a real Tansu broker for the whole session, and helpers to run the daemon against it.

Also `require` and `require_tool`, for what a test needs besides the package: what the project declares (its
own modules, the dev extra that `make test` and CI install) is never a reason to skip, so a missing piece
fails the test; only a system tool on a developer's machine without it (never under CI=true) is a skip, with
the reason in the summary (-ra).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import Settings, load_settings
from streamer.core.model import Forecaster
from streamer.devtools.broker import LocalBroker, create_topic

# The detector's kernel compiled once for the whole run, not in every daemon the tests start (~3 s each);
# numba checks the cached code against the source file, so an edit recompiles it.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))
NAB = Path(__file__).resolve().parents[2] / "shared" / "nab"
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 20000}


# CI sets CI=true (.ci/run: a fresh clone, `make test`, which installs the dev extra and the Debian packages).
IN_CI = os.environ.get("CI", "").strip().lower() not in {"", "0", "false", "no"}
DEV_EXTRA = "pip install -e '.[dev]' (`make test` and CI install it)"


def require(module: str, install: str = DEV_EXTRA) -> ModuleType:
    """``module``, imported; a test that needs it fails if it cannot be imported (it is the project's own, or
    a dependency the project declares: a broken installation, not a reason to skip)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"cannot import {module} ({exc}); install it: {install}", pytrace=False)


def require_tool(name: str, install: str, from_pypi: bool = False, ci_installs: bool = True) -> str:
    """The path of executable ``name``, on PATH or beside the running interpreter (a PyPI package's binary
    lands in the venv's bin/, and `make test` runs .venv/bin/python without activating the venv).

    Missing: the test fails when the tool is always there where tests run (``from_pypi``: the dev extra
    installs it; under CI=true: CI installs it), and is skipped, saying why, only on a machine without the
    system package (a developer without root), or where no registry this project may use has it
    (``ci_installs=False``)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is not None:
        return path
    message = f"{name} is not installed ({install})"
    if from_pypi or (IN_CI and ci_installs):
        pytest.fail(message + ("; CI=true, and CI installs it" if IN_CI else ""), pytrace=False)
    pytest.skip(message)


def require_shared(path: Path) -> Path:
    """A file or folder of ../shared (the benchmark data beside the repository): fails under CI=true, where
    it is always there, and is skipped, saying why, only on a machine without it."""
    if path.exists():
        return path
    message = f"{path} not found (the shared/ folder beside the repository)"
    if IN_CI:
        pytest.fail(message + "; CI=true", pytrace=False)
    pytest.skip(message)


def example_module(path: Path) -> ModuleType:
    """A script of examples/ (not a package) imported by path, for a test to use its functions."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Client backends (kafka.client) the daemon's broker tests run with. confluent-kafka is an optional extra of the
# package, but the dev extra installs it: a test of that backend fails without it instead of skipping.
CLIENTS = ["kafka-python", "confluent-kafka"]


@pytest.fixture(params=CLIENTS)
def client(request) -> str:
    """The value of kafka.client: tests taking this fixture run once per client backend."""
    if request.param == "confluent-kafka":
        require("confluent_kafka", install="pip install -e '.[confluent]' (the dev extra includes it)")
    return request.param


@pytest.fixture(scope="session")
def model() -> Forecaster:
    return Forecaster.load(None)


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with LocalBroker(log_path=log) as running:
        yield running


@pytest.fixture
def topic(broker) -> str:
    """A fresh topic with 3 partitions."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    create_topic(broker.bootstrap, name, partitions=3)
    return name


def daemon_settings(bootstrap: str, topics: list[str], config: Path | None = None, **kafka) -> Settings:
    """The daemon's settings for a test: ``config`` (default: the defaults), this broker and these topics, a
    fresh group, metrics on a free port."""
    settings = load_settings(config)
    k = settings.kafka.model_copy(update={
        "bootstrap_servers": [bootstrap], "topics": topics, "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "consumer": FAST_GROUP, **kafka})
    m = settings.metrics.model_copy(update={"port": 0})
    return settings.model_copy(update={"kafka": k, "metrics": m})


class RunningDaemon:
    """A Daemon on its own thread; `wait_scored` blocks until it has scored n messages."""

    def __init__(self, settings: Settings, model: Forecaster):
        from streamer.daemon.loop import Daemon

        self.daemon = Daemon(settings, model=model)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def __enter__(self) -> RunningDaemon:
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.daemon.http is None:  # the metrics server is the first thing run() starts
            assert self.thread.is_alive(), "the daemon's run() ended before its metrics server started"
            assert time.monotonic() < deadline, "the daemon's metrics server did not start within 60 s"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "daemon did not stop within 15 s"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.http.port}"

    def wait_scored(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.daemon.scored < n:
            assert time.monotonic() < deadline, f"scored {self.daemon.scored} of {n} within {timeout}s"
            time.sleep(0.05)

    def wait_processed(self, n: int, timeout: float = 60) -> None:
        """Until n messages were consumed, whatever their outcome."""
        deadline = time.monotonic() + timeout
        while self.processed() < n:
            assert time.monotonic() < deadline, f"processed {self.processed()} of {n} within {timeout}s"
            time.sleep(0.05)

    def processed(self) -> float:
        reg = self.daemon.registry
        return sum(s.value for f in reg.collect() if f.name == "streamer_messages" for s in f.samples
                   if s.name == "streamer_messages_total")

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """GET /metrics over HTTP: {(sample name, sorted labels): value}."""
        body = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(body) for s in family.samples}


@pytest.fixture
def run_daemon(model):
    def start(settings: Settings) -> RunningDaemon:
        return RunningDaemon(settings, model)

    return start


@pytest.fixture(autouse=True)
def _no_ambient_streamer_env(monkeypatch):
    """Tests build their settings explicitly; a STREAMER_* variable of the shell must not leak in."""
    import os

    for name in [n for n in os.environ if n.startswith("STREAMER_")]:
        monkeypatch.delenv(name)
