"""Daemons as real processes (so they can be killed), configured through the environment only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from streamer.broker import free_port
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

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)
