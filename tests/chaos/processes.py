"""Daemons as real processes (so they can be killed), configured through the environment only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streamer.devtools.broker import free_port, stop_process
from tests.conftest import FAST_GROUP


class DaemonProcess:
    def __init__(self, bootstrap: str, topic: str, group: str, workdir: Path, **settings: str):
        self.port = free_port()
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")},
                    "STREAMER_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "STREAMER_KAFKA__TOPICS": json.dumps([topic]),
                    "STREAMER_KAFKA__GROUP_ID": group, "STREAMER_KAFKA__CONSUMER": json.dumps(FAST_GROUP),
                    "STREAMER_METRICS__PORT": str(self.port), "STREAMER_LOG__LEVEL": "INFO", **settings}
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "streamer", "run"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_up(self, timeout: float = 60) -> DaemonProcess:
        """Until the metrics endpoint answers (the consumer exists and has subscribed)."""
        self.wait_metric("streamer_build_info", lambda v: v == 1, timeout=timeout)
        return self

    def metric(self, name: str, **labels: str) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return None

    def wait_metric(self, name: str, predicate, timeout: float = 60, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.metric(name, **labels)
            if value is not None and predicate(value):
                return value
            assert self.proc.poll() is None, f"daemon exited: {self.log_path.read_text()[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} did not satisfy the condition within {timeout}s "
                             f"(last {self.metric(name, **labels)})\n{self.log_path.read_text()[-3000:]}")

    def log_records(self) -> list[dict]:
        """The daemon's JSON log records so far, oldest first (a line still being written is left out)."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def owned(self) -> set[str]:
        """The partitions ("topic/partition") it owns now, as its "partitions assigned/revoked/lost" log records
        tell (whole assignments or increments alike)."""
        owned: set[str] = set()
        for record in self.log_records():
            if record.get("msg") == "partitions assigned":
                owned |= set(record["partitions"])
            elif record.get("msg") in ("partitions revoked", "partitions lost"):
                owned -= set(record["partitions"])
        return owned

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)


# --- helpers of the outage, flood, hostile-input and checkpoint-store tests (appended; nothing above changed) ---


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH; 503 and other errors are answers, not exceptions."""
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``: peak resident set)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until(condition, what: str, timeout: float = 120, alive: tuple[DaemonProcess, ...] = ()):
    """Poll ``condition`` until it returns something truthy, and return that; fail after ``timeout`` seconds
    (a generous bound, not a timing assumption) or as soon as one of the ``alive`` daemons has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for daemon in alive:
            assert daemon.proc.poll() is None, f"daemon exited: {daemon.log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.1)


def stop_all(*daemons: DaemonProcess) -> None:
    """Kill every daemon that is still running (test clean-up; a clean stop is asserted by the test itself)."""
    for daemon in daemons:
        if daemon is not None and daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


def scores_complete(bootstrap: str, scores_topic: str, partitions: int, total: int, timeout: float) -> list[dict]:
    """Every score record, read again until ``total`` distinct ticks have one (or ``timeout`` passes)."""
    from tests.integration.kafka_helpers import read_all

    deadline = time.monotonic() + timeout
    while True:
        records = read_all(bootstrap, scores_topic, partitions, expected=None)  # what the topic holds now
        if len({(r["stream"], r["ts"]) for r in records}) >= total or time.monotonic() >= deadline:
            return records
        time.sleep(0.5)


def read_raw(bootstrap: str, topic: str, partitions: int, expected: int, timeout_ms: int = 5000) -> list:
    """Every record (kafka-python ConsumerRecord: key, value, headers, offset) of a topic, oldest first per
    partition, up to ``expected``, waiting at most ``timeout_ms`` for them (see kafka_helpers.read_records)."""
    from tests.integration.kafka_helpers import read_records

    return read_records(bootstrap, topic, partitions, expected, max(timeout_ms, 30000),
                        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)


class MotoS3:
    """A local S3 server (moto, ``pip install 'moto[server]'``) in its own process, with one bucket.

    ``env`` holds what Tansu's ``--storage-engine s3://BUCKET/`` needs to reach it: Tansu's S3 client (Rust
    object_store) reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_DEFAULT_REGION, AWS_ENDPOINT, and
    AWS_ALLOW_HTTP=true for a plain-HTTP endpoint.
    """

    def __init__(self, bucket: str, workdir: Path):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"moto-{self.port}.log"
        self.env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_REGION": "us-east-1", "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}
        self.proc: subprocess.Popen | None = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                            aws_secret_access_key="test", region_name="us-east-1")

    def start(self, timeout: float = 30) -> MotoS3:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"moto exited: {self.log_path.read_text()[-2000:]}"
            try:
                self.client().create_bucket(Bucket=self.bucket)
                return self
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.2)

    def object_keys(self) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10)
        self.proc = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
