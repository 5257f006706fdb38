"""Prometheus metrics and the HTTP endpoint that serves them with the health probes.

Per-stream scores are not kept as one gauge child per stream (that costs a dict lookup per message and
grows without bound). Instead a collector asks the detector, at scrape time, for the ``max_stream_series``
most recently anomalous streams (highest held peak): those carry a ``stream`` label on
``streamer_anomaly_score`` (latest) and ``streamer_anomaly_score_peak`` (held ``peak_hold_seconds``, so an
alarm of one tick is still there at the next scrape); every stream counts towards ``streamer_streams`` and
``streamer_anomaly_score_max``. A stream above an alert threshold therefore always has its series as long
as fewer than ``max_stream_series`` streams are anomalous at once. Devices (the streams of ticks with
``values``, whose channels' scores combine into one, `streamer.core.devices`) get the same treatment under
the same cap: ``streamer_device_score`` and ``streamer_device_score_peak`` with a ``device`` label.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamer import __version__
from streamer.core.detector import RESET_REASONS
from streamer.core.ticks import REASONS as INVALID_REASONS

OUTCOMES = ("scored", "invalid", "out_of_order")


@dataclass(frozen=True)
class ScoreSnapshot:
    top: list[tuple[str, float, float]]  # (stream, latest score, held peak)
    max_peak: float
    streams: int
    devices: list[tuple[str, float, float]] = field(default_factory=list)  # (device, latest score, held peak)


class StreamScoreCollector:
    """Exposes the current top-N stream scores, read from the detector at scrape time."""

    def __init__(self, snapshot: Callable[[], ScoreSnapshot]):
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self._snapshot()
        scores = GaugeMetricFamily("streamer_anomaly_score",
                                   "Latest anomaly score in [0, 1] of the most recently anomalous streams",
                                   labels=["stream"])
        peaks = GaugeMetricFamily("streamer_anomaly_score_peak",
                                  "Highest score of the last detector.peak_hold_seconds (alert on this one)",
                                  labels=["stream"])
        for stream, latest, peak in snap.top:
            scores.add_metric([stream], latest)
            peaks.add_metric([stream], peak)
        yield scores
        yield peaks
        device_scores = GaugeMetricFamily(
            "streamer_device_score", "Latest score in [0, 1] of the most recently anomalous devices (a device's "
            "channels combined, Bonferroni)", labels=["device"])
        device_peaks = GaugeMetricFamily(
            "streamer_device_score_peak", "Highest device score of the last detector.peak_hold_seconds (alert on "
            "this one)", labels=["device"])
        for device, latest, peak in snap.devices:
            device_scores.add_metric([device], latest)
            device_peaks.add_metric([device], peak)
        yield device_scores
        yield device_peaks
        yield GaugeMetricFamily("streamer_anomaly_score_max", "Highest held peak score over all streams",
                                value=snap.max_peak)
        yield GaugeMetricFamily("streamer_streams", "Streams whose state is in memory", value=snap.streams)


class Metrics:
    """Every metric the daemon exposes, registered on an injected registry (tests pass their own)."""

    def __init__(self, registry: CollectorRegistry, model_name: str = "bundled"):
        self.registry = registry
        self.messages = Counter("streamer_messages", "Messages consumed, by outcome",
                                ["topic", "outcome"], registry=registry)
        self.invalid = Counter("streamer_invalid_messages", "Messages rejected as invalid, by reason",
                               ["reason"], registry=registry)
        for reason in INVALID_REASONS:
            self.invalid.labels(reason)
        self.resets = Counter("streamer_state_resets", "Stream state resets, by reason", ["reason"],
                              registry=registry)
        for reason in RESET_REASONS:
            self.resets.labels(reason)
        self.evicted = Counter("streamer_evicted_streams", "Streams evicted to stay under max_streams",
                               registry=registry)
        self.partition_events = Counter("streamer_partition_events", "Partitions assigned, revoked or lost",
                                        ["event"], registry=registry)
        for event in ("assigned", "revoked", "lost"):
            self.partition_events.labels(event)
        self.expired = Counter("streamer_expired_streams", "Streams forgotten after detector.idle_expiry_seconds",
                               registry=registry)
        self.dead_lettered = Counter("streamer_dead_lettered_messages",
                                     "Invalid messages written to the dead-letter topic", registry=registry)
        self.checkpoint_seconds = Histogram("streamer_checkpoint_seconds", "Time to write checkpoints",
                                            buckets=(.005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=registry)
        self.checkpoint_errors = Counter("streamer_checkpoint_errors", "Checkpoints refused (other model, damaged)",
                                         registry=registry)
        self.checkpoint_missing = Counter(
            "streamer_checkpoint_missing", "Partitions assigned with a committed offset but no checkpoint: their "
            "streams started fresh at the committed offset (store wiped or replaced, checkpoint refused)",
            registry=registry)
        self.batch_seconds = Histogram("streamer_batch_seconds", "Time to decode, score and publish one poll",
                                       buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5),
                                       registry=registry)
        self.event_lag = Gauge("streamer_event_lag_seconds",
                               "Wall clock minus the tick timestamp of the last scored message", registry=registry)
        self.consumer_lag = Gauge("streamer_consumer_lag_messages", "Messages behind the partition end",
                                  ["topic", "partition"], registry=registry)
        self.last_scored = Gauge("streamer_last_scored_timestamp_seconds",
                                 "Unix time at which a message was last scored", registry=registry)
        self.ready = Gauge("streamer_ready", "1 when connected with partitions assigned", registry=registry)
        self.build_info = Gauge("streamer_build_info", "Build information", ["version", "model"],
                                registry=registry)
        self.build_info.labels(__version__, model_name).set(1)

    def init_topic(self, topic: str) -> None:
        """Create the topic's outcome series at 0 so rate() and absence alerts work from the start."""
        for outcome in OUTCOMES:
            self.messages.labels(topic, outcome)

    def watch_scores(self, snapshot: Callable[[], ScoreSnapshot]) -> None:
        self.registry.register(StreamScoreCollector(snapshot))


@dataclass
class Health:
    """Liveness (the loop made progress recently) and readiness (connected, partitions assigned)."""

    stall_seconds: float = 60.0
    ready_stall_seconds: float = 5.0
    ready: bool = False
    _beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self._beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stall_seconds

    def is_ready(self) -> bool:
        """Ready, and the loop beat within ``ready_stall_seconds``: a loop blocked on a hung broker is not
        ready long before it counts as stalled (a healthy loop beats at least every poll timeout)."""
        return self.ready and time.monotonic() - self._beat < self.ready_stall_seconds


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on one port from a background thread.

    With ``tls`` (cert, key) it speaks HTTPS; with ``basic_auth`` (user, password) /metrics requires it,
    while the probes stay open: they reveal nothing, and kubelets and load balancers probe without auth.
    """

    def __init__(self, registry: CollectorRegistry, health: Health, host: str, port: int,
                 tls: tuple[Path, Path] | None = None, basic_auth: tuple[str, str] | None = None):
        registry_, health_ = registry, health
        expected = None
        if basic_auth is not None:
            expected = "Basic " + base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    given = self.headers.get("Authorization", "")
                    if expected is not None and not hmac.compare_digest(given.encode(), expected.encode()):
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="streamer"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self._send(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = health_.alive()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
                elif path == "/readyz":
                    ok = health_.is_ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes are not worth a log line each
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
