"""Ticks: decoding Kafka messages and recorded files into the detector's input, and encoding them back.

One wire format everywhere: a JSON object with ``stream``, ``ts`` (epoch seconds or ISO-8601), and either
``value`` (a number) or ``values`` (an object of named numbers); optional ``segment`` (a scalar whose change
starts a new segment) and ``reset`` (bool). A multivariate tick is split into one univariate tick per named
value (stream ``"<stream>/<name>"``): the forecaster is applied channel-independently, so one generic model
serves any sensor. Those ticks carry ``device`` = ``<stream>``, the name the channels' scores are combined
under (`streamer.core.devices`); a tick with ``value`` has none.

Bad input never raises past this module's callers: `TickDecoder.decode` raises `InvalidTick` with a short
machine-readable reason, which the daemon counts and skips (or dead-letters).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamer.config import TickSettings

Scalar = str | int | float | bool | None

REASONS = ("too_large", "malformed_json", "not_an_object", "missing_field", "bad_type", "non_finite",
           "bad_timestamp")


class InvalidTick(ValueError):
    """A message that is not a valid tick; ``reason`` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class Tick:
    stream: str
    ts: float
    value: float
    segment: Scalar = None
    reset: bool = False
    device: str | None = None  # the stream of the ``values`` object this channel tick came from


def object_array(items: list) -> np.ndarray:
    """A 1-d object array of ``items`` (np.array would build a 2-d array from tuples)."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


@dataclass(slots=True)
class TickBatch:
    """Ticks as columns, in arrival order: what `Detector.process` reads. A poll of plain ticks is decoded
    straight into these columns (`TickDecoder.decode_batch`), without a `Tick` object per message."""

    stream: list[str]
    ts: np.ndarray  # float64 epoch seconds
    value: np.ndarray  # float64
    segment: np.ndarray | None = None  # object array of scalars; None: no tick in the batch has one
    reset: np.ndarray | None = None  # bool; None: no tick asks for one
    device: np.ndarray | None = None  # object array of str or None; None: no tick came from a ``values`` object

    def __len__(self) -> int:
        return len(self.stream)

    @classmethod
    def of(cls, ticks: Sequence[Tick]) -> TickBatch:
        segment = [t.segment for t in ticks]
        reset = [t.reset for t in ticks]
        device = [t.device for t in ticks]
        return cls([t.stream for t in ticks], np.array([t.ts for t in ticks], dtype=np.float64),
                   np.array([t.value for t in ticks], dtype=np.float64),
                   object_array(segment) if any(s is not None for s in segment) else None,
                   np.array(reset, dtype=bool) if any(reset) else None,
                   object_array(device) if any(d is not None for d in device) else None)

    @classmethod
    def join(cls, batches: Sequence[TickBatch]) -> TickBatch:
        """One batch of ``batches`` in order (the polls of several partitions of one topic)."""
        if len(batches) == 1:
            return batches[0]

        def optional(columns: list[np.ndarray | None], absent: Any, dtype) -> np.ndarray | None:
            """An optional column joined: None if no part has it, else ``absent`` where a part lacks it."""
            if all(column is None for column in columns):
                return None
            return np.concatenate([np.full(len(b), absent, dtype=dtype) if column is None else column
                                   for b, column in zip(batches, columns)])

        return cls([s for b in batches for s in b.stream], np.concatenate([b.ts for b in batches]),
                   np.concatenate([b.value for b in batches]),
                   optional([b.segment for b in batches], None, object),
                   optional([b.reset for b in batches], False, bool),
                   optional([b.device for b in batches], None, object))


@dataclass(slots=True)
class Decoded:
    """Messages decoded by `TickDecoder.decode_batch`."""

    ticks: TickBatch
    source: np.ndarray  # int64, per tick: the index of the message it came from
    rejected: list[tuple[int, InvalidTick]]  # (message index, why) of each invalid message


def parse_ts(raw: Any, zone: tzinfo = timezone.utc) -> float:
    """Epoch seconds from a number or an ISO-8601 string; a time without an offset is read in ``zone``
    (`TickSettings.zone`: UTC unless ``ticks.timezone`` says otherwise). A local time repeated when the
    clocks go back is read as its first occurrence, one skipped when they go forward as if they had not
    (Python's ``fold=0``)."""
    if isinstance(raw, bool):
        raise InvalidTick("bad_type", "ts is a bool")
    if isinstance(raw, (int, float)):
        try:
            ts = float(raw)
        except OverflowError:  # an integer beyond float range
            raise InvalidTick("non_finite", "ts") from None
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidTick("bad_timestamp", f"unparseable ts {raw[:40]!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        ts = parsed.timestamp()
    else:
        raise InvalidTick("bad_type", f"ts is a {type(raw).__name__}")
    if not math.isfinite(ts):
        raise InvalidTick("non_finite", "ts")
    return ts


def _lenient_json(payload: bytes) -> Any:
    """Second chance for what orjson rejects: NaN/Infinity literals (Python's json.dumps writes them) and
    numbers beyond float range parse here, so the tick is rejected as ``non_finite``, not as garbage."""
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise InvalidTick("malformed_json") from None


def _number(raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise InvalidTick("bad_type", f"{name} is a {type(raw).__name__}")
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond float range
        raise InvalidTick("non_finite", name) from None
    if not math.isfinite(value):
        raise InvalidTick("non_finite", name)
    return value


def _name(raw: str, what: str) -> str:
    """A stream or channel name that can be encoded (a lone surrogate from JSON cannot, and would break the
    score records and /metrics later)."""
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidTick("bad_type", f"{what} is not valid UTF-8") from None
    return raw


class TickDecoder:
    """Turns one message (bytes, or an already-parsed object) into ticks, or raises `InvalidTick`."""

    def __init__(self, fields: TickSettings, clock=time.time):
        self.f = fields
        self._clock = clock
        # Field names and limits as plain attributes: this runs once per message on the daemon's hot path.
        self._stream, self._ts, self._value = fields.stream_field, fields.ts_field, fields.value_field
        self._values, self._segment, self._reset = fields.values_field, fields.segment_field, fields.reset_field
        self._max_bytes, self._min_ts, self._future = (fields.max_message_bytes, fields.min_timestamp,
                                                       fields.max_future_seconds)
        self._zone = fields.zone

    def decode_batch(self, messages: Sequence, value_of: Callable, key_of: Callable) -> Decoded:
        """Decode a poll's messages, read through the Kafka client's accessors, into one batch of columns.

        A poll made only of plain ticks (exactly ``stream``, ``ts`` and ``value``: an ASCII name, numbers, a
        timestamp in range) is parsed by one orjson call and checked column by column: cheaper a message, and no
        `Tick` objects for the detector to take apart again (docs/perf-history.md, "Third round", has the
        figures). A poll with anything else in it (an invalid, multivariate, segmented or keyed message) is
        decoded message by message, with the same result: the tests hold the two paths to each other.
        """
        payloads = list(map(value_of, messages))
        plain = self._plain_columns(payloads)
        if plain is not None:
            return Decoded(plain, np.arange(len(payloads)), [])
        ticks: list[Tick] = []
        source: list[int] = []
        rejected: list[tuple[int, InvalidTick]] = []
        for i, msg in enumerate(messages):
            try:
                decoded = self.decode(payloads[i], key_of(msg))
            except InvalidTick as bad:
                rejected.append((i, bad))
                continue
            ticks += decoded
            source += [i] * len(decoded)
        return Decoded(TickBatch.of(ticks), np.array(source, dtype=np.int64), rejected)

    def _plain_columns(self, payloads: list) -> TickBatch | None:
        """The columns of payloads that are all plain ticks, ``{stream, ts, value}`` exactly; else None.

        The payloads are parsed as one JSON array, which is only right if every element is exactly one
        payload: ``{"a": "}`` and ``{"}`` would parse as one object made of two messages. So every payload
        must start with ``{``, end with ``}`` and hold no other brace. Then the elements, each an object
        that starts at some payload's first byte and ends at some payload's last byte, are runs of whole
        payloads in order, and n elements for n payloads means one each.
        """
        n = len(payloads)
        try:
            joined = b",".join(payloads)
        except TypeError:  # a tombstone (None)
            return None
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
        if n == 0 or lengths.min() < 2 or lengths.max() > self._max_bytes:
            return None
        if joined.count(b"{") != n or joined.count(b"}") != n:
            return None
        last = np.cumsum(lengths + 1) - 2  # the last byte of each payload in `joined`
        buf = np.frombuffer(joined, dtype=np.uint8)
        if not ((buf[last - lengths + 1] == ord("{")).all() and (buf[last] == ord("}")).all()):
            return None
        try:
            objs = orjson.loads(b"[" + joined + b"]")
        except orjson.JSONDecodeError:
            return None
        if len(objs) != n or set(map(len, objs)) != {3}:
            return None
        stream = list(map(dict.get, objs, repeat(self._stream)))
        ts = list(map(dict.get, objs, repeat(self._ts)))
        value = list(map(dict.get, objs, repeat(self._value)))
        # Exact types (bool is not an int here); orjson never returns a non-finite float, and an integer
        # beyond float range fails the conversion.
        if (set(map(type, stream)) != {str} or not all(stream) or not "".join(stream).isascii()
                or not set(map(type, ts)) <= {float, int} or not set(map(type, value)) <= {float, int}):
            return None
        try:
            ts_array, value_array = np.array(ts, dtype=np.float64), np.array(value, dtype=np.float64)
        except OverflowError:
            return None
        if not (ts_array.min() >= self._min_ts and ts_array.max() <= self._clock() + self._future):
            return None
        return TickBatch(stream, ts_array, value_array)

    def decode(self, payload: bytes | None, key: bytes | None = None) -> list[Tick]:
        if payload is None:
            raise InvalidTick("not_an_object", "tombstone")
        if len(payload) > self._max_bytes:
            raise InvalidTick("too_large", f"{len(payload)} bytes")
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = _lenient_json(payload)
        return self.decode_obj(obj, key)

    def decode_obj(self, obj: Any, key: bytes | None = None) -> list[Tick]:
        if not isinstance(obj, dict):
            raise InvalidTick("not_an_object", type(obj).__name__)
        stream = obj.get(self._stream)
        if stream is None:
            if not key:
                raise InvalidTick("missing_field", self._stream)
            stream = key.decode("utf-8", "replace")
        elif not isinstance(stream, str) or not stream:
            raise InvalidTick("bad_type", f"{self._stream} is not a non-empty string")
        elif not stream.isascii():  # only non-ASCII names can hold an unencodable lone surrogate
            stream = _name(stream, self._stream)
        if self._ts not in obj:
            raise InvalidTick("missing_field", self._ts)
        ts = parse_ts(obj[self._ts], self._zone)
        if not self._min_ts <= ts <= self._clock() + self._future:
            raise InvalidTick("bad_timestamp", f"ts {ts} out of range")
        segment = obj.get(self._segment)
        if isinstance(segment, (dict, list)):
            raise InvalidTick("bad_type", f"{self._segment} is not a scalar")
        reset = obj.get(self._reset, False)
        if reset is not False and reset is not True:
            raise InvalidTick("bad_type", f"{self._reset} is not a bool")

        if self._value in obj:
            return [Tick(stream, ts, _number(obj[self._value], self._value), segment, reset)]
        values = obj.get(self._values)
        if values is None:
            raise InvalidTick("missing_field", f"{self._value} or {self._values}")
        if not isinstance(values, dict) or not values:
            raise InvalidTick("bad_type", f"{self._values} is not a non-empty object")
        return [Tick(_name(f"{stream}/{name}", self._values), ts, _number(v, f"{self._values}.{name}"),
                     segment, reset, stream) for name, v in values.items()]

    def encode(self, stream: str, ts: float, value: float | dict[str, float], segment: Scalar = None,
               reset: bool = False) -> bytes:
        """The wire form of one record; `decode` of the result gives the same ticks back."""
        f = self.f
        obj: dict[str, Any] = {f.stream_field: stream, f.ts_field: ts}
        obj[f.values_field if isinstance(value, dict) else f.value_field] = value
        if segment is not None:
            obj[f.segment_field] = segment
        if reset:
            obj[f.reset_field] = True
        return orjson.dumps(obj)


# --- Recorded files -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One row of a recorded file in wire form: ``obj`` decodes with `TickDecoder.decode_obj`.

    A row that could not be read (only yielded by ``read_records(..., lenient=True)``) carries the reason in
    ``error``, and in ``obj`` whatever of it could be read (its stream and timestamp, for the report)."""

    line: int
    obj: Any  # a dict for a readable row; a JSON line may hold any JSON value (the decoder rejects it)
    error: RecordError | None = None


class RecordError(ValueError):
    """A row of a recorded file (or the whole file) that cannot be read; the message names the file and line.

    ``reason`` says why in the daemon's words where there is one (``malformed_json``, ``too_large``, and
    ``bad_type`` for a CSV value cell that is not a number, as ``"value": "abc"`` would be); else
    ``malformed_csv`` (a row that is not a CSV row of the header's width), ``empty_file`` or ``unreadable``.
    """

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def _open_text(path: Path) -> io.TextIOBase:
    """Text whose bytes that are not UTF-8 come through as lone surrogates, for `_utf8` to name the line."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")  # noqa: SIM115 - closed by the caller


def _utf8(line: str) -> bool:
    """Whether a line read by `_open_text` was valid UTF-8."""
    if line.isascii():
        return True
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_records(path: Path, fields: TickSettings, default_stream: str | None = None,
                 skipped: list[RecordError] | None = None, lenient: bool = False) -> Iterator[Record]:
    """Rows of a CSV or JSON Lines file (optionally .gz) in the daemon's tick format.

    An unreadable row raises `RecordError` naming the file and line, or, when a ``skipped`` list is
    given, is appended to it and skipped (a broken header always raises: nothing after it is readable).

    ``lenient`` reads a file the way the daemon reads messages, for the offline scorers: an unreadable row
    is yielded, in its place, as a `Record` whose ``error`` says why (the scorer counts it as invalid by
    reason, as the daemon counts a bad message); a JSON line orjson rejects gets the daemon's second chance
    (NaN/Infinity literals parse, so the decoder rejects such a tick as ``non_finite``, not as garbage);
    a line longer than ``max_message_bytes`` is ``too_large``; an empty file has no rows.

    A line that is not UTF-8 text is an unreadable row (``malformed_json`` in JSON Lines, as the daemon calls
    such a message; ``malformed_csv`` in a CSV). A file that cannot be opened or read as a whole (missing, a
    broken gzip stream, a CSV header without a timestamp or value column) raises `RecordError` naming it.

    A file without a stream column/field is one stream named ``default_stream`` (the file's stem by default),
    which makes the Numenta Anomaly Benchmark's ``timestamp,value`` CSVs work as they are. CSV columns other
    than stream/ts/segment/reset are values: ``value`` alone is univariate, anything else multivariate.
    """
    path = Path(path)
    stem = path.name.split(".")[0]
    default_stream = default_stream or stem
    kind = path.name.removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if kind in ("jsonl", "ndjson", "json"):
        rows = _jsonl_records
    elif kind in ("csv", "tsv", "txt"):
        rows = _csv_records
    else:
        raise RecordError(f"{path}: unknown file type {kind!r} (use .csv or .jsonl, optionally .gz)")
    at = [0]  # the line being read, for an error that stops the whole file
    try:
        with _open_text(path) as handle:
            yield from rows(handle, path, fields, default_stream, skipped, lenient, at)
    except (OSError, EOFError, zlib.error) as exc:
        where = f"{path}:{at[0]}" if at[0] else str(path)  # the line reached, as far as buffering tells
        raise RecordError(f"{where}: cannot read the file: {exc}") from None


def _bad(error: RecordError, skipped: list[RecordError] | None) -> None:
    if skipped is None:
        raise error
    skipped.append(error)


def _jsonl_records(handle, path: Path, f: TickSettings, default_stream: str,
                   skipped: list[RecordError] | None, lenient: bool, at: list[int]) -> Iterator[Record]:
    for number, line in enumerate(handle, start=1):
        at[0] = number
        if not line.strip():
            continue
        if lenient and len(line) * 4 > f.max_message_bytes:  # a character is at most 4 bytes of UTF-8
            size = len(line.strip().encode("utf-8", "surrogateescape"))  # the line's bytes, as they were
            if size > f.max_message_bytes:
                yield Record(number, {}, RecordError(f"{path}:{number}: {size} bytes, over max_message_bytes",
                                                     "too_large"))
                continue
        if not _utf8(line):
            error = RecordError(f"{path}:{number}: not UTF-8 text", "malformed_json")
            if lenient:
                yield Record(number, {}, error)
            else:
                _bad(error, skipped)
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            error = RecordError(f"{path}:{number}: malformed JSON", "malformed_json")
            if not lenient:
                _bad(error, skipped)
                continue
            try:
                obj = _lenient_json(line.encode("utf-8"))
            except InvalidTick:
                yield Record(number, {}, error)
                continue
        if isinstance(obj, dict) and f.stream_field not in obj:
            obj[f.stream_field] = default_stream
        yield Record(number, obj)


def _csv_records(handle, path: Path, f: TickSettings, default_stream: str,
                 skipped: list[RecordError] | None, lenient: bool, at: list[int]) -> Iterator[Record]:
    not_utf8: list[int] = []  # lines that were not UTF-8 text, fed to the reader as blank lines

    def lines() -> Iterator[str]:
        for number, line in enumerate(handle, start=1):
            if _utf8(line):
                yield line
            else:
                not_utf8.append(number)
                yield "\n"

    reader = csv.reader(lines())
    at[0] = 1
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise RecordError(f"{path}:1: unreadable header: {exc}", "malformed_csv") from None
    if not_utf8:
        raise RecordError(f"{path}:1: the header is not UTF-8 text", "malformed_csv")
    if not header:
        if lenient:
            return
        raise RecordError(f"{path}:1: empty file", "empty_file")
    header = [name.strip() for name in header]
    ts_col = f.ts_field if f.ts_field in header else "timestamp" if "timestamp" in header else None
    if ts_col is None:
        raise RecordError(f"{path}:1: no {f.ts_field!r} or 'timestamp' column in {header}")
    meta = {f.stream_field, ts_col, f.segment_field, f.reset_field}
    value_cols = [name for name in header if name not in meta]
    if not value_cols:
        raise RecordError(f"{path}:1: no value column in {header}")
    univariate = value_cols == [f.value_field]
    number = 1
    while True:
        number += 1
        at[0] = number
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over the csv module's size limit; the next row reads on
            obj, error = {}, RecordError(f"{path}:{number}: {exc}", "malformed_csv")
        else:
            if not_utf8:  # the reader reads no further than the row it returns: the bad line is in this one
                obj, error = {}, RecordError(f"{path}:{not_utf8.pop()}: not UTF-8 text", "malformed_csv")
                not_utf8.clear()
            elif not row:
                continue
            elif len(row) != len(header):
                obj, error = {}, RecordError(f"{path}:{number}: expected {len(header)} columns, got {len(row)}",
                                             "malformed_csv")
            else:
                obj, error = _csv_tick(dict(zip(header, row)), ts_col, value_cols, univariate, f, default_stream)
                if error is not None:
                    error = RecordError(f"{path}:{number}: {error}", "bad_type")
        if error is None:
            yield Record(number, obj)
        elif lenient:
            yield Record(number, obj, error)
        else:
            _bad(error, skipped)


def _csv_tick(cells: dict[str, str], ts_col: str, value_cols: list[str], univariate: bool, f: TickSettings,
              default_stream: str) -> tuple[dict[str, Any], str | None]:
    """The wire form of one CSV row, and why not if a value cell is not a number (then only its stream and
    timestamp are in the object)."""
    obj: dict[str, Any] = {f.stream_field: cells.get(f.stream_field) or default_stream}
    raw_ts = cells[ts_col]
    try:
        obj[f.ts_field] = float(raw_ts)
    except ValueError:
        obj[f.ts_field] = raw_ts  # ISO-8601, parsed by the decoder
    values = {}
    for name in value_cols:
        try:
            values[name] = float(cells[name])
        except ValueError:
            return obj, f"column {name!r} is not a number: {cells[name]!r}"
    if univariate:
        obj[f.value_field] = values[f.value_field]
    else:
        obj[f.values_field] = values
    if cells.get(f.segment_field):
        obj[f.segment_field] = cells[f.segment_field]
    if cells.get(f.reset_field, "").strip().lower() in ("1", "true", "yes"):
        obj[f.reset_field] = True
    return obj, None
