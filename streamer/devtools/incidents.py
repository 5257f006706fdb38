"""What an on-call person would have seen: injected faults caught or missed, with how late, and the alarms
raised where nothing was wrong; and the rolling median/MAD rule a user would write by hand, scored by the same
code so the two detectors are compared on equal terms (the use-case examples' reports).

An *alarm* is a row whose score reaches the threshold (a skipped row, score NaN, raises none). A fault is
*caught* when an alarm falls in its span or within ``slack_s`` after it (a detector sees a fault only once
its ticks arrive, and a pager tolerates a short delay); the *delay* is from the fault's start to that first
alarm. Alarms closer than ``slack_s`` to each other form one *episode*, what a pager shows as one page; an
episode with no alarm in any fault's span (plus slack) is a *false-alarm episode*, and precision is the share
of episodes that are not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamer.devtools.faults import Fault

MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal data
CHUNK = 65_536  # rows per block of the rolling-window computation (bounds its memory)


@dataclass
class KindReport:
    """One fault kind: how many were injected, which were caught, and the delays of those caught (seconds)."""

    n: int = 0
    caught: int = 0
    delays: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.caught / self.n if self.n else float("nan")

    @property
    def median_delay_s(self) -> float:
        return float(np.median(self.delays)) if self.delays else float("nan")

    @property
    def max_delay_s(self) -> float:
        return max(self.delays) if self.delays else float("nan")


@dataclass
class Report:
    kinds: dict[str, KindReport] = field(default_factory=dict)
    episodes: int = 0  # alarm episodes, true and false
    false_alarm_episodes: int = 0
    false_alarm_times: list[float] = field(default_factory=list)  # the first alarm of each false episode

    @property
    def precision(self) -> float:
        return (self.episodes - self.false_alarm_episodes) / self.episodes if self.episodes else float("nan")


def report(ts: np.ndarray, scores: np.ndarray, threshold: float, faults: Sequence[Fault],
           slack_s: float) -> Report:
    """Faults caught and false-alarm episodes of one stream's scored rows (``ts``, ``scores`` row by row)."""
    ts = np.asarray(ts, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    alarm_ts = np.sort(ts[scores >= threshold])  # NaN >= x is False: a skipped row raises no alarm
    result = Report()
    for fault in faults:
        kind = result.kinds.setdefault(fault.kind, KindReport())
        kind.n += 1
        inside = alarm_ts[(alarm_ts >= fault.start_ts) & (alarm_ts <= fault.end_ts + slack_s)]
        if len(inside):
            kind.caught += 1
            kind.delays.append(float(inside[0] - fault.start_ts))
    if len(alarm_ts):
        breaks = np.flatnonzero(np.diff(alarm_ts) > slack_s) + 1
        for episode in np.split(alarm_ts, breaks):
            result.episodes += 1
            if not any(((episode >= f.start_ts) & (episode <= f.end_ts + slack_s)).any() for f in faults):
                result.false_alarm_episodes += 1
                result.false_alarm_times.append(float(episode[0]))
    return result


def merge(reports: Iterable[Report]) -> Report:
    """Reports of several streams as one (counts added, delays pooled)."""
    total = Report()
    for part in reports:
        for name, kind in part.kinds.items():
            into = total.kinds.setdefault(name, KindReport())
            into.n += kind.n
            into.caught += kind.caught
            into.delays += kind.delays
        total.episodes += part.episodes
        total.false_alarm_episodes += part.false_alarm_episodes
        total.false_alarm_times += part.false_alarm_times
    total.false_alarm_times.sort()
    return total


def median_mad_rule(ts: np.ndarray, values: np.ndarray, window: int = 60, z: float = 8.0) -> np.ndarray:
    """The hand-written baseline: 1 where a value is more than ``z`` robust deviations from the median of the
    stream's previous ``window`` ticks (|x - median| > z x 1.4826 x MAD), else 0.

    Causal: a row is judged only on the ticks before it. Rows the daemon would skip (not later than the last
    accepted tick: late or repeated) score NaN and do not enter the window, so both detectors judge the same
    ticks; the first ``window`` accepted ticks score 0 (no history yet). Where the window is flat (MAD 0) any
    other value is an alarm, as the rule written literally says.
    """
    ts = np.asarray(ts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    accepted = ts > np.maximum.accumulate(np.r_[-np.inf, ts[:-1]])
    x = values[accepted]
    flags = np.zeros(len(x))
    for lo in range(window, len(x), CHUNK):
        hi = min(lo + CHUNK, len(x))
        past = np.lib.stride_tricks.sliding_window_view(x[lo - window:hi - 1], window)  # row j: ticks before lo+j
        median = np.median(past, axis=1)
        mad = np.median(np.abs(past - median[:, None]), axis=1) * MAD_SCALE
        deviation = np.abs(x[lo:hi] - median)
        with np.errstate(divide="ignore", invalid="ignore"):
            flags[lo:hi] = np.where(mad > 0, deviation / mad > z, deviation > 0)
    scores = np.full(len(values), np.nan)
    scores[accepted] = flags
    return scores
