"""Shared fixtures: a real Tansu broker for the whole session, and helpers to run the daemon against it."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.broker import LocalBroker, create_topic
from streamer.config import Settings, load_settings
from streamer.model import Forecaster

# The detector's kernel compiled once for the whole run, not in every daemon the tests start (~3 s each);
# numba checks the cached code against the source file, so an edit recompiles it.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))
NAB = Path(__file__).resolve().parents[2] / "shared" / "nab"
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 20000}


def _have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# Client backends (kafka.client) the daemon's broker tests run with; confluent-kafka is an optional extra.
CLIENTS = ["kafka-python", pytest.param("confluent-kafka", marks=pytest.mark.skipif(
    not _have_confluent(), reason="confluent-kafka not installed (pip install '.[confluent]')"))]


@pytest.fixture(params=CLIENTS)
def client(request) -> str:
    """The value of kafka.client: tests taking this fixture run once per client backend."""
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


def daemon_settings(bootstrap: str, topics: list[str], **kafka) -> Settings:
    settings = load_settings(None)
    k = settings.kafka.model_copy(update={
        "bootstrap_servers": [bootstrap], "topics": topics, "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "consumer": FAST_GROUP, **kafka})
    m = settings.metrics.model_copy(update={"port": 0})
    return settings.model_copy(update={"kafka": k, "metrics": m})


class RunningDaemon:
    """A Daemon on its own thread; `wait_scored` blocks until it has scored n messages."""

    def __init__(self, settings: Settings, model: Forecaster):
        from streamer.daemon import Daemon

        self.daemon = Daemon(settings, model=model)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def __enter__(self) -> RunningDaemon:
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.daemon.http is None and time.monotonic() < deadline:
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
