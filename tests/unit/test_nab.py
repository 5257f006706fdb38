"""NAB scoring: hand-computed single-file cases, the fast sweep against brute force, and the real label files.

Hand-computed cases use the profile P below (tp, fp, fn all different so a wrong weight shows) and files of
6 rows unless said otherwise, whose probationary period is floor(0.15 * 6) = 0 rows. Constants used:
tanh(2.5) = 0.986614, tanh(2.5/3) = 0.682262, tanh(5/3) = 0.931110, tanh(1.25) = 0.848284.
"""

import csv
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from streamer.offline.nab import (
    PROFILE_NAMES,
    TIE_TOLERANCE,
    Profile,
    Series,
    file_raw_score,
    load_profiles,
    load_windows,
    locate_windows,
    normalise,
    probation_rows,
    random_baseline,
    random_corpus,
    raw_scores_by_threshold,
    sweep,
)
from tests.conftest import require_shared

P = Profile("test", tp=1.5, fp=0.5, fn=2.0)
NAB_DIR = Path(__file__).parents[3] / "shared" / "nab"


def score(scores: list[float], windows: list[tuple[int, int]], threshold: float = 0.5) -> float:
    return file_raw_score(Series("f", np.array(scores), windows), threshold, P)


# --- one file, one threshold -------------------------------------------------------------------------------


def test_probation_rows() -> None:
    # floor(0.15 n) capped at 750: 6 -> 0.9 -> 0, 7 -> 1.05 -> 1, 20 -> 3, 4032 -> 604.8 -> 604, 5000 -> 750.
    assert [probation_rows(n) for n in (0, 6, 7, 20, 4032, 5000, 100_000)] == [0, 0, 1, 3, 604, 750, 750]


def test_detection_at_window_start_earns_exactly_tp() -> None:
    # Window rows 2..4 (L = 3), detection at 2: d = (4 - 2 + 1) / 3 = 1, tp * tanh(2.5) / tanh(2.5) = tp.
    assert score([0, 0, 1, 0, 0, 0], [(2, 4)]) == pytest.approx(1.5, abs=1e-12)


def test_detection_at_window_right_edge() -> None:
    # Detection at 4 = e: d = 1/3, 1.5 * tanh(0.8333) / tanh(2.5) = 1.5 * 0.682262 / 0.986614 = 1.037277.
    assert score([0, 0, 0, 0, 1, 0], [(2, 4)]) == pytest.approx(1.037277, abs=1e-6)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    # Detections at 3 and 4: row 3 gives d = 2/3, 1.5 * tanh(5/3) / tanh(2.5) = 1.415613; row 4 adds nothing
    # (neither a second reward nor a false-positive cost).
    assert score([0, 0, 0, 1, 1, 0], [(2, 4)]) == pytest.approx(1.415613, abs=1e-6)


def test_missed_window_costs_fn() -> None:
    assert score([0, 0, 0.4, 0.4, 0.4, 0], [(2, 4)]) == pytest.approx(-2.0, abs=1e-12)


def test_false_positive_before_first_window_costs_fp() -> None:
    # Row 1 precedes window 3..5: -fp = -0.5; the window is missed: -2.
    assert score([0, 1, 0, 0, 0, 0], [(3, 5)]) == pytest.approx(-2.5, abs=1e-12)


def test_false_positive_without_windows_costs_fp() -> None:
    assert score([1, 0, 1, 0, 0, 1], []) == pytest.approx(-1.5, abs=1e-12)


def test_false_positive_just_after_window() -> None:
    # Window 1..3 (L = 3), detection at 4: x = (4 - 3) / (3 - 1) = 0.5, -0.5 * tanh(1.25) = -0.424142;
    # the window is missed: -2.
    assert score([0, 0, 0, 0, 1, 0], [(1, 3)]) == pytest.approx(-2.424142, abs=1e-6)


def test_false_positive_far_after_window_costs_exactly_fp() -> None:
    # 8 rows (probation 1), window 1..2 (L = 2). Row 6: x = (6 - 2) / 1 = 4 > 3, so exactly -fp = -0.5.
    assert score([0, 0, 0, 0, 0, 0, 1, 0], [(1, 2)]) == -2.5
    # Row 5: x = 3 is not > 3, so -0.5 * tanh(7.5) = -0.49999969 (README; upstream NAB uses >= 3 here).
    assert score([0, 0, 0, 0, 0, 1, 0, 0], [(1, 2)]) == pytest.approx(-2 - 0.5 * math.tanh(7.5), abs=1e-15)


def test_false_positive_between_windows_is_measured_from_the_preceding_one() -> None:
    # Windows 0..1 and 4..5, detection at 2: x = (2 - 1) / (2 - 1) = 1, -0.5 * tanh(2.5) = -0.493307
    # (not the -0.5 of "before the first window"); both windows missed: -4.
    assert score([0, 0, 1, 0, 0, 0], [(0, 1), (4, 5)]) == pytest.approx(-4.493307, abs=1e-6)


def test_false_positive_after_one_row_window_costs_fp() -> None:
    # L_prev = 1 makes x = (2 - 1) / 0: taken as infinitely far, so the full -fp; window missed: -2.
    assert score([0, 0, 1, 0, 0, 0], [(1, 1)]) == -2.5


def test_probationary_detections_are_ignored_but_windows_count() -> None:
    # 20 rows: probation is rows 0..2. Window 0..1 lies inside it; its detections are ignored, so it is
    # missed: -2. Window 2..5 (L = 4) has detections at 2 (ignored) and 4: d = (5 - 4 + 1) / 4 = 0.5,
    # 1.5 * tanh(1.25) / tanh(2.5) = 1.289689. Total -0.710311.
    scores = [1, 1, 1, 0, 1] + [0] * 15
    assert score(scores, [(0, 1), (2, 5)]) == pytest.approx(-0.710311, abs=1e-6)


def test_probationary_false_positives_are_ignored() -> None:
    # 20 rows, detection at 1 is in probation (no cost); detection at 11 in window 10..12: d = 2/3, 1.415613.
    scores = [0, 1] + [0] * 9 + [1] + [0] * 8
    assert score(scores, [(10, 12)]) == pytest.approx(1.415613, abs=1e-6)


def test_threshold_is_inclusive() -> None:
    assert score([0, 0, 0.5, 0, 0, 0], [(2, 4)], threshold=0.5) == pytest.approx(1.5, abs=1e-12)


# --- the sweep -------------------------------------------------------------------------------------------


def test_sweep_curve_and_tie_picks_highest_threshold() -> None:
    # Window 2..4. theta = 0.9: detection at 2 -> 1.5. theta = 0.5: rows 2 and 3, row 3 counts nothing -> 1.5.
    # theta = 0: every row; rows 0 and 1 precede the window (-0.5 each), row 5 has x = 0.5 (-0.424142):
    # 1.5 - 1 - 0.424142 = 0.075858. Best 1.5, tied between 0.9 and 0.5: the highest, 0.9, wins.
    corpus = [Series("f", np.array([0, 0, 0.9, 0.5, 0, 0]), [(2, 4)])]
    thresholds, raw = raw_scores_by_threshold(corpus, P)
    assert thresholds.tolist() == [0.9, 0.5, 0.0]
    assert raw == pytest.approx([1.5, 1.5, 0.075858], abs=1e-6)
    result = sweep(corpus, P)
    assert (result.threshold, result.raw, result.per_file) == (0.9, 1.5, {"f": 1.5})
    assert result.normalised == pytest.approx(100.0)


def test_perfect_detector_normalises_to_100() -> None:
    corpus = [
        Series("a", np.eye(1, 30, 10)[0], [(10, 14)]),
        Series("b", np.eye(1, 30, 5)[0] + np.eye(1, 30, 20)[0], [(5, 6), (20, 25)]),
    ]
    result = sweep(corpus, P)
    assert result.threshold == 1.0
    assert result.raw == pytest.approx(3 * P.tp, abs=1e-12)
    assert result.normalised == pytest.approx(100.0, abs=1e-9)


def test_detector_firing_only_in_probation_is_the_null_detector() -> None:
    # 20 rows, probation 0..2. theta = 1 detects nothing that counts: raw = -fn = -2, normalised 0.
    # theta = 0 detects every row: 1.5 for the window minus 7 * 0.5 before it and more after it: worse.
    corpus = [Series("f", np.array([1.0] * 3 + [0.0] * 17), [(10, 12)])]
    result = sweep(corpus, P)
    assert (result.threshold, result.raw, result.normalised) == (1.0, -2.0, 0.0)


def test_the_random_detector_scores_high_where_windows_cover_much_of_every_file() -> None:
    """The figure `streamer evaluate` prints beside a detector's: the random detector, at its own best
    threshold, gains from windows that cover a third of each file (the pump-rig layout) and not from short
    ones; it is reproducible, and it keeps the corpus's rows and windows."""
    standard = Profile("standard", 1.0, 0.11, 1.0)
    wide = [Series(f"w{k}", np.zeros(1200), [(600, 999)]) for k in range(20)]
    narrow = [Series(f"n{k}", np.zeros(4000), [(3000, 3019)]) for k in range(20)]
    assert random_baseline(wide, standard) > 50
    assert random_baseline(narrow, standard) < 25
    assert random_baseline(wide, standard) == random_baseline(wide, standard)
    fake = random_corpus(narrow, seed=3)
    assert [(s.name, len(s.scores), s.windows) for s in fake] == [(s.name, len(s.scores), s.windows) for s in narrow]
    assert all(s.scores.min() >= 0 and s.scores.max() < 1 for s in fake)


def test_normalise_null_and_perfect() -> None:
    corpus = [Series("a", np.zeros(10), [(1, 2), (5, 6)]), Series("b", np.zeros(10), [(3, 3)])]
    assert normalise(-P.fn * 3, corpus, P) == 0.0
    assert normalise(P.tp * 3, corpus, P) == 100.0
    assert normalise(-P.fn * 3 - 3.5, corpus, P) == pytest.approx(-100 * 3.5 / 10.5)
    with pytest.raises(ValueError, match="without windows"):
        normalise(0.0, [Series("c", np.zeros(5), [])], P)


def random_series(rng: np.random.Generator, name: str) -> Series:
    """A short file with coarse scores (many ties), random windows of any length including 1 row."""
    n = int(rng.integers(0, 45))
    scores = rng.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], size=n)
    edges = np.sort(rng.choice(n, size=min(n, 2 * int(rng.integers(0, 4))), replace=False))
    windows = [(int(edges[k]), int(edges[k + 1])) for k in range(0, len(edges) - 1, 2)]
    # Make some windows one row long and some adjacent, both edge cases for the false-positive rule.
    windows = [(start, start) if rng.random() < 0.2 else (start, end) for start, end in windows]
    return Series(name, scores, windows)


@pytest.mark.parametrize("seed", range(300))
def test_sweep_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    corpus = [random_series(rng, f"f{k}") for k in range(int(rng.integers(1, 5)))]
    if not any(len(series.scores) for series in corpus):
        corpus.append(Series("nonempty", rng.random(3), []))
    profile = Profile("random", *rng.uniform(0.05, 3.0, size=3))

    thresholds, raw = raw_scores_by_threshold(corpus, profile)
    brute = np.array([sum(file_raw_score(s, float(t), profile) for s in corpus) for t in thresholds])
    np.testing.assert_allclose(raw, brute, rtol=0, atol=1e-9)
    assert np.all(np.diff(thresholds) < 0)
    assert set(thresholds) == set(np.concatenate([s.scores for s in corpus]))

    result = sweep(corpus, profile)
    assert result.threshold == thresholds[np.flatnonzero(brute >= brute.max() - TIE_TOLERANCE)[0]]
    assert result.raw == pytest.approx(brute.max(), abs=1e-9)
    assert result.per_file == {s.name: file_raw_score(s, result.threshold, profile) for s in corpus}
    if any(s.windows for s in corpus):
        assert result.normalised == pytest.approx(normalise(brute.max(), corpus, profile), abs=1e-7)
    else:
        assert result.normalised is None


def test_sweep_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        sweep([Series("f", np.zeros(3), []), Series("f", np.zeros(3), [])], P)


# --- inputs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "windows", "message"),
    [
        ([0.0, np.nan], [], "finite"),
        ([[0.0]], [], "1-D"),
        ([0.0] * 5, [(2, 1)], "ordered"),
        ([0.0] * 5, [(0, 2), (2, 3)], "disjoint"),
        ([0.0] * 5, [(3, 4), (0, 1)], "ordered"),
        ([0.0] * 5, [(3, 5)], "within"),
    ],
)
def test_series_rejects_invalid_input(scores: list, windows: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Series("f", np.array(scores), windows)


def test_series_is_immutable_copy() -> None:
    scores = np.zeros(4)
    series = Series("f", scores, [[1, 2]])
    scores[1] = 1.0
    assert series.scores[1] == 0.0 and series.windows == ((1, 2),)
    with pytest.raises(ValueError):
        series.scores[0] = 1.0


def test_locate_windows_exact_inexact_and_repeated_timestamps() -> None:
    ts = ["2014-04-01 00:00:00", "2014-04-01 00:10:00", "2014-04-01 00:10:00", "2014-04-01 00:20:00"]
    assert locate_windows(ts, [("2014-04-01 00:00:00.000000", "2014-04-01 00:20:00.000000")]) == [(0, 3)]
    # A repeated timestamp: the first equal row, for either edge.
    assert locate_windows(ts, [(datetime(2014, 4, 1, 0, 10), datetime(2014, 4, 1, 0, 10))]) == [(1, 1)]
    assert locate_windows(ts, [("2014-04-01 00:00:00", "2014-04-01 00:10:00")]) == [(0, 1)]
    # No equal row: a start moves forward, an end back, never past the labelled span.
    assert locate_windows(ts, [("2014-04-01 00:05:00", "2014-04-01 00:25:00")]) == [(1, 3)]
    assert locate_windows(ts, [("2014-03-31 00:00:00", "2014-04-01 00:15:00")]) == [(0, 2)]
    with pytest.raises(ValueError, match="holds no row"):
        locate_windows(ts, [("2014-04-01 00:11:00", "2014-04-01 00:19:00")])


def test_locate_windows_with_late_rows_keeps_file_order() -> None:
    """After 02:55 the hour 02:00..02:55 comes again (rows 12..23, skipped by the detector), then 03:00."""
    first_pass = [f"2015-03-02 02:{m:02d}:00" for m in range(0, 60, 5)]  # rows 0..11
    ts = first_pass + first_pass + ["2015-03-02 03:00:00", "2015-03-02 03:05:00"]  # rows 24, 25
    # An edge on a repeated time is the first row with it, in file order: never a late row.
    assert locate_windows(ts, [("2015-03-02 02:00:00", "2015-03-02 02:30:00")]) == [(0, 6)]
    assert locate_windows(ts, [("2015-03-02 02:55:00", "2015-03-02 03:00:00")]) == [(11, 24)]
    # The late rows stand at 02:55, the time reached: inside a window that spans it, outside one that ends
    # at 02:55, and a start after 02:55 moves forward past them.
    assert locate_windows(ts, [("2015-03-02 02:50:00", "2015-03-02 02:57:00")]) == [(10, 23)]
    assert locate_windows(ts, [("2015-03-02 02:56:00", "2015-03-02 03:05:00")]) == [(24, 25)]
    with pytest.raises(ValueError, match="holds no row"):
        locate_windows(ts, [("2015-03-02 02:56:00", "2015-03-02 02:59:00")])


def test_locate_windows_rows_without_a_timestamp_stand_at_the_time_reached() -> None:
    ts = [None, "2014-04-01 00:00:00", None, "2014-04-01 00:10:00", np.datetime64("NaT"), "2014-04-01 00:20:00"]
    assert locate_windows(ts, [("2014-04-01 00:00:00", "2014-04-01 00:10:00")]) == [(1, 3)]
    assert locate_windows(ts, [("2014-04-01 00:05:00", "2014-04-01 00:15:00")]) == [(3, 4)]
    # Row 0 comes before any time is reached: before every window.
    assert locate_windows(ts, [("2013-01-01 00:00:00", "2014-04-01 00:00:00")]) == [(1, 1)]
    with pytest.raises(ValueError, match="holds no row"):
        locate_windows([None, None], [("2014-04-01 00:00:00", "2014-04-01 00:10:00")])


def test_load_windows_and_profiles_name_the_file_when_malformed(tmp_path: Path) -> None:
    path = tmp_path / "windows.json"
    path.write_text('{"a.csv": [["2014-04-01 00:00:00+02:00", "2014-04-01 01:00:00"]]}')
    assert load_windows(path) == {"a.csv": [(datetime(2014, 3, 31, 22), datetime(2014, 4, 1, 1))]}
    for text, problem in [("{", "not JSON"), ("[]", "expected an object"), ('{"a.csv": [["x", "y"]]}', "ISO-8601"),
                          ('{"a.csv": ["2014-04-01"]}', "pairs")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=rf"windows.json.*{problem}"):
            load_windows(path)
    profiles = tmp_path / "profiles.json"
    profiles.write_text('{"standard": {"CostMatrix": {"tpWeight": 1}}}')
    with pytest.raises(ValueError, match=r"profiles.json.*fpWeight"):
        load_profiles(profiles)


# --- the real label files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nab_dir() -> Path:
    require_shared(NAB_DIR / "windows.json")
    return NAB_DIR


@pytest.fixture(scope="module")
def real_corpus(nab_dir: Path) -> dict[str, tuple[np.ndarray, list[tuple[datetime, datetime]]]]:
    """Each real file's timestamps with its labelled windows."""
    corpus = {}
    for name, windows in load_windows(nab_dir / "windows.json").items():
        with open(nab_dir / "data" / name, newline="") as f:
            rows = list(csv.DictReader(f))
        corpus[name] = (np.array([row["timestamp"] for row in rows], dtype="datetime64[ns]"), windows)
    return corpus


def test_load_real_profiles(nab_dir: Path) -> None:
    assert load_profiles(nab_dir / "profiles.json") == [
        Profile("standard", 1.0, 0.11, 1.0),
        Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
        Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
    ]
    assert PROFILE_NAMES == ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def test_locate_every_real_window(real_corpus: dict) -> None:
    assert len(real_corpus) == 41
    assert sum(len(windows) for _, windows in real_corpus.values()) == 64
    for name, (timestamps, windows) in real_corpus.items():
        located = locate_windows(timestamps, windows)
        Series(name, np.zeros(len(timestamps)), located)  # ordered, disjoint, inside the file
        for (start, end), (first, last) in zip(windows, located, strict=True):
            assert 0 <= first <= last < len(timestamps), name
            # In this corpus every edge falls exactly on a row.
            assert timestamps[first] == np.datetime64(start) and timestamps[last] == np.datetime64(end), name


def test_sweep_on_real_corpus(real_corpus: dict, nab_dir: Path) -> None:
    rng = np.random.default_rng(0)
    perfect, noisy = [], []
    for name, (timestamps, windows) in real_corpus.items():
        located = locate_windows(timestamps, windows)
        hits = np.zeros(len(timestamps))
        hits[[start for start, _ in located]] = 1.0
        perfect.append(Series(name, hits, located))
        noisy.append(Series(name, rng.random(len(timestamps)), located))

    for profile in load_profiles(nab_dir / "profiles.json"):
        assert sweep(perfect, profile).normalised == pytest.approx(100.0, abs=1e-9)
        # ~137k distinct thresholds: the sweep must be fast and still agree with brute force where checked.
        # Halfway down ~68k detections sum to ~-5600, where a running float sum is good to ~1e-12 relative.
        thresholds, raw = raw_scores_by_threshold(noisy, profile)
        for k in (0, 1, int(np.argmax(raw)), len(raw) // 2):
            brute = math.fsum(file_raw_score(series, float(thresholds[k]), profile) for series in noisy)
            assert raw[k] == pytest.approx(brute, rel=1e-12, abs=1e-9)
