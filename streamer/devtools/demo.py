"""`streamer demo`: the whole product on one machine, with nothing installed beyond the package.

Starts a throwaway Tansu broker, replays the bundled recorded stream into a topic, runs the daemon on it
(scores on http://127.0.0.1:9108/metrics while it runs), reads the score records back and prints which
streams were most anomalous. Everything it started is stopped before it returns.
"""

from __future__ import annotations

import importlib.resources
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
from kafka import KafkaConsumer, TopicPartition

from streamer.config import Settings
from streamer.daemon.loop import Daemon
from streamer.devtools.broker import LocalBroker, create_topic
from streamer.offline.replay import replay

TOPIC, SCORES = "ticks", "scores"
PARTITIONS = 4
ALERT_THRESHOLD = 0.30  # the best NAB threshold of the bundled model (`streamer evaluate`), as in the alert rules
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
        _summary(broker.bootstrap, daemon, labelled=input_path is None)
    return 0 if daemon.scored >= report.produced else 1


def _summary(bootstrap: str, daemon: Daemon, labelled: bool, threshold: float = ALERT_THRESHOLD) -> None:
    """Per stream: alarms (score >= threshold), the first one, the kinds of evidence behind them, and the peak,
    from the score records.

    For the bundled recording the injected anomalies are known (``streamer.devtools.synth.demo_series``), so each
    stream's row says where its anomaly was: a reader can see the hits and the false alarms.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    parts = [TopicPartition(SCORES, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    alarms: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, Counter] = defaultdict(Counter)
    peak: dict[str, float] = defaultdict(float)
    records = 0
    for message in consumer:
        rec = orjson.loads(message.value)
        records += 1
        peak[rec["stream"]] = max(peak[rec["stream"]], rec["anomaly_score"])
        if rec["anomaly_score"] >= threshold:
            alarms[rec["stream"]].append(rec["ts"])
            kinds[rec["stream"]][rec.get("evidence", "-")] += 1
    consumer.close()
    truth = {}
    if labelled:
        from streamer.devtools.synth import demo_series

        truth = {s.name: ", ".join(f"{w['kind']} {_clock(w['start'])}-{_clock(w['end'])}" for w in s.windows())
                 for s in demo_series()}
    resets = {r: int(daemon.metrics.registry.get_sample_value("streamer_state_resets_total", {"reason": r}) or 0)
              for r in ("explicit", "segment", "session", "gap")}
    print(f"\nsummary: {records} score records, {len(peak)} streams, resets {resets}")
    print(f"alarms = ticks scoring >= {threshold} (the threshold `streamer evaluate` recommends)\n")
    header = f"{'stream':<40} {'peak':>5} {'alarms':>6}  {'first alarm':<11}  {'evidence':<22}"
    print(header + ("  injected anomaly" if labelled else ""))
    for stream in sorted(peak, key=lambda name: (-len(alarms[name]), name)):
        first = _clock(alarms[stream][0]) if alarms[stream] else "-"
        why = ", ".join(f"{kind} {n}" for kind, n in kinds[stream].most_common()) or "-"
        line = f"{stream:<40} {peak[stream]:>5.2f} {len(alarms[stream]):>6}  {first:<11}  {why:<22}"
        print(line + (f"  {truth.get(stream) or '-'}" if labelled else ""))


def _clock(ts: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(ts))
