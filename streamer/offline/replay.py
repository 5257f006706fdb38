"""`streamer replay`: produce a recorded file to Kafka in the daemon's format, at recorded pace or faster.

Records are keyed by stream so that each stream stays in one partition, in order. Inter-arrival times
follow the recorded timestamps divided by ``speed`` (``max``: as fast as the producer goes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from tqdm import tqdm

from streamer.clients.kafka_python import make_producer
from streamer.config import Settings, TickSettings
from streamer.core.ticks import InvalidTick, Record, RecordError, parse_ts, read_records

log = logging.getLogger("streamer.replay")


@dataclass
class ReplayReport:
    produced: int = 0
    skipped_invalid: int = 0
    outside_range: int = 0
    seconds: float = 0.0


def _record_ts(record: Record, fields: TickSettings) -> float:
    return parse_ts(record.obj.get(fields.ts_field), fields.zone)


def replay(path: Path, topic: str, settings: Settings, speed: float | None = None, start: float | None = None,
           end: float | None = None, skip_invalid: bool = False, progress: bool = True) -> ReplayReport:
    """Produce every record of ``path`` to ``topic``; ``speed`` None means as fast as possible."""
    fields = settings.ticks
    report = ReplayReport()
    producer = make_producer(settings.kafka)
    started = time.monotonic()
    first_ts: float | None = None
    unreadable: list[RecordError] | None = [] if skip_invalid else None
    records: Iterable[Record] = read_records(path, fields, skipped=unreadable)
    # disable=None: a bar on a terminal, none in logs (systemd, CI, pipes)
    bar = tqdm(records, desc=f"replay {Path(path).name}", unit="msg", disable=None if progress else True)
    try:
        for record in bar:
            try:
                ts = _record_ts(record, fields)
            except InvalidTick as bad:
                if not skip_invalid:
                    raise RecordError(f"{path}:{record.line}: {bad}") from None
                report.skipped_invalid += 1
                continue
            if (start is not None and ts < start) or (end is not None and ts > end):
                report.outside_range += 1
                continue
            if speed is not None:
                first_ts = ts if first_ts is None else first_ts
                delay = (ts - first_ts) / speed - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            stream = record.obj.get(fields.stream_field)
            key = str(stream).encode() if stream is not None else None
            producer.send(topic, key=key, value=orjson.dumps(record.obj))
            report.produced += 1
        producer.flush()
        report.skipped_invalid += len(unreadable or ())
    finally:
        producer.close()
        bar.close()
    report.seconds = time.monotonic() - started
    return report
