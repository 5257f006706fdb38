"""Command line: ``streamer run|config|score|replay|evaluate|train|synth|demo``.

Every command reads the same settings (``--config FILE`` or ``$STREAMER_CONFIG``, then ``STREAMER_*``
environment variables) and drives the same detector core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from streamer import __version__
from streamer.clients.base import KafkaSetupError
from streamer.config import ConfigError, Settings, load_settings, redacted
from streamer.core.ticks import RecordError
from streamer.logs import setup_logging

log = logging.getLogger("streamer")


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _palette(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 256:
        raise argparse.ArgumentTypeError(f"a PNG palette holds 2 to 256 colours: {text}")
    return value


def _timestamp(text: str) -> float | str:
    """Epoch seconds, or an ISO-8601 text checked here and read once the settings are known (a time without
    an offset is in ``ticks.timezone``, as the ticks are)."""
    from streamer.core.ticks import InvalidTick, parse_ts

    raw = float(text) if text.replace(".", "", 1).isdigit() else text
    try:
        parse_ts(raw)
    except InvalidTick as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return raw


EXAMPLES = {
    "run": "streamer --config config.toml run --from 2026-01-01T00:00:00Z",
    "config": "STREAMER_KAFKA__BOOTSTRAP_SERVERS=broker:9092 streamer --config config.toml config",
    "score": "streamer score recording.csv --output scores.csv --plot scores.png --threshold 0.3",
    "replay": "streamer replay recording.jsonl.gz --topic ticks --speed 60 --bootstrap-servers broker:9092",
    "evaluate": "streamer evaluate ../shared/nab/data --labels ../shared/nab/windows.json --output scores/",
    "train": "streamer train build/corpus/train.jsonl.gz --output model.npz --epochs 24  # needs streamer[train]",
    "synth": "streamer synth --output demo.jsonl.gz --streams 20 --length 2000 --anomalies --seed 1",
    "demo": "streamer demo --speed 3000",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__.splitlines()[0],
                                     epilog="example: " + EXAMPLES["run"])
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: $STREAMER_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog="example:\n  " + EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    run = command("run", "consume ticks from Kafka and publish anomaly scores as metrics")
    run.add_argument("--from", dest="start_from", metavar="earliest|latest|ISO-8601",
                     help="start position for a group with no committed offsets (overrides kafka.start_from)")

    command("config", "print the effective configuration (secrets masked)")

    score = command("score", "score a recorded file offline, as the daemon would")
    score.add_argument("input", type=Path, help="recorded file: .csv or .jsonl, optionally .gz")
    score.add_argument("--output", type=Path, required=True, help="CSV of scores")
    score.add_argument("--plot", type=Path, help="PNG: values, forecast, score and alarms per stream")
    score.add_argument("--threshold", type=float, default=0.5, help="alarm threshold drawn in the plot")
    score.add_argument("--dpi", type=_positive, default=90.0,
                       help="resolution of the --plot PNG in dots per inch (default 90; the figure is 14 inches "
                            "wide, so 60 gives 840 pixels and a smaller file)")
    score.add_argument("--colors", type=_palette, default=0,
                       help="store the --plot PNG with a palette of at most this many colours (2-256; a plot has "
                            "few, so the file is about a third as large; default: full colour)")
    score.add_argument("--topic", default="", help="score as the daemon scores this topic's ticks (its reset rules "
                       "and detector settings)")
    score.add_argument("--strict", action="store_true",
                       help="stop at the first row the daemon would reject (default: count, skip, report)")
    score.add_argument("--skip-invalid", action="store_true", help=argparse.SUPPRESS)  # the default now

    replay = command("replay", "produce a recorded file to Kafka in the daemon's format")
    replay.add_argument("input", type=Path, help="recorded file: .csv or .jsonl, optionally .gz")
    replay.add_argument("--topic", required=True, help="topic to produce to")
    replay.add_argument("--bootstrap-servers", help="overrides kafka.bootstrap_servers")
    replay.add_argument("--speed", type=_speed, default=None, help="1, 10, ... times recorded pace, or max")
    replay.add_argument("--start", type=_timestamp, help="first timestamp to replay (ISO-8601 or epoch)")
    replay.add_argument("--end", type=_timestamp, help="last timestamp to replay")
    replay.add_argument("--skip-invalid", action="store_true",
                        help="count and skip rows that are not ticks (default: stop, naming file and line)")

    demo = command("demo", "local broker + bundled recorded stream + daemon, then a summary")
    demo.add_argument("--speed", type=_speed, default=3000.0, help="replay speed (default 3000x)")
    demo.add_argument("--linger", type=float, default=10.0, help="seconds to keep /metrics up at the end")
    demo.add_argument("--input", type=Path, help="recorded file (default: the bundled demo stream)")

    from streamer.devtools import synth
    from streamer.offline import evaluate, train_command

    evaluate.add_arguments(command("evaluate", "NAB score and best alert threshold on labelled data"))
    train_command.add_arguments(command("train", "train the forecaster (an LSTM or a GRU) on recorded files"))
    synth.add_arguments(command("synth", "write a synthetic recorded stream (training data, demos)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"streamer: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log)
    try:
        return COMMANDS[args.command](args, settings)
    except (ConfigError, KafkaSetupError, RecordError, ValueError, FileNotFoundError) as exc:
        print(f"streamer {args.command}: {exc}", file=sys.stderr)
        return 2


def cmd_config(args, settings: Settings) -> int:
    print(json.dumps(redacted(settings), indent=2))
    return 0


def cmd_run(args, settings: Settings) -> int:
    stop = _stop_on_signals()  # first, so a SIGTERM during start-up (imports, model, kernel) is honoured
    from streamer.daemon.loop import Daemon, DeliveryError

    if args.start_from:
        settings = settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={"start_from": args.start_from})})
    daemon = Daemon(settings, stop=stop)
    try:
        daemon.run()
    except DeliveryError as exc:
        log.error("stopping: %s", exc)
        return 1
    return 0


def _stop_on_signals() -> threading.Event:
    """First SIGTERM/SIGINT sets the returned event (finish the batch, commit, exit 0); a second exits at once."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            os._exit(128 + signum)
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_score(args, settings: Settings) -> int:
    from streamer.core.model import Forecaster
    from streamer.offline.score import plot_scores, score_file, write_scores_csv

    rows, summary = score_file(args.input, settings, Forecaster.load(settings.model.path), strict=args.strict,
                               topic=args.topic)
    write_scores_csv(rows, args.output)
    if args.plot and summary.scored:
        plot_scores(rows, args.plot, args.threshold, dpi=args.dpi, colors=args.colors)
    elif args.plot:
        print(f"no tick scored: no plot written to {args.plot}")
    print(f"scored {summary.scored} of {summary.rows} rows -> {args.output}"
          f" (out of order: {summary.out_of_order}, invalid: {dict(summary.invalid)},"
          f" resets: {dict(summary.resets)})")
    if summary.invalid:
        more = sum(summary.invalid.values()) - len(summary.examples)
        print("invalid rows, skipped (note 'invalid:<reason>' in the output): " + "; ".join(summary.examples)
              + (f"; and {more} more" if more else ""))
    return 0


def cmd_replay(args, settings: Settings) -> int:
    from streamer.offline.replay import replay

    if args.bootstrap_servers:
        settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(
            update={"bootstrap_servers": args.bootstrap_servers.split(",")})})
    from streamer.core.ticks import parse_ts

    start, end = (None if raw is None else parse_ts(raw, settings.ticks.zone) for raw in (args.start, args.end))
    report = replay(args.input, args.topic, settings, speed=args.speed, start=start, end=end,
                    skip_invalid=args.skip_invalid)
    print(f"produced {report.produced} messages to {args.topic} in {report.seconds:.1f}s"
          f" (skipped invalid: {report.skipped_invalid}, outside --start/--end: {report.outside_range})")
    return 0


def cmd_demo(args, settings: Settings) -> int:
    from streamer.devtools.demo import run_demo

    return run_demo(settings, speed=args.speed, linger=args.linger, input_path=args.input)


def _module_command(name: str):
    """A command whose module (``streamer.<name>``) is imported only when that command runs."""
    def command(args, settings: Settings) -> int:
        module = __import__(f"streamer.{name}", fromlist=["run"])
        return module.run(args, settings)

    return command


COMMANDS = {
    "run": cmd_run,
    "config": cmd_config,
    "score": cmd_score,
    "replay": cmd_replay,
    "demo": cmd_demo,
    "train": _module_command("offline.train_command"),
    "synth": _module_command("devtools.synth"),
    "evaluate": _module_command("offline.evaluate"),
}
