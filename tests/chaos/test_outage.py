"""Broker outage: the broker process stops for 30 s while a daemon process is consuming, then comes back.

Tansu keeps topics, records and group offsets across a restart only with object storage, so the broker runs
with ``--storage-engine s3://BUCKET/`` against a local S3 server (moto, ``pip install 'moto[server]'``):
Tansu's S3 client reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT and
AWS_ALLOW_HTTP=true (see `tests.chaos.processes.MotoS3`). The restarted broker is a new process on the same
port and the same bucket.

Checked while the broker is down: the daemon process keeps running, answers /metrics every time, /healthz
stays 200 (the loop is alive: an orchestrator must not restart pods for a broker outage), and within about
the session timeout reports ``streamer_ready 0`` and /readyz 503, and stays not-ready until the broker is
back. After the restart: ready again, the rest of the recording is consumed, and every tick of the recording
has a score record equal to the offline score (duplicates allowed: at-least-once outputs).

`test_hung_broker_mid_batch` is the other kind of outage: the broker process is frozen (SIGSTOP, what a
network partition or a hung broker looks like to a client: no answer, no reset) while the daemon works
through a backlog with score records in flight, then resumed (SIGCONT) 30 s later. Same checks.
"""

from __future__ import annotations

import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.config import load_settings
from streamer.devtools.broker import LocalBroker, create_topic, free_port
from streamer.offline.replay import replay
from streamer.offline.score import score_file
from tests.chaos.processes import DaemonProcess, MotoS3, http_get, scores_complete, stop_all
from tests.chaos.test_crash_and_rebalance import check_against_offline
from tests.conftest import FAST_GROUP, daemon_settings, require
from tests.integration.test_equivalence import write_recording

OUTAGE_SECONDS = 30.0
SESSION_SECONDS = FAST_GROUP["session_timeout_ms"] / 1000
STREAMS, LENGTH, T0 = 30, 320, 1_760_000_000  # write_recording: ts = T0 + 60 * i + stream
SPLIT = 200  # ticks 0..199 of each stream before the outage (warm-up is 150), the rest after it


def _sample(body: bytes, name: str) -> float | None:
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


@pytest.mark.slow
def test_broker_outage_with_persistent_storage(tmp_path, model, client):
    require("moto.server", install="pip install -e '.[dev]' (moto[server]: Tansu's S3 storage for this test)")
    require("boto3", install="pip install -e '.[dev]' (moto[server] brings it)")
    recording = tmp_path / "recording.jsonl.gz"
    total = write_recording(recording, streams=STREAMS, length=LENGTH, seed=5)
    offline, _ = score_file(recording, load_settings(None), model)
    assert sum(row.score > 0 for row in offline) > total // 1000  # past the warm-up: the comparison means something
    middle = T0 + 60 * SPLIT - 1  # ticks up to here before the outage, the rest after it
    first_half = STREAMS * SPLIT

    s3 = MotoS3(f"tansu-{uuid.uuid4().hex[:8]}", tmp_path).start()
    port = free_port()
    broker = LocalBroker(port=port, storage=f"s3://{s3.bucket}/", env=s3.env, log_path=tmp_path / "tansu.log")
    daemon = None
    try:
        broker.start()
        topic = "outage"
        create_topic(broker.bootstrap, topic, 3)
        create_topic(broker.bootstrap, topic + "-scores", 3)
        produce_settings = daemon_settings(broker.bootstrap, [topic])
        assert replay(recording, topic, produce_settings, end=middle, progress=False).produced == first_half

        daemon = DaemonProcess(broker.bootstrap, topic, "outage", tmp_path,
                               STREAMER_KAFKA__CLIENT=client, STREAMER_KAFKA__SCORES_TOPIC=topic + "-scores",
                               STREAMER_KAFKA__MAX_POLL_RECORDS="300",
                               STREAMER_CHECKPOINT__PATH=str(tmp_path / "state"),
                               STREAMER_CHECKPOINT__INTERVAL_MESSAGES="1000").start()
        daemon.wait_metric("streamer_messages_total", lambda v: v >= first_half, timeout=90, outcome="scored")
        daemon.wait_metric("streamer_ready", lambda v: v == 1)
        assert any(key.startswith("clusters/") and f"/topics/{topic}/" in key for key in s3.object_keys()), \
            "Tansu wrote nothing to S3"

        # --- the outage ----------------------------------------------------------------------------------
        broker.stop()
        not_ready_after, scrapes = _watch_outage(daemon, OUTAGE_SECONDS, loop_alive=True)

        # --- back ----------------------------------------------------------------------------------------
        broker = LocalBroker(port=port, storage=f"s3://{s3.bucket}/", env=s3.env,
                             log_path=tmp_path / "tansu.log").start()
        back = time.monotonic()
        produced = replay(recording, topic, produce_settings, start=middle + 0.5, progress=False).produced
        assert produced == total - first_half
        # kafka-python backs off reconnecting up to reconnect_backoff_max_ms (30 s by default), so noticing the
        # broker is back can take about as long as the outage lasted; the daemon stays live meanwhile.
        while True:
            assert daemon.proc.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
            status, body = http_get(daemon.port, "/metrics")
            assert status == 200 and http_get(daemon.port, "/healthz")[0] == 200
            if _sample(body, "streamer_ready") == 1 and http_get(daemon.port, "/readyz")[0] == 200:
                break
            assert time.monotonic() - back < 90, "not ready within 90 s of the broker's restart"
            time.sleep(0.5)
        ready_after = time.monotonic() - back
        duplicates = _all_scored_then_stop(daemon, broker, topic, total, offline)
        print(f"outage: {total} ticks ({first_half} before, {total - first_half} after), {scrapes} scrapes "
              f"during {OUTAGE_SECONDS:.0f}s down, not ready after {not_ready_after:.1f}s, ready again "
              f"{ready_after:.1f}s after the restart, {duplicates} duplicate score records")
    finally:
        stop_all(daemon)
        broker.stop()
        s3.stop()


def _watch_outage(daemon: DaemonProcess, seconds: float, metrics_timeout: float = 5.0,
                  loop_alive: bool = False) -> tuple[float, int]:
    """For ``seconds``: the daemon must live and answer /metrics (within ``metrics_timeout``) every time
    (``loop_alive``: /healthz too), report not-ready (``streamer_ready 0`` and /readyz 503) within the session
    timeout and then stay so. Returns (not ready after, scrapes)."""
    down = time.monotonic()
    not_ready_after, scrapes = None, 0
    while time.monotonic() - down < seconds:
        assert daemon.proc.poll() is None, f"daemon exited during the outage: {daemon.log_path.read_text()[-3000:]}"
        asked = time.monotonic()
        try:
            status, body = http_get(daemon.port, "/metrics", timeout=metrics_timeout)
        except TimeoutError:
            raise AssertionError(f"/metrics did not answer within {metrics_timeout:.0f}s, "
                                 f"{asked - down:.1f}s into the outage") from None
        assert status == 200, f"/metrics answered {status} during the outage"
        scrapes += 1
        ready = _sample(body, "streamer_ready")
        readyz = http_get(daemon.port, "/readyz")[0]
        if loop_alive:
            assert http_get(daemon.port, "/healthz")[0] == 200, "loop stalled during the outage"
        if not_ready_after is None:
            if ready == 0 and readyz == 503:
                not_ready_after = time.monotonic() - down
        else:  # once not ready, not ready until the broker is back
            assert ready == 0 and readyz == 503, f"ready again after {time.monotonic() - down:.1f}s of outage"
        time.sleep(0.5)
    assert not_ready_after is not None, f"still ready after {seconds:.0f}s of outage"
    assert not_ready_after <= SESSION_SECONDS + 5, f"not ready only after {not_ready_after:.1f}s"
    return not_ready_after, scrapes


def _all_scored_then_stop(daemon: DaemonProcess, broker, topic: str, total: int, offline) -> int:
    """Every tick's score record arrives and equals the offline one; the daemon, alive, stops cleanly.
    Returns the number of duplicate score records (re-scored after the outage: at-least-once)."""
    records = scores_complete(broker.bootstrap, topic + "-scores", 3, total, timeout=120)
    duplicates = check_against_offline(records, offline)
    assert daemon.proc.poll() is None, "the daemon exited"
    assert daemon.terminate() == 0
    return duplicates


@pytest.mark.slow
def test_hung_broker_mid_batch(tmp_path, model, client):
    import os
    import signal

    recording = tmp_path / "recording.jsonl.gz"
    total = write_recording(recording, streams=100, length=400, seed=6)
    offline, _ = score_file(recording, load_settings(None), model)
    assert sum(row.score > 0 for row in offline) > total // 1000
    daemon = None
    with LocalBroker(log_path=tmp_path / "tansu.log") as broker:
        frozen = False
        try:
            topic = "hung"
            create_topic(broker.bootstrap, topic, 3)
            create_topic(broker.bootstrap, topic + "-scores", 3)
            daemon = DaemonProcess(broker.bootstrap, topic, "hung", tmp_path,
                                   STREAMER_KAFKA__CLIENT=client, STREAMER_KAFKA__SCORES_TOPIC=topic + "-scores",
                                   STREAMER_CHECKPOINT__PATH=str(tmp_path / "state")).start()
            daemon.wait_metric("streamer_ready", lambda v: v == 1, timeout=90)
            produced = replay(recording, topic, daemon_settings(broker.bootstrap, [topic]), progress=False).produced
            assert produced == total
            scored = daemon.wait_metric("streamer_messages_total", lambda v: v >= total // 8, timeout=60,
                                        outcome="scored")
            os.kill(broker._process.pid, signal.SIGSTOP)  # mid-backlog: fetched records and score records in flight
            frozen = True
            assert scored < total, "the backlog was gone before the broker froze"
            not_ready_after, scrapes = _watch_outage(daemon, OUTAGE_SECONDS)

            os.kill(broker._process.pid, signal.SIGCONT)
            frozen = False
            back = time.monotonic()
            daemon.wait_metric("streamer_ready", lambda v: v == 1, timeout=90)
            ready_after = time.monotonic() - back
            duplicates = _all_scored_then_stop(daemon, broker, topic, total, offline)
            print(f"hung broker: {total} ticks, frozen at {scored:.0f} scored for {OUTAGE_SECONDS:.0f}s, {scrapes} "
                  f"scrapes, not ready after {not_ready_after:.1f}s, ready again {ready_after:.1f}s after SIGCONT, "
                  f"{duplicates} duplicate score records")
        finally:
            if frozen and broker._process is not None:
                os.kill(broker._process.pid, signal.SIGCONT)
            stop_all(daemon)
