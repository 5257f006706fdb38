"""`streamer replay`: daemon wire format, keyed by stream, paced by the recorded timestamps.

Pacing is checked on a virtual clock that stands for the `time` module inside streamer.offline.replay (sleep advances
it), so the moment each message is sent is exact whatever the machine's speed; the messages themselves go to
the real broker.
"""

from __future__ import annotations

import orjson
import pytest

import streamer.offline.replay
from streamer.cli import main
from tests.integration.kafka_helpers import read_records

ROWS = "timestamp,value\n" + "".join(f"2024-01-01 00:{m:02d}:00,{m * 1.5}\n" for m in range(0, 10))


class VirtualClock:
    """monotonic() and sleep() of streamer.offline.replay: sleep(d) advances the clock by exactly d."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> tuple[VirtualClock, list[float]]:
    """The virtual clock, and the clock's reading at each message replay sends (to the real producer)."""
    virtual, sent_at = VirtualClock(), []
    make_producer = streamer.offline.replay.make_producer

    def recording_producer(settings):
        producer = make_producer(settings)
        send = producer.send

        def timed_send(*args, **kwargs):
            sent_at.append(virtual.now)
            return send(*args, **kwargs)

        producer.send = timed_send
        return producer

    monkeypatch.setattr(streamer.offline.replay, "time", virtual)
    monkeypatch.setattr(streamer.offline.replay, "make_producer", recording_producer)
    return virtual, sent_at


def test_replay_paces_filters_and_keys(broker, topic, tmp_path, capsys, clock):
    virtual, sent_at = clock
    path = tmp_path / "machine.csv"
    path.write_text(ROWS)
    started = virtual.now
    code = main(["replay", str(path), "--topic", topic, "--bootstrap-servers", broker.bootstrap, "--speed", "120",
                 "--start", "2024-01-01T00:02:00", "--end", "2024-01-01T00:07:00"])
    assert code == 0
    assert "produced 6 messages" in capsys.readouterr().out
    # minutes 2..7 at 120x: one message every 0.5 s from the first, none early and none late
    assert [t - started for t in sent_at] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert sum(virtual.sleeps) == pytest.approx(2.5)

    messages = read_records(broker.bootstrap, topic, 3)  # all the topic holds
    assert len(messages) == 6 and {m.key for m in messages} == {b"machine"}
    assert len({m.partition for m in messages}) == 1  # one stream, one partition, in order
    decoded = [orjson.loads(m.value) for m in sorted(messages, key=lambda m: m.offset)]
    assert [d["value"] for d in decoded] == [m * 1.5 for m in range(2, 8)]
    assert all(set(d) == {"stream", "ts", "value"} for d in decoded)


def test_replay_names_a_bad_row_or_skips_it(broker, topic, tmp_path, capsys, clock):
    virtual, sent_at = clock
    path = tmp_path / "bad.csv"
    path.write_text(ROWS + "2024-01-01 00:11:00,oops\n2024-01-01 00:12:00,\n")
    assert main(["replay", str(path), "--topic", topic, "--bootstrap-servers", broker.bootstrap]) == 2
    assert "bad.csv:12" in capsys.readouterr().err
    path.write_text(ROWS + "2024-01-01 00:11:00,bad-timestamp-below\nnot-a-time,3\n")
    sent_at.clear()
    assert main(["replay", str(path), "--topic", topic + "-skip", "--bootstrap-servers", broker.bootstrap,
                 "--skip-invalid"]) == 0
    assert "produced 10 messages" in capsys.readouterr().out
    assert virtual.sleeps == [] and len(sent_at) == 10  # no --speed: as fast as the producer goes
