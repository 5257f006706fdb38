"""Every file under deploy/ is read by some test here, and the operator notes name only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

from deploytools import DEPLOY, REPO

HERE = Path(__file__).resolve().parent
TEST_SOURCES = "\n".join(p.read_text() for p in HERE.glob("*.py")) + (REPO / "tests/e2e/test_prometheus_helper.py"
                                                                      ).read_text()


def test_every_deploy_file_is_referenced_by_a_test() -> None:
    untested = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = path.relative_to(DEPLOY)
        # referenced by name, or covered by a directory-level check (kustomize renders its directory's files)
        covered = path.name in TEST_SOURCES or (rel.parts[0] == "k8s" and path.suffix in {".yaml", ".toml"})
        if not covered:
            untested.append(str(rel))
    assert untested == []


def test_readme_mentions_only_existing_paths() -> None:
    text = (DEPLOY / "README.md").read_text()
    paths = set(re.findall(r"`((?:systemd|k8s|prometheus|grafana)/[\w./-]+)`", text))
    assert paths
    missing = [p for p in paths if not (DEPLOY / p.rstrip("/")).exists() and "*" not in p]
    assert missing == []
