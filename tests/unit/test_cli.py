"""The command line: a version, a help line for every argument, an example at the end of every command's help,
and each command importing only what it runs (no torch outside `streamer train`)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from streamer import __version__
from streamer.cli import EXAMPLES, build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"streamer {__version__}"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_argument_has_help_and_the_help_ends_with_an_example(name):
    command = _commands()[name]
    missing = [a.dest for a in command._actions if not a.help]
    assert not missing, f"{name}: arguments without a help line: {missing}"
    assert command.format_help().rstrip().endswith(EXAMPLES[name])
    # the example parses (the command word and its arguments, as a user would paste them)
    words = EXAMPLES[name].split("#")[0].split()
    words = words[words.index(name):]
    build_parser().parse_args(words)


@pytest.mark.parametrize("command", ["run", "score", "evaluate", "replay", "config", "demo", "synth"])
def test_only_train_imports_torch(command):
    """What `streamer COMMAND` imports before it runs: the parser and the command's own modules."""
    modules = {"run": "streamer.daemon.loop", "score": "streamer.offline.score",
               "evaluate": "streamer.offline.evaluate", "replay": "streamer.offline.replay",
               "config": "streamer.config", "demo": "streamer.devtools.demo", "synth": "streamer.devtools.synth"}
    script = (f"import sys, streamer.cli; streamer.cli.build_parser(); import {modules[command]}; "
              "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
