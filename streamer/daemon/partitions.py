"""Partition bookkeeping: which partitions this member owns, where each one's state stands, what it may commit.

The rule it keeps (Kafka Streams' and Quix Streams' "checkpoint, then commit"): with a checkpoint store, the
offset committed for a partition is always the offset of a checkpoint already saved for it, never the
further offset the in-memory state has reached. A `kill -9` at any moment therefore restarts from a
checkpoint and the offset that belongs to it: state is neither lost nor applied twice. Without a store the
state dies with the process anyway, and processed offsets are committed as they come.

Per partition, three offsets (each "the next message to process"):
- processed: what the detector's in-memory state covers;
- saved: what the last checkpoint saved (with a store);
- committed: what the group last accepted from us.

Not thread-safe: the daemon calls it under its batch lock.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

TP = Hashable  # a (topic, partition) of whichever client; only equality and hashing are used


@dataclass
class CheckpointSchedule:
    """When the next checkpoint is due: every ``interval_seconds`` or ``interval_messages``, whichever first,
    and as soon as a partition has processed messages but was never saved (so the first commit, and the
    offset it pins, come right after the first batch instead of a whole interval later)."""

    interval_seconds: float
    interval_messages: int
    clock: Callable[[], float]
    messages: int = 0
    at: float = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def count(self, messages: int) -> None:
        self.messages += messages

    def restart(self) -> None:
        self.messages = 0
        self.at = self.clock() + self.interval_seconds

    def due(self) -> bool:
        return self.messages >= self.interval_messages or self.clock() >= self.at


class Partitions:
    """The bookkeeping of one consumer-group member (see the module docstring for the commit rule)."""

    def __init__(self, durable: bool):
        self.durable = durable  # a checkpoint store is configured
        self.owned: set[TP] = set()
        self._unpositioned: set[TP] = set()  # assigned, start position not yet decided
        self._processed: dict[TP, int] = {}
        self._saved: dict[TP, int] = {}
        self._committed: dict[TP, int] = {}
        self._owners: dict[TP, int] = {}  # tags the detector's streams with the partition they come from

    # --- assignment ----------------------------------------------------------------------------------

    def assign(self, partitions: Iterable[TP]) -> None:
        partitions = set(partitions)
        self.owned |= partitions
        self._unpositioned |= partitions

    def take_unpositioned(self) -> set[TP]:
        """Assigned partitions whose start position is still to be decided (each handed out once)."""
        todo, self._unpositioned = self._unpositioned, set()
        return todo

    def claim(self, partitions: Iterable[TP]) -> None:
        """These partitions' start positions are decided elsewhere (in the client's assignment callback)."""
        self._unpositioned -= set(partitions)

    def restored(self, tp: TP, offset: int) -> None:
        """A checkpoint was restored: the state covers everything before ``offset``, and it is durable. The
        group's own commit may lag it (a commit lost after the save): the next commit sends it again."""
        self._processed[tp] = self._saved[tp] = offset
        self._committed.pop(tp, None)

    def release(self, partitions: Iterable[TP], commit: bool) -> dict[TP, int]:
        """Forget partitions that were revoked (``commit``: returns the offsets to commit for them, which the
        caller checkpointed first if durable) or lost (nothing may be committed: another member owns them)."""
        partitions = set(partitions)
        pending = self.commits(partitions) if commit else {}
        for tp in partitions:
            self._processed.pop(tp, None)
            self._saved.pop(tp, None)
            self._committed.pop(tp, None)
        self.owned -= partitions
        self._unpositioned -= partitions
        return pending

    def owner(self, tp: TP) -> int:
        return self._owners.setdefault(tp, len(self._owners))

    # --- progress ------------------------------------------------------------------------------------

    def processed(self, tp: TP, next_offset: int) -> None:
        self._processed[tp] = next_offset

    def unsaved(self, among: Iterable[TP] | None = None) -> dict[TP, int]:
        """Owned partitions whose state moved past their last checkpoint: {partition: offset to save}."""
        among = self.owned if among is None else self.owned & set(among)
        return {tp: self._processed[tp] for tp in among
                if tp in self._processed and self._saved.get(tp) != self._processed[tp]}

    def never_saved(self) -> bool:
        """Some owned partition has processed messages but has no checkpoint yet."""
        return any(tp in self._processed and tp not in self._saved for tp in self.owned)

    def saved(self, tp: TP, offset: int) -> None:
        self._saved[tp] = offset

    # --- commits -------------------------------------------------------------------------------------

    def commits(self, among: Iterable[TP] | None = None) -> dict[TP, int]:
        """Offsets to commit now: each owned partition's last checkpoint (durable) or processed offset
        (not durable), where it differs from the last commit."""
        source = self._saved if self.durable else self._processed
        among = self.owned if among is None else self.owned & set(among)
        return {tp: source[tp] for tp in among if tp in source and self._committed.get(tp) != source[tp]}

    def committed(self, offsets: dict[TP, int]) -> None:
        """The group accepted these offsets (or the client took them for an asynchronous commit)."""
        for tp, offset in offsets.items():
            if tp in self.owned:
                self._committed[tp] = offset
