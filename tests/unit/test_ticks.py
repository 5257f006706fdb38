import gzip
import json
import random

import orjson
import pytest

from streamer.config import TickSettings
from streamer.core.ticks import InvalidTick, RecordError, Tick, TickDecoder, parse_ts, read_records

NOW = 1_800_000_000.0


@pytest.fixture
def decoder():
    return TickDecoder(TickSettings(), clock=lambda: NOW)


def test_decodes_scalar_tick_with_iso_timestamp(decoder):
    [tick] = decoder.decode(b'{"stream": "a", "ts": "2024-01-01T00:00:00Z", "value": 1.5, "segment": 3}')
    assert (tick.stream, tick.ts, tick.value, tick.segment, tick.reset) == ("a", 1704067200.0, 1.5, 3, False)


def test_naive_iso_timestamp_is_utc(decoder):
    [tick] = decoder.decode(b'{"stream": "a", "ts": "2014-04-01 00:00:00", "value": 1}')
    assert tick.ts == 1396310400.0


def eastern(**fields) -> TickDecoder:
    return TickDecoder(TickSettings(timezone="America/New_York", **fields), clock=lambda: NOW)


@pytest.mark.parametrize("text, utc", [
    ("2013-10-08 09:30:00", "2013-10-08T13:30:00Z"),  # EDT, UTC-4
    ("2013-12-02 09:30:00.250", "2013-12-02T14:30:00.250Z"),  # EST, UTC-5, milliseconds kept
    ("2013-11-03 01:30:00", "2013-11-03T05:30:00Z"),  # the clocks go back: the first 01:30 (EDT)
])
def test_naive_iso_timestamp_is_read_in_ticks_timezone(text, utc):
    [tick] = eastern().decode(orjson.dumps({"stream": "a", "ts": text, "value": 1}))
    assert tick.ts == parse_ts(utc)


@pytest.mark.parametrize("raw", ["2013-10-08T09:30:00+02:00", "2013-10-08T13:30:00Z", 1381239000, 1381239000.5])
def test_timezone_leaves_offsets_and_epoch_seconds_alone(raw):
    [tick] = eastern().decode(orjson.dumps({"stream": "a", "ts": raw, "value": 1}))
    assert tick.ts == parse_ts(raw)


def test_recorded_csv_and_kafka_messages_agree_on_naive_local_times(tmp_path):
    """The offline commands read files through the same decoder as the daemon's messages."""
    path = tmp_path / "spy.csv"
    path.write_text("stream,ts,value\nSPY,2013-10-08 04:00:00,169.1\nSPY,2013-10-08 09:30:00,168.9\n")
    decoder = eastern()
    from_file = [t.ts for r in read_records(path, decoder.f) for t in decoder.decode_obj(r.obj)]
    messages = [orjson.dumps(r.obj) for r in read_records(path, decoder.f)]
    polled = decoder.decode_batch(messages, lambda m: m, lambda m: None).ticks.ts.tolist()
    assert from_file == polled == [parse_ts("2013-10-08T08:00:00Z"), parse_ts("2013-10-08T13:30:00Z")]


def test_multivariate_tick_splits_into_channel_streams(decoder):
    ticks = decoder.decode(b'{"stream": "pump", "ts": 100, "values": {"temp": 20, "rpm": 900.5}, "reset": true}')
    assert [(t.stream, t.value, t.reset) for t in ticks] == [("pump/temp", 20.0, True), ("pump/rpm", 900.5, True)]
    assert [t.device for t in ticks] == ["pump", "pump"]  # the channels' scores are combined under it
    [plain] = decoder.decode(b'{"stream": "pump/temp", "ts": 100, "value": 20}')
    assert plain.device is None  # a stream named like a channel is still no device's


def test_message_key_is_the_stream_when_field_absent(decoder):
    [tick] = decoder.decode(b'{"ts": 100, "value": 1}', key=b"sensor-7")
    assert tick.stream == "sensor-7"


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "malformed_json"),
    (b"\xff\xfe\x00", "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b'{"ts": 1, "value": 1}', "missing_field"),
    (b'{"stream": "a", "value": 1}', "missing_field"),
    (b'{"stream": "a", "ts": 1}', "missing_field"),
    (b'{"stream": "a", "ts": 1, "value": "1"}', "bad_type"),
    (b'{"stream": "a", "ts": 1, "value": true}', "bad_type"),
    (b'{"stream": 5, "ts": 1, "value": 1}', "bad_type"),
    (b'{"stream": "a", "ts": [1], "value": 1}', "bad_type"),
    (b'{"stream": "a", "ts": 1, "value": 1, "reset": "yes"}', "bad_type"),
    (b'{"stream": "a", "ts": 1, "value": 1, "segment": {"x": 1}}', "bad_type"),
    (b'{"stream": "a", "ts": 1, "values": []}', "bad_type"),
    (b'{"stream": "a", "ts": 1, "value": 1e400}', "non_finite"),
    (b'{"stream": "a", "ts": 1, "value": NaN}', "non_finite"),
    (b'{"stream": "a", "ts": Infinity, "value": 1}', "non_finite"),
    (b"[" * 30000 + b"]" * 30000, "malformed_json"),
    (b'{"stream": "a", "ts": 1, "values": {"x": -1e999}}', "non_finite"),
    (b'{"stream": "a", "ts": "0001-01-01T00:00:00", "value": 1}', "bad_timestamp"),
    (b'{"stream": "a", "ts": "9999-12-31T00:00:00", "value": 1}', "bad_timestamp"),
    (b'{"stream": "a", "ts": 1700000000000, "value": 1}', "bad_timestamp"),  # milliseconds by mistake
    (b'{"stream": "a", "ts": "yesterday", "value": 1}', "bad_timestamp"),
    (b"x" * 70000, "too_large"),
    (None, "not_an_object"),
])
def test_invalid_messages_raise_with_reason(decoder, payload, reason):
    with pytest.raises(InvalidTick) as info:
        decoder.decode(payload)
    assert info.value.reason == reason


def test_encode_roundtrips(decoder):
    payload = decoder.encode("s", 123.5, 7.0, segment="b", reset=True)
    [tick] = decoder.decode(payload)
    assert (tick.stream, tick.ts, tick.value, tick.segment, tick.reset) == ("s", 123.5, 7.0, "b", True)


def test_reads_nab_style_csv_as_one_stream(tmp_path, decoder):
    path = tmp_path / "machine_temp.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,2\n")
    records = list(read_records(path, TickSettings()))
    ticks = [t for r in records for t in decoder.decode_obj(r.obj)]
    assert [r.line for r in records] == [2, 3]
    assert [(t.stream, t.value) for t in ticks] == [("machine_temp", 1.5), ("machine_temp", 2.0)]
    assert ticks[1].ts - ticks[0].ts == 300


def test_reads_multistream_multivariate_csv_and_gzip_jsonl(tmp_path, decoder):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("stream,ts,temp,rpm,segment\np1,100,20,900,a\np2,101,21,901,\n")
    ticks = [t for r in read_records(csv_path, TickSettings()) for t in decoder.decode_obj(r.obj)]
    assert [(t.stream, t.value, t.segment) for t in ticks] == [
        ("p1/temp", 20.0, "a"), ("p1/rpm", 900.0, "a"), ("p2/temp", 21.0, None), ("p2/rpm", 901.0, None)]
    jl = tmp_path / "m.jsonl.gz"
    with gzip.open(jl, "wb") as f:
        f.write(orjson.dumps({"stream": "x", "ts": 5, "value": 1}) + b"\n\n")
        f.write(orjson.dumps({"ts": 6, "value": 2}) + b"\n")
    records = list(read_records(jl, TickSettings()))
    assert [(r.line, r.obj["stream"]) for r in records] == [(1, "x"), (3, "m")]


def test_unreadable_rows_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,oops\n")
    with pytest.raises(RecordError, match=r"bad.csv:3"):
        list(read_records(bad, TickSettings()))
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"stream": "a", "ts": 1, "value": 1}\n{broken\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2"):
        list(read_records(jl, TickSettings()))


@pytest.mark.parametrize("obj", [
    {"stream": "a", "ts": 1767225600, "value": 1.5},
    {"stream": "a", "ts": 1767225600.25, "value": -0.0},
    {"stream": "a", "ts": 1767225600, "value": 3},  # an int value
    {"stream": "é", "ts": 1767225600, "value": 1.5},  # non-ASCII name: decoded message by message
    {"stream": "a", "ts": "2026-01-01T00:00:00Z", "value": 1.5},  # ISO time: decoded message by message
    {"stream": "a", "ts": 1767225600, "value": 1.5, "segment": "x"},
])
def test_a_poll_of_one_decodes_like_the_message(obj):
    decoder = TickDecoder(TickSettings())
    payload = orjson.dumps(obj)
    assert _batch(decoder, [payload]) == _one_by_one(decoder, [payload])
    assert _one_by_one(decoder, [payload])[0] == decoder.decode_obj({**obj, "other": 1})  # other fields: ignored


@pytest.mark.parametrize("obj, reason", [
    ({"stream": "a", "ts": 1767225600, "value": float("nan")}, "non_finite"),
    ({"stream": "a", "ts": float("inf"), "value": 1.0}, "non_finite"),
    ({"stream": "a", "ts": True, "value": 1.0}, "bad_type"),
    ({"stream": "", "ts": 1767225600, "value": 1.0}, "bad_type"),
    ({"stream": "a", "ts": 1e20, "value": 1.0}, "bad_timestamp"),
    ({"stream": "a", "ts": 1767225600, "value": True}, "bad_type"),
])
def test_three_field_ticks_that_are_invalid_get_their_reason(obj, reason):
    decoder = TickDecoder(TickSettings())
    with pytest.raises(InvalidTick) as caught:
        decoder.decode_obj(obj)
    assert caught.value.reason == reason
    payload = json.dumps(obj).encode()  # NaN and Infinity as Python writes them
    assert _batch(decoder, [payload])[2] == [(0, reason)]


# --- decode_batch: a poll in one parse, or message by message, with the same result --------------------

PLAIN = [orjson.dumps({"stream": f"s{i}", "ts": 1767225600 + i, "value": i / 7}) for i in range(5)]
ODD = [  # each valid or invalid in its own way; none may take the one-parse path
    None,  # a tombstone
    b"",
    b"{",
    b'{"stream": "a", "ts": 1767225600, "value": NaN}',
    b'{"stream": "a", "ts": 1767225600, "value": 1e400}',
    b'{"stream": "a", "ts": 1767225600, "value": 1' + b"0" * 400 + b"}",  # an integer beyond float range
    b'{"stream": "a", "ts": 1767225600, "value": true}',
    b'{"stream": "a", "ts": 1e20, "value": 1.0}',
    b'{"stream": "", "ts": 1767225600, "value": 1.0}',
    b'{"stream": "\xc3\xa9", "ts": 1767225600, "value": 1.0}',
    b'{"stream": "\\ud800", "ts": 1767225600, "value": 1.0}',  # a lone surrogate
    b'{"stream": "{a}", "ts": 1767225600, "value": 1.0}',  # braces in a string
    b'{"stream": "a", "ts": "2026-01-01T00:00:00Z", "value": 1.0}',
    b'{"ts": 1767225600, "value": 1.0}',  # stream from the key
    b'{"stream": "m", "ts": 1767225600, "values": {"x": 1.0, "y": 2}}',
    b'{"stream": "a", "ts": 1767225600, "value": 1.0, "segment": "s"}',
    b' {"stream": "a", "ts": 1767225600, "value": 1.0}',
    b'{"stream": "a", "ts": 1767225600, "value": 1.0},{"stream": "b", "ts": 1767225600, "value": 2.0}',
    b'[{"stream": "a", "ts": 1767225600, "value": 1.0}]',
    b'{"a": "}', b'{"}',  # together, one object made of two messages
]


def _one_by_one(decoder, payloads):
    """The reference: `decode` per message, as (ticks, source index, rejected (index, reason))."""
    ticks, source, rejected = [], [], []
    for i, payload in enumerate(payloads):
        try:
            decoded = decoder.decode(payload, b"key")
        except InvalidTick as bad:
            rejected.append((i, bad.reason))
            continue
        ticks += decoded
        source += [i] * len(decoded)
    return ticks, source, rejected


def _batch(decoder, payloads):
    decoded = decoder.decode_batch(payloads, lambda p: p, lambda p: b"key")
    t = decoded.ticks
    segment = [None] * len(t) if t.segment is None else t.segment.tolist()
    reset = [False] * len(t) if t.reset is None else t.reset.tolist()
    device = [None] * len(t) if t.device is None else t.device.tolist()
    ticks = [Tick(*row) for row in zip(t.stream, t.ts.tolist(), t.value.tolist(), segment, reset, device)]
    return ticks, decoded.source.tolist(), [(i, bad.reason) for i, bad in decoded.rejected]


def test_a_poll_of_plain_ticks_is_parsed_at_once_into_columns(decoder):
    ints = [orjson.dumps({"stream": "z", "ts": 1767225600, "value": 3})]  # an int value is plain too
    assert decoder._plain_columns(PLAIN + ints) is not None
    assert _batch(decoder, PLAIN + ints) == _one_by_one(decoder, PLAIN + ints)


@pytest.mark.parametrize("odd", ODD, ids=range(len(ODD)))
def test_a_poll_with_any_other_message_decodes_as_message_by_message(decoder, odd):
    payloads = PLAIN[:2] + [odd] + PLAIN[2:]
    assert decoder._plain_columns(payloads) is None
    assert _batch(decoder, payloads) == _one_by_one(decoder, payloads)


def test_two_messages_that_parse_as_one_object_are_both_rejected(decoder):
    payloads = [PLAIN[0], b'{"stream": "a", "ts": 1767225600, "value": 1.0, "x": "}', b'{"}', PLAIN[1]]
    ticks, source, rejected = _batch(decoder, payloads)
    assert source == [0, 3] and rejected == [(1, "malformed_json"), (2, "malformed_json")]


def test_random_polls_decode_as_message_by_message(decoder):
    rng = random.Random(7)
    for _ in range(200):
        payloads = [rng.choice(PLAIN + ODD) for _ in range(rng.randint(0, 8))]
        assert _batch(decoder, payloads) == _one_by_one(decoder, payloads), payloads


# --- recorded files read leniently (the offline scorers) -----------------------------------------------------


def test_lenient_reading_yields_each_unreadable_row_in_its_place(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes(b"timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,oops\n2014-04-01 00:10:00\n"
                     b"2014-04-01 00:15:00,\xe9\n2014-04-01 00:20:00,\n\n2014-04-01 00:25:00,2\n")
    records = list(read_records(path, TickSettings(), lenient=True))
    assert [(r.line, r.error and r.error.reason) for r in records] == [
        (2, None), (3, "bad_type"), (4, "malformed_csv"), (5, "malformed_csv"), (6, "bad_type"), (8, None)]
    assert str(records[1].error) == f"{path}:3: column 'value' is not a number: 'oops'"
    assert records[1].obj == {"stream": "rows", "ts": "2014-04-01 00:05:00"}  # what could be read, for the report
    assert str(records[3].error) == f"{path}:5: not UTF-8 text"
    # Without lenient the same file stops at the first bad row, naming it, as before.
    with pytest.raises(RecordError, match=r"rows.csv:3: column 'value' is not a number"):
        list(read_records(path, TickSettings()))
    skipped: list[RecordError] = []
    assert [r.line for r in read_records(path, TickSettings(), skipped=skipped)] == [2, 8]
    assert [e.reason for e in skipped] == ["bad_type", "malformed_csv", "malformed_csv", "bad_type"]


def test_lenient_json_lines_are_parsed_as_the_daemon_parses_messages(tmp_path, decoder):
    fields = TickSettings(max_message_bytes=200)
    path = tmp_path / "rows.jsonl"
    long = orjson.dumps({"stream": "a", "ts": 1767225600, "value": 1, "pad": "x" * 300})
    path.write_bytes(b'{"stream": "a", "ts": 1767225600, "value": NaN}\n{oops\n' + long + b"\n"
                     + b'{"stream": "a", "ts": 1767225600, "value": 1, "note": "\xe9"}\n')
    records = list(read_records(path, fields, lenient=True))
    assert [r.error and r.error.reason for r in records] == [None, "malformed_json", "too_large", "malformed_json"]
    with pytest.raises(InvalidTick, match="non_finite"):  # the decoder's verdict, as on the daemon's path
        decoder.decode_obj(records[0].obj)
    daemon = []
    for line in path.read_bytes().splitlines():
        with pytest.raises(InvalidTick) as bad:
            TickDecoder(fields).decode(line)
        daemon.append(bad.value.reason)
    assert daemon == ["non_finite", "malformed_json", "too_large", "malformed_json"]
    with pytest.raises(RecordError, match=r"rows.jsonl:1: malformed JSON"):  # unchanged without lenient
        list(read_records(path, fields))


def test_empty_and_unreadable_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert list(read_records(empty, TickSettings(), lenient=True)) == []
    with pytest.raises(RecordError, match=r"empty.csv:1: empty file") as raised:
        list(read_records(empty, TickSettings()))
    assert raised.value.reason == "empty_file"
    broken = tmp_path / "broken.jsonl.gz"
    whole = gzip.compress(b"".join(orjson.dumps({"stream": "a", "ts": i, "value": i}) + b"\n" for i in range(5000)))
    broken.write_bytes(whole[: len(whole) // 2])
    for lenient in (False, True):
        with pytest.raises(RecordError, match=r"broken.jsonl.gz:\d+: cannot read the file"):
            list(read_records(broken, TickSettings(), lenient=lenient))
    with pytest.raises(RecordError, match=r"missing.csv: cannot read the file: \[Errno 2\]"):
        list(read_records(tmp_path / "missing.csv", TickSettings()))
