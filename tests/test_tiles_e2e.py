"""End to end on tiles: real Snakemake on the small DFC 2020 twin, from twin generation to the report.

A project copy gets a test-sized configuration: one seed, the segmentation experiments of the main
job (REF-Net, AMM-FuseNet, the early-fusion UNet and the UNet on each modality) at two epochs each,
a four-step pix2pix and four synthetic tiles. Two epochs teach the models little: this test proves the
tile path through every stage (tile index, tile store, tile GAN, training on crops, scoring every
labelled test pixel, mosaic maps, MLflow, report), not accuracy; the accuracy claims are the README's
full-twin numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
import yaml
import zarr

from stages.config import load_dataset
from tests.conftest import SMALL_TILES, copy_project, run

pytestmark = pytest.mark.e2e

SHORT = {"epochs": 2}
EXPERIMENTS = [
    {"model": "refnet", "name": "refnet", "training": SHORT},
    {"model": "ammfusenet", "name": "ammfusenet", "training": SHORT},
    {"model": "unet", "name": "unet", "training": SHORT},
    {"model": "unet", "name": "unet-s2", "modalities": ["primary"], "training": SHORT},
    {"model": "unet", "name": "unet-s1", "modalities": ["auxiliary"], "training": SHORT},
]
RUNS = [e["name"] for e in EXPERIMENTS]
SYNTHETIC_TILES = 4


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("tiles-project"))
    path = root / "params" / "pipeline.yaml"
    pipeline = yaml.safe_load(path.read_text())
    pipeline.update(datasets=[SMALL_TILES], seeds=[0], experiments=EXPERIMENTS)
    pipeline["augment"]["synthetic_tiles"] = SYNTHETIC_TILES
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    gan_path = root / "params" / "models" / "pix2pix.yaml"
    gan = yaml.safe_load(gan_path.read_text())
    gan["presets"]["quick"]["training"]["epochs"] = 4
    gan_path.write_text(yaml.safe_dump(gan, sort_keys=False))
    run(["snakemake", "--cores", "2", f"results/{SMALL_TILES}/all"], cwd=root)
    return root


def _results(root: Path) -> Path:
    return root / "results" / SMALL_TILES


def test_tile_store_holds_every_tile_with_dense_labels(project: Path) -> None:
    spec = load_dataset(SMALL_TILES)
    tiles = json.loads((_results(project) / "coreg" / "tiles.json").read_text())
    store = zarr.open_group(_results(project) / "patches.zarr", mode="r")
    size = spec.tiles["size"]
    counts = {split: store[f"{split}/label"].shape[0] for split in ("train", "val", "test")}
    # every twin tile lands in exactly one split; the test split is the real test set's tiles
    indexed = sum(len(ids) for ids in tiles["sets"].values())
    assert sum(counts.values()) == sum(spec.twin["tiles"].values()) == indexed
    assert counts["test"] == spec.twin["tiles"]["test"] and counts["val"] >= 1
    s2, s1 = store["train/s2/data"], store["train/s1/data"]
    assert s2.shape == (counts["train"], 13, size, size) and s1.shape == (counts["train"], 2, size, size)
    assert np.isfinite(s1[:]).all()  # the twin's NaNs are filled before training sees them
    labels = store["test/label"][:]
    assert labels.shape == (counts["test"], size, size)
    absent = {c.id for c in spec.classes if c.name in ("Savanna", "Snow/Ice")}
    assert absent and not np.isin(labels, list(absent)).any()


def test_tile_gan_trained_on_training_tiles_only(project: Path) -> None:
    quality = json.loads((_results(project) / "augment" / "quality.json").read_text())
    assert quality["synthetic_tiles"] == SYNTHETIC_TILES
    augmented = zarr.open_group(_results(project) / "augmented.zarr", mode="r")
    assert augmented["train/s2/data"].shape[0] == SYNTHETIC_TILES
    assert (_results(project) / "augment" / "spectra.png").is_file()


def test_every_segmentation_run_scored_every_labelled_test_pixel(project: Path) -> None:
    store = zarr.open_group(_results(project) / "patches.zarr", mode="r")
    labels = store["test/label"][:]
    labelled = int(np.isin(labels, [c.id for c in load_dataset(SMALL_TILES).classes]).sum())
    for name in RUNS:
        run_dir = _results(project) / "runs" / name / "seed0"
        metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
        assert metrics["n"] == labelled, name
        assert 0.0 <= metrics["miou"] <= metrics["oa"] <= 1.0 and len(metrics["per_class_iou"]) == 10, name
        with rasterio.open(run_dir / "map.tif") as ds:  # a mosaic of the first predicted tiles
            assert ds.dtypes[0] == "uint8" and ds.width >= labels.shape[-1]
        assert (run_dir / "map.png").is_file() and (run_dir / "confusion.png").is_file()


def test_report_table_has_miou_for_every_run(project: Path) -> None:
    table = (_results(project) / "all" / "table.md").read_text()
    assert "mIoU" in table
    for name in RUNS:
        assert f"| {name} |" in table, name
    metrics = json.loads((_results(project) / "metrics.json").read_text())
    assert sorted(metrics) == sorted(RUNS)
    assert all("miou_mean" in m for m in metrics.values())


def test_mlflow_holds_every_segmentation_run(project: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[f"landfuse-{SMALL_TILES}"], output_format="list")
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(RUNS)
    metrics = json.loads((_results(project) / "metrics.json").read_text())
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.metrics["test_miou"] == pytest.approx(metrics[r.data.tags["experiment"]]["miou_mean"])


def test_second_snakemake_run_has_nothing_to_do(project: Path) -> None:
    proc = run(["snakemake", "-n", "--cores", "2", f"results/{SMALL_TILES}/all"], cwd=project)
    assert "Nothing to be done" in proc.stdout + proc.stderr
