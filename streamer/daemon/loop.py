"""The run loop: poll -> decode -> one batched detector step -> metrics (and score records) -> commit.

Delivery is at-least-once: an offset is committed only after every message before it was scored, its
metrics updated and its score record (if ``kafka.scores_topic`` is set) flushed to the broker.

State and offsets move together (`streamer.daemon.partitions`). With a checkpoint store, the loop checkpoints and
then commits exactly the checkpoints' offsets: after a partition's first batch, then every
``checkpoint.interval_seconds``/``interval_messages``, on revocation and at shutdown. A committed offset
never passes the last saved checkpoint, so a ``kill -9`` at any moment restarts from a checkpoint and the
offset that belongs to it, and replays at most one interval's messages. Without a store, stream state dies
with the process by design, and processed offsets are committed every ``kafka.commit_interval_ms`` and
whenever a poll comes back empty (caught up: nothing is left waiting for the interval).

Clients (``kafka.client``): the daemon drives a consumer and a producer through the small surface described
in `streamer.clients.base`, implemented for kafka-python (`streamer.clients.kafka_python`, the default) and
confluent-kafka (`streamer.clients.confluent`). Polled messages are the client's own objects, read through
the consumer's accessors.

Threads: kafka-python 3 runs rebalance callbacks on its own network thread; confluent-kafka runs them inside
``poll`` (and ``close``) on the main thread, where `_lock` is never held. `_lock` is held while a batch is
processed, so a revocation waits for the batch in hand to finish and then commits what was processed for
the partitions it gives up (kafka-python: asynchronously, a blocking call there would stall the network
thread; confluent-kafka: synchronously). Partitions that were *lost* (the group evicted us) are never
committed. Newly assigned partitions that need a start position (a checkpoint, or ``kafka.start_from`` = a
timestamp) are positioned by the main loop after the poll that assigned them, and their records from that
poll are dropped, since they came from the default position.

Without a checkpoint store a revoked partition's streams are dropped and start fresh (a warm-up) wherever
the partition goes next, even when an eager rebalance gives it straight back: configure a store to avoid it.

Checkpoints (``[checkpoint]``): each stream is tagged with the partition its ticks come from; a checkpoint
holds the state of one partition's streams with the partition's next offset. On assignment it is restored
and the consumer seeks to that offset: restored state plus replay from its offset is exactly the
uninterrupted state. A partition with a committed offset but no checkpoint (a wiped or replaced store, a
refused checkpoint) starts fresh at the committed offset: one warning, ``streamer_checkpoint_missing_total``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, deque

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from streamer.clients.base import (
    CommitFailed,
    Consumer,
    KafkaSetupError,
    PollFailed,
    Producer,
    open_consumer,
    open_producer,
    start_timestamp_ms,
)
from streamer.config import Settings
from streamer.core.detector import SCORED, Detector
from streamer.core.kernel import EVIDENCE_KINDS
from streamer.core.model import Forecaster
from streamer.core.ticks import Decoded, InvalidTick, TickBatch, TickDecoder
from streamer.daemon import systemd
from streamer.daemon.checkpoint import Checkpoint, CheckpointError, KafkaStore, LocalStore, Store
from streamer.daemon.metrics import Health, Metrics, MetricsServer, ScoreSnapshot
from streamer.daemon.partitions import TP, CheckpointSchedule, Partitions
from streamer.logs import RateLimited

log = logging.getLogger("streamer.daemon")

_OUTCOME = {SCORED: "scored", 1: "out_of_order"}


class DeliveryError(RuntimeError):
    """Records the daemon produced (scores, dead letters) were not delivered: stop rather than commit."""


class _Listener:
    """Rebalance callbacks (`streamer.clients.base.RebalanceListener`)."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def revoked(self, partitions):
        self.daemon._release(partitions, commit=True)

    def lost(self, partitions):
        self.daemon._release(partitions, commit=False)

    def assigned(self, partitions):
        self.daemon._assigned(partitions)

    def start_offsets(self, partitions) -> dict:
        """Where these just-assigned partitions start, for backends that position them in the assignment
        itself (confluent-kafka: a seek right after assignment can lose to the group's own positioning)."""
        return self.daemon._claim_start_offsets(partitions)


class Daemon:
    """One consumer-group member scoring its partitions. `run` blocks until `stop` is called."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 model: Forecaster | None = None, stop: threading.Event | None = None):
        self.settings = settings
        self.model = model or Forecaster.load(settings.model.path)
        self.detector = Detector(self.model, settings.detector)
        self.decoder = TickDecoder(settings.ticks)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, model_name=str(settings.model.path or "bundled"))
        self.metrics.watch_scores(self._snapshot)
        self.health = Health()
        self.metrics.ready.set_function(lambda: 1 if self.health.is_ready() else 0)
        self.scored = 0  # messages scored since start, for callers that wait (demo, tests)
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self.partitions = Partitions(durable=settings.checkpoint.store is not None)
        self._schedule = CheckpointSchedule(settings.checkpoint.interval_seconds,
                                            settings.checkpoint.interval_messages, time.monotonic)
        self._lagged: set[TP] = set()  # partitions with a consumer-lag series
        self._store: Store | None = None
        self._watchdog = systemd.Watchdog()
        self._connected = True
        self._batch_marks: deque[tuple[float, int]] = deque()
        self._start_ms = start_timestamp_ms(settings.kafka.start_from, settings.ticks.zone)
        self._rules = {topic: settings.resets.for_topic(topic) for topic in settings.kafka.topics}
        self._warn = RateLimited(log)
        self._consumer: Consumer | None = None  # the client seam (streamer.clients.base)
        self._producer: Producer | None = None
        self.http: MetricsServer | None = None
        self._last_snapshot = ScoreSnapshot([], 0.0, 0)

    # --- lifecycle ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit and return (safe from signal handlers)."""
        self._stop.set()

    def run(self) -> None:
        _quiet_gc()
        cfg = self.settings
        m = cfg.metrics
        tls = (m.tls_certfile, m.tls_keyfile) if m.tls_certfile else None
        auth = (m.basic_auth_username, m.basic_auth_password.get_secret_value()) if m.basic_auth_username else None
        server = self.http = MetricsServer(self.registry, self.health, m.host, m.port, tls, auth).start()
        log.info("metrics listening", extra={"address": f"{cfg.metrics.host}:{server.port}"})
        try:
            self._consumer = open_consumer(cfg.kafka)
            if cfg.kafka.scores_topic or cfg.kafka.dead_letter_topic:
                self._producer = open_producer(cfg.kafka)
            self._store = self._open_store()
            if self._store is None:
                log.warning("no checkpoint store ([checkpoint] path or store): stream state is lost on every "
                            "restart and rebalance, and each stream warms up again")
            for topic in cfg.kafka.topics:
                self.metrics.init_topic(topic)
            self._consumer.subscribe(cfg.kafka.topics, _Listener(self))
            log.info("consuming", extra={"topics": cfg.kafka.topics, "group": cfg.kafka.group_id,
                                         "client": cfg.kafka.client})
            systemd.ready(f"consuming {','.join(cfg.kafka.topics)} as {cfg.kafka.group_id}")
            self._loop()
        except Exception as exc:
            # A failure mid-batch (undelivered records, a bug) leaves the detector past offsets that will not
            # be committed: a checkpoint now would pair that state with the older offset and apply those
            # messages twice after a restart. Stop without one; the last good checkpoint stands.
            if not isinstance(exc, KafkaSetupError):  # that one the CLI reports in one clear line
                log.exception("stopping on an unexpected error")  # in the structured log, not only on stderr
            self._store = None
            raise
        finally:
            self._shutdown()
            server.stop()

    def _open_store(self) -> Store | None:
        cfg = self.settings
        fingerprint = self.model.fingerprint()
        if cfg.checkpoint.store == "local":
            return LocalStore(cfg.checkpoint.path, cfg.kafka.group_id, fingerprint)
        if cfg.checkpoint.store == "kafka":
            return KafkaStore(cfg.kafka, cfg.checkpoint.topic, cfg.kafka.group_id, fingerprint)
        return None

    def _loop(self) -> None:
        cfg = self.settings.kafka
        next_lag = next_commit = 0.0
        while not self._stop.is_set():
            self.health.beat()
            self._watchdog.maybe_ping(time.monotonic(), healthy=True)
            try:
                polled = self._consumer.poll(cfg.poll_timeout_ms, cfg.max_poll_records)
            except PollFailed as exc:  # a broker outage: readiness reports it (`_check_connected`); poll again
                self._warn.warning("poll", "poll failed", error=str(exc))
                polled = {}
            skip = self._position_new_partitions()
            if polled:
                with self._lock:
                    self._handle({tp: msgs for tp, msgs in polled.items() if tp not in skip
                                  and tp in self.partitions.owned})
            if self._store is not None:  # checkpoint, then commit what the checkpoints cover
                if self._schedule.due() or self.partitions.never_saved():
                    with self._lock:
                        self._checkpoint()
                    self._commit()
            elif not polled:  # caught up: commit at once, nothing waits for the interval
                self._commit()
            elif time.monotonic() >= next_commit:  # a commit per poll would cost a broker round trip each
                self._commit()
                next_commit = time.monotonic() + cfg.commit_interval_ms / 1000
            if time.monotonic() >= next_lag:
                self._update_lag()
                self._check_connected()
                self._expire_idle()
                next_lag = time.monotonic() + 1.0

    def _shutdown(self) -> None:
        systemd.stopping()
        if self._consumer is not None:
            if self._store is not None:
                with self._lock:
                    self._checkpoint()
            self._commit()
            self._consumer.close()  # runs the revocation callback: nothing left to commit
        if self._producer is not None:
            self._producer.close()
        if isinstance(self._store, KafkaStore):
            self._store.close()
        self.health.ready = False
        log.info("stopped", extra={"scored": self.scored})

    # --- rebalance (kafka-python: on its network thread; confluent-kafka: inside poll/close) ----------

    def _assigned(self, assigned) -> None:
        with self._lock:
            self.partitions.assign(assigned)
            self._set_ready()
        self.metrics.partition_events.labels("assigned").inc(len(assigned))
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}"
                                                                    for tp in assigned)})

    def _release(self, partitions, commit: bool) -> None:
        with self._lock:  # waits for the batch in hand
            if commit and self._store is not None:
                self._checkpoint(partitions)
            pending = self.partitions.release(partitions, commit)
            for tp in partitions:  # the next owner restores it from the checkpoint (or starts it fresh)
                for stream in self.detector.owned_by(self.partitions.owner(tp)):
                    self.detector.forget(stream)
            for tp in partitions:
                if tp in self._lagged:  # the series goes with the partition
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
                    self._lagged.discard(tp)
            self._set_ready()
        if pending and commit:
            try:
                self._consumer.commit_revoked(pending)
            except CommitFailed as exc:
                self._warn.warning("commit", "offset commit on revocation failed", error=str(exc))
        self.metrics.partition_events.labels("revoked" if commit else "lost").inc(len(partitions))
        log.info("partitions revoked" if commit else "partitions lost",
                 extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in partitions),
                        "committed": len(pending) if commit else 0})

    def _expire_idle(self) -> None:
        """Forget streams that have been silent for ``detector.idle_expiry_seconds`` of wall-clock time.

        The detector counts batches, not seconds, so the loop remembers which batch was current when.
        """
        expiry = self.settings.detector.idle_expiry_seconds
        if not expiry:
            return
        now = time.monotonic()
        self._batch_marks.append((now, self.detector.batches))
        cutoff = None
        while self._batch_marks and self._batch_marks[0][0] <= now - expiry:
            cutoff = self._batch_marks.popleft()[1]
        if cutoff is not None:
            with self._lock:
                expired = self.detector.expire(cutoff + 1)
            if expired:
                self.metrics.expired.inc(expired)

    def _check_connected(self) -> None:
        """Not ready while the client says the group coordinator is unreachable (see each `connected`).

        A client may keep its assignment through a broker outage, so the assignment alone says nothing.
        """
        connected, detail = self._consumer.connected()
        connected = connected or not self.partitions.owned  # no verdict before the first assignment
        if connected != self._connected:
            self._connected = connected
            log.warning("coordinator unreachable" if not connected else "coordinator reachable again",
                        extra=detail)
            with self._lock:
                self._set_ready()

    def _set_ready(self) -> None:
        self.health.ready = bool(self.partitions.owned) and self._connected

    # --- main-loop steps ---------------------------------------------------------------------------

    def _position_new_partitions(self) -> set[TP]:
        """Restore checkpoints of partitions assigned since the last poll, or seek them to the backfill start.

        Returns the partitions it moved: their records in the poll at hand came from the old position.
        """
        with self._lock:
            todo = self.partitions.take_unpositioned()
        offsets = self._start_offsets(todo)
        for tp, offset in offsets.items():
            self._consumer.seek(tp, offset)
        return set(offsets)

    def _claim_start_offsets(self, partitions) -> dict[TP, int]:
        """`_start_offsets` of partitions the main loop then need not position (see `_Listener`)."""
        with self._lock:
            self.partitions.claim(partitions)
        return self._start_offsets(partitions)

    def _start_offsets(self, partitions) -> dict[TP, int]:
        """Where newly assigned partitions must start: a checkpoint's offset (its state is restored here), or
        the backfill start; partitions absent from the result keep the group's position."""
        offsets = {}
        for tp in partitions:
            checkpoint = self._load_checkpoint(tp)
            if checkpoint is not None:
                with self._lock:
                    self.detector.restore(checkpoint.states, owner=self.partitions.owner(tp))
                    self.partitions.restored(tp, checkpoint.offset)
                offsets[tp] = checkpoint.offset
                log.info("checkpoint restored", extra={"partition": f"{tp.topic}/{tp.partition}",
                                                       "offset": checkpoint.offset,
                                                       "streams": len(checkpoint.states.names)})
                continue
            if self._store is not None:
                self._warn_if_committed(tp)
            offset = self._consumer.start_offset(tp, self._start_ms) if self._start_ms is not None else None
            if offset is not None:
                offsets[tp] = offset
                log.info("backfill start", extra={"partition": f"{tp.topic}/{tp.partition}", "offset": offset})
        return offsets

    def _warn_if_committed(self, tp: TP) -> None:
        """A committed offset without a checkpoint: the store was wiped, replaced or refused the checkpoint
        (with a store, this daemon commits only checkpointed offsets). Policy: the partition resumes at the
        committed offset with fresh streams (a warm-up); the messages before it are not replayed."""
        committed = self._consumer.committed(tp)
        if committed is None:
            return
        self.metrics.checkpoint_missing.inc()
        log.warning("committed offset without a checkpoint: the partition's streams start fresh there",
                    extra={"partition": f"{tp.topic}/{tp.partition}", "committed": committed})

    def _load_checkpoint(self, tp: TP) -> Checkpoint | None:
        if self._store is None:
            return None
        try:
            return self._store.load(tp.topic, tp.partition)
        except CheckpointError as exc:  # refused, not misapplied: the partition starts fresh from its commit
            self.metrics.checkpoint_errors.inc()
            log.error("checkpoint refused", extra={"partition": f"{tp.topic}/{tp.partition}", "error": str(exc)})
            return None

    def _checkpoint(self, among=None) -> None:
        """Save the streams of each owned partition (``among`` them) that moved since its last checkpoint,
        with the offset their state covers (caller holds the lock)."""
        started = time.perf_counter()
        unsaved = self.partitions.unsaved(among)
        for tp, offset in unsaved.items():
            streams = self.detector.owned_by(self.partitions.owner(tp))
            self._store.save(Checkpoint(tp.topic, tp.partition, offset, self._store.model,
                                        self.detector.export(streams)))
            self.partitions.saved(tp, offset)
        if among is None:
            self._schedule.restart()
        if unsaved:
            self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _handle(self, polled) -> None:
        """Decode, score and publish one poll; record the offsets that are now safe to commit."""
        started = time.perf_counter()
        m = self.metrics
        c = self._consumer
        value_of, key_of, offset_of = c.value, c.key, c.offset
        publish = bool(self.settings.kafka.scores_topic)
        by_topic: dict[str, list[tuple[list, Decoded, int]]] = {}  # (messages, decoded, owner) per partition
        invalid: Counter = Counter()
        for tp, messages in polled.items():
            decoded = self.decoder.decode_batch(messages, value_of, key_of)
            for i, bad in decoded.rejected:
                invalid[(tp.topic, bad.reason)] += 1
                self._reject(tp, messages[i], bad)
            by_topic.setdefault(tp.topic, []).append((messages, decoded, self.partitions.owner(tp)))
        for (topic, reason), n in invalid.items():
            m.invalid.labels(reason).inc(n)
            m.messages.labels(topic, "invalid").inc(n)

        last_ts = None
        for topic, parts in by_topic.items():  # the partitions of one topic are scored as one batch
            ticks = TickBatch.join([decoded.ticks for _, decoded, _ in parts])
            if not len(ticks):
                continue
            owners = np.repeat([owner for _, _, owner in parts], [len(decoded.ticks) for _, decoded, _ in parts])
            result = self.detector.process(ticks, self._rules.get(topic), owners, topic)
            for outcome, n in zip(*_counts(result.outcome)):
                m.messages.labels(topic, _OUTCOME[outcome]).inc(n)
            for reason, n in result.resets.items():
                m.resets.labels(reason).inc(n)
            if result.evicted:
                m.evicted.inc(result.evicted)
            scored = result.outcome == SCORED
            if scored.any():  # the last scored message of the poll
                last_ts = float(ticks.ts[np.flatnonzero(scored)[-1]])
            if publish:  # each tick's source message, for its score record
                sources = [messages[i] for messages, decoded, _ in parts for i in decoded.source.tolist()]
                self._publish_scores(topic, ticks, sources, result)
            self.scored += int(scored.sum())

        if self._producer is not None:
            self._deliver()  # score records and dead letters reach the broker before the commit
        for tp, messages in polled.items():
            self.partitions.processed(tp, offset_of(messages[-1]) + 1)
            self._schedule.count(len(messages))
        now = time.time()
        if last_ts is not None:
            m.event_lag.set(now - last_ts)
            m.last_scored.set(now)
        m.batch_seconds.observe(time.perf_counter() - started)

    def _publish_scores(self, topic: str, ticks: TickBatch, sources: list, result) -> None:
        send = self._producer.send
        scores_topic = self.settings.kafka.scores_topic
        partition_of, offset_of = self._consumer.partition, self._consumer.offset
        ts, value, score, error = ticks.ts.tolist(), ticks.value.tolist(), result.score.tolist(), result.error.tolist()
        evidence = result.evidence.tolist()
        device = [None] * len(ticks) if ticks.device is None else ticks.device.tolist()
        device_score = result.device_score.tolist()
        for i in (result.outcome == SCORED).nonzero()[0].tolist():
            stream, msg = ticks.stream[i], sources[i]
            record = {"stream": stream, "ts": ts[i], "value": value[i], "anomaly_score": score[i],
                      "error": None if error[i] != error[i] else error[i],
                      "topic": topic, "partition": partition_of(msg), "offset": offset_of(msg)}
            if evidence[i]:  # a score above 0: the kind of evidence that made it
                record["evidence"] = EVIDENCE_KINDS[evidence[i]]
            if device[i] is not None:  # a channel of a multivariate tick: its reading's device score too
                record["device"], record["device_score"] = device[i], device_score[i]
            send(scores_topic, stream.encode(), orjson.dumps(record))

    def _reject(self, tp: TP, msg, bad: InvalidTick) -> None:
        offset = self._consumer.offset(msg)
        self._warn.warning(bad.reason, "invalid message skipped", reason=bad.reason, detail=str(bad),
                           topic=tp.topic, partition=tp.partition, offset=offset)
        topic = self.settings.kafka.dead_letter_topic
        if topic:
            key, value = self._consumer.key(msg), self._consumer.value(msg)
            headers = [("reason", bad.reason.encode()), ("source", f"{tp.topic}/{tp.partition}/{offset}".encode())]
            # kafka-python refuses a record with neither key nor value: keep the (empty) payload as b"".
            self._producer.send(topic, key, value if value is not None or key is not None else b"", headers)
            self.metrics.dead_lettered.inc()

    def _deliver(self) -> None:
        """Flush the batch's records; if any was not delivered, stop without committing what it covers."""
        failed = self._producer.deliver()
        if failed:
            raise DeliveryError(f"{len(failed)} score/dead-letter records were not delivered "
                                f"({failed[0]}); their offsets stay uncommitted")

    def _commit(self) -> None:
        with self._lock:
            offsets = self.partitions.commits()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailed as exc:  # e.g. a rebalance in progress: the next owner re-reads from the last commit
            self._warn.warning("commit", "offset commit failed", error=str(exc))
            return
        with self._lock:
            self.partitions.committed(offsets)

    def _update_lag(self) -> None:
        for tp, lag in self._consumer.lag(list(self.partitions.owned)).items():
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            self._lagged.add(tp)

    def _snapshot(self) -> ScoreSnapshot:
        """Called from the HTTP thread at scrape time. If the batch in hand holds the lock for long (a hung
        broker stalls the flush), the last snapshot is served: /metrics keeps answering."""
        if not self._lock.acquire(timeout=1.0):
            return self._last_snapshot
        try:
            det = self.detector
            cap = self.settings.metrics.max_stream_series
            self._last_snapshot = ScoreSnapshot(det.top_scores(cap), det.max_peak(), len(det), det.top_devices(cap))
            return self._last_snapshot
        finally:
            self._lock.release()


def _quiet_gc() -> None:
    """Move start-up objects (imported modules, the model) out of the cyclic GC's reach and collect rarely.

    Every poll allocates thousands of short-lived objects; with the default thresholds the GC walked the
    whole heap often enough to take a large share of the daemon's time, with long pauses (docs/perf.md, "Why
    the settings").
    The per-message objects hold no reference cycles, so reference counting frees them anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _counts(codes):
    values, counts = np.unique(codes, return_counts=True)
    return values.tolist(), counts.tolist()
