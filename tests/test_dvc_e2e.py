"""End to end: a real ``dvc repro`` in a temporary git repository, then a second one that is up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMALL, copy_project, run, shrink_to_test_size

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("dvc"))
    shrink_to_test_size(root, [{"model": "two_branch_cnn"}], gan_steps=20)
    run(["git", "init", "-q"], cwd=root)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "add", "-A"], cwd=root)
    run(
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@localhost", "commit", "-qm", "test-sized"],
        cwd=root,
    )
    run(["dvc", "repro"], cwd=root)
    return root


def test_repro_builds_every_stage_and_locks_it(repo: Path) -> None:
    lock = (repo / "dvc.lock").read_text()
    for stage in ("data", "coregister", "patches", "augment", "models", "report"):
        assert f"{stage}@{SMALL}:" in lock, stage
    assert (repo / "results" / SMALL / "all" / "table.md").is_file()
    assert (repo / "data" / "raw" / SMALL / "download.json").is_file()
    metrics = run(["dvc", "metrics", "show", "--json"], cwd=repo).stdout
    shown = json.loads(metrics)
    assert any("two_branch_cnn" in json.dumps(v) for v in shown.values())


def test_second_repro_is_up_to_date(repo: Path) -> None:
    proc = run(["dvc", "repro"], cwd=repo)
    assert "Data and pipelines are up to date" in proc.stdout + proc.stderr
    status = run(["dvc", "status"], cwd=repo).stdout
    assert "up to date" in status


def test_snakemake_agrees_nothing_is_stale(repo: Path) -> None:
    proc = run(["snakemake", "-n", "--cores", "1", f"results/{SMALL}/all"], cwd=repo)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_outputs_are_ignored_by_git_and_cached_by_dvc(repo: Path) -> None:
    status = run(["git", "status", "--porcelain"], cwd=repo).stdout
    assert "results/" not in status and "data/" not in status
    assert any((repo / ".dvc" / "cache").rglob("*"))
