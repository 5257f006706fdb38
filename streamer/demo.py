"""`streamer demo`: the whole product on one machine, with nothing installed beyond the package.

Starts a throwaway Tansu broker, replays the bundled recorded stream into a topic, runs the daemon on it
(scores on http://127.0.0.1:9108/metrics while it runs), reads the score records back and prints which
streams were most anomalous. Everything it started is stopped before it returns.
"""

from __future__ import annotations

import importlib.resources
import threading
import time
from collections import defaultdict
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from streamer.broker import LocalBroker, create_topic
from streamer.config import Settings
from streamer.daemon import Daemon
from streamer.replay import replay

TOPIC, SCORES = "ticks", "scores"
PARTITIONS = 4
# Tansu needs short group timeouts, or a group join takes ~23 s (and a stuck rebalance up to 5 min).
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 20000}


def demo_settings(settings: Settings, bootstrap: str) -> Settings:
    kafka = settings.kafka.model_copy(update={
        "bootstrap_servers": [bootstrap], "topics": [TOPIC], "group_id": "streamer-demo",
        "scores_topic": SCORES, "start_from": "earliest", "consumer": {**FAST_GROUP, **settings.kafka.consumer}})
    return settings.model_copy(update={"kafka": kafka})


def run_demo(settings: Settings, speed: float | None, linger: float, input_path: Path | None = None) -> int:
    resource = importlib.resources.files("streamer").joinpath("data", "demo.jsonl.gz")
    with importlib.resources.as_file(resource) as bundled, LocalBroker() as broker:
        path = input_path or bundled
        print(f"broker: Tansu on {broker.bootstrap}")
        create_topic(broker.bootstrap, TOPIC, PARTITIONS)
        create_topic(broker.bootstrap, SCORES, PARTITIONS)
        settings = demo_settings(settings, broker.bootstrap)
        daemon = Daemon(settings)
        thread = threading.Thread(target=daemon.run, name="daemon")
        thread.start()
        try:
            m = settings.metrics
            print(f"daemon: scores at http://{m.host}:{m.port}/metrics (streamer_anomaly_score)")
            report = replay(path, TOPIC, settings, speed=speed)
            deadline = time.monotonic() + 60
            while daemon.scored < report.produced and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.2)
            print(f"daemon scored {daemon.scored} of {report.produced} ticks; /metrics stays up {linger:.0f}s")
            time.sleep(linger)
        finally:
            daemon.stop()
            thread.join(15)
        _summary(broker.bootstrap, daemon)
    return 0 if daemon.scored >= report.produced else 1


def _summary(bootstrap: str, daemon: Daemon, top: int = 8) -> None:
    """Peak score per stream, read back from the score records the daemon produced."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    parts = [TopicPartition(SCORES, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    peak: dict[str, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))
    records = 0
    for message in consumer:
        rec = orjson.loads(message.value)
        records += 1
        if rec["anomaly_score"] > peak[rec["stream"]][0]:
            peak[rec["stream"]] = (rec["anomaly_score"], rec["ts"])
    consumer.close()
    m = daemon.metrics
    resets = {r: int(m.registry.get_sample_value("streamer_state_resets_total", {"reason": r}) or 0)
              for r in ("explicit", "segment", "session", "gap")}
    print(f"\nsummary: {records} score records, {len(peak)} streams, resets {resets}")
    print(f"{'stream':<28} {'peak score':>10}  at")
    for stream, (score, ts) in sorted(peak.items(), key=lambda kv: -kv[1][0])[:top]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))
        print(f"{stream:<28} {score:>10.3f}  {when}")
