"""Every benchmark script runs, at a tiny size, and prints its measurement. Nothing here asserts a
speed: the point is that `python benchmarks/<name>.py` still works when the code under it changes."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT, run

SMOKE = {
    "bench_coregister": (
        ["--bands", "3", "--rows", "64", "--cols", "300", "--blocks", "1"],
        r"speed-up: \d+\.\dx",
    ),
    "bench_patches": (["--scenes", "houston", "--skip-naive"], r"houston\s+ours\s+15029\s"),
    "bench_selective_scan": (
        ["--lengths", "256", "--repeats", "1", "--cases", "refnet", "--no-backward"],
        r"\n\s+256\s+[\d.]+\s+[\d.]+\s+[\d.]+x",
    ),
    "bench_models": (
        ["--models", "two_branch_cnn", "--train-steps", "1", "--infer-batch", "64"],
        r"two_branch_cnn quick\s+params\s+[\d,]+\s+train\s+\d+ patch/s",
    ),
}


def test_every_benchmark_has_a_smoke_run() -> None:
    assert set(SMOKE) == {p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_runs_at_a_tiny_size(name: str) -> None:
    args, printed = SMOKE[name]
    proc = run([sys.executable, f"benchmarks/{name}.py", *args], cwd=ROOT, timeout=300)
    assert re.search(printed, proc.stdout), proc.stdout[-2000:]
