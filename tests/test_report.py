"""The report's table: mean ± sample std over seeds, per experiment, in the pipeline's order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.report import collect, markdown_table, summary_rows


def _run(root: Path, experiment: str, seed: int, oa: float, aa: float, kappa: float) -> Path:
    run = root / experiment / f"seed{seed}"
    run.mkdir(parents=True)
    test = {
        "oa": oa,
        "aa": aa,
        "kappa": kappa,
        "miou": oa - 0.1,
        "per_class_f1": [oa, oa],
        "per_class_accuracy": [aa, aa],
    }
    metrics = {
        "experiment": experiment,
        "model": "cnn",
        "modalities": ["hsi", "lidar"],
        "seed": seed,
        "test": test,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_three_seeds_give_mean_and_sample_std(tmp_path: Path) -> None:
    runs = [
        _run(tmp_path, "cnn", 0, 0.90, 0.80, 0.88),
        _run(tmp_path, "cnn", 1, 0.92, 0.82, 0.90),
        _run(tmp_path, "cnn", 2, 0.94, 0.87, 0.92),
        _run(tmp_path, "cnn-hsi", 0, 0.85, 0.75, 0.83),
    ]
    rows = summary_rows(collect(runs))
    assert [r["experiment"] for r in rows] == ["cnn", "cnn-hsi"] and [r["seeds"] for r in rows] == [3, 1]
    fused = rows[0]
    assert fused["oa_mean"] == pytest.approx(0.92) and fused["oa_std"] == pytest.approx(0.02)  # ddof=1
    assert fused["aa_mean"] == pytest.approx(0.83) and fused["aa_std"] == pytest.approx(0.0360555, abs=1e-6)
    assert fused["kappa_mean"] == pytest.approx(0.90) and fused["kappa_std"] == pytest.approx(0.02)
    table = markdown_table(rows)
    assert (
        "| cnn | cnn | hsi+lidar | 3 | 92.00 ± 2.00 | 83.00 ± 3.61 | 82.00 ± 2.00 | 0.9000 ± 0.0200 |"
        in table
    )
    assert "| cnn-hsi | cnn | hsi+lidar | 1 | 85.00 | 75.00 | 75.00 | 0.8300 |" in table  # one seed: no ±
