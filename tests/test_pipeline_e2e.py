"""End to end: real Snakemake on the small twin, from twin generation to the report, in a project copy.

The copy gets a test-sized configuration (one seed, four patch experiments and a three-epoch
AMM-FuseNet, a short GAN run); everything else is the project as committed. The thresholds below were
measured on the small twin (quick presets, seed 0: fused CNN 0.79 OA, HSI-only 0.74, LiDAR-only 0.39,
FusAtNet 0.63) and leave room for floating-point differences between machines, not for a broken
pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import rasterio

from stages.io.hashing import sha256_file
from tests.conftest import E2E_RUNS, SMALL, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(local_pipeline: Path) -> Path:
    """The local run of tests/conftest.py (E2E_EXPERIMENTS, a 40-step GAN), shared with the SLURM test."""
    return local_pipeline


def _metrics(root: Path) -> dict[str, dict]:
    return json.loads((root / "results" / SMALL / "metrics.json").read_text())


def test_report_holds_table_figures_and_manifest(project: Path) -> None:
    out = project / "results" / SMALL / "all"
    for name in (
        "table.md",
        "table.csv",
        "per_class.csv",
        "report.md",
        "manifest.json",
        "figures/maps.png",
        "figures/per_class.png",
        "figures/confusion_fusatnet.png",
    ):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    for exp in E2E_RUNS:
        assert f"| {exp} |" in table
    assert sorted(p.stem for p in (project / "results" / SMALL / "curves").glob("*.csv")) == sorted(E2E_RUNS)


def test_manifest_lists_every_artifact_with_its_sha256(project: Path) -> None:
    results = project / "results" / SMALL
    manifest = json.loads((results / "all" / "manifest.json").read_text())["files"]
    for rel, entry in manifest.items():
        path = results / rel
        assert sha256_file(path) == entry["sha256"], rel
        assert path.stat().st_size == entry["bytes"], rel
    names = set(manifest)
    for needed in (
        "coreg/hsi.tif",
        "coreg/grid.json",
        "patches.json",
        "augment/quality.json",
        "runs/fusatnet/seed0/model.pt",
        "runs/fusatnet/seed0/map.tif",
        "all/table.md",
    ):
        assert needed in names, needed
    assert any(n.startswith("patches.zarr/scene/hsi/data/") for n in names)
    assert not any(n.startswith(("logs/", "benchmarks/")) for n in names)


def test_fusion_beats_each_modality_alone(project: Path) -> None:
    m = _metrics(project)
    fused, hsi, lidar = (
        m[k]["oa_mean"] for k in ("two_branch_cnn", "two_branch_cnn-hsi", "two_branch_cnn-lidar")
    )
    assert fused >= 0.70 and hsi >= 0.60 and 0.25 <= lidar <= 0.55
    assert fused > hsi and fused > lidar + 0.2
    assert (
        m["fusatnet"]["oa_mean"] >= 0.45
    )  # far above chance (1/15); the small twin has ~230 training patches


def test_segmentation_model_is_scored_on_the_patch_models_test_pixels(project: Path) -> None:
    """A segmentation model on a scene: trained on windows of the sparse training pixels, scored on
    exactly the test pixels the patch classifiers are scored on, and mapped over the whole scene."""
    runs = project / "results" / SMALL / "runs"
    seg, patch = (
        json.loads((runs / n / "seed0" / "metrics.json").read_text()) for n in ("ammfusenet", "fusatnet")
    )
    assert seg["test"]["n"] == patch["test"]["n"] and seg["test"]["support"] == patch["test"]["support"]
    assert seg["test"]["oa"] > 1 / len(seg["classes"])  # three epochs: above chance, not more
    with (
        rasterio.open(runs / "ammfusenet" / "seed0" / "map.tif") as seg_map,
        rasterio.open(runs / "fusatnet" / "seed0" / "map.tif") as patch_map,
    ):
        assert seg_map.shape == patch_map.shape and seg_map.transform == patch_map.transform


def test_maps_are_georeferenced_class_rasters(project: Path) -> None:
    path = project / "results" / SMALL / "runs" / "two_branch_cnn" / "seed0" / "map.tif"
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 32615 and ds.dtypes[0] == "uint8"
        assert ds.colormap(1)[6][:3] == (0, 255, 255)  # Water
        assert ds.read(1).min() >= 1 and ds.read(1).max() <= 15


def test_second_snakemake_run_has_nothing_to_do(project: Path) -> None:
    proc = run(["snakemake", "-n", "--cores", "2", f"results/{SMALL}/all"], cwd=project)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_mlflow_holds_one_run_per_experiment_and_seed(project: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[f"landfuse-{SMALL}"], output_format="list")
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(E2E_RUNS)
    metrics = _metrics(project)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.metrics["test_oa"] == pytest.approx(metrics[r.data.tags["experiment"]]["oa_mean"])
        assert "training.optimizer.lr" in r.data.params and r.data.tags["seed"] == "0"
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(r.info.run_id)}
        assert {"checkpoint", "evaluation"} <= artifacts
        # MLflow 3 logs models as their own entities, linked to the run that produced them
        models = mlflow.search_logged_models(
            experiment_ids=[r.info.experiment_id],
            filter_string=f"source_run_id = '{r.info.run_id}'",
            output_format="list",
        )
        assert [m.name for m in models] == ["model"]
