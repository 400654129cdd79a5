"""Tile datasets end to end: the tile index, the tile store, crops, segmentation training and scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from stages.augment import augment
from stages.config import Experiment, load_dataset
from stages.data.segmentation import TileCrops, batch_slices
from stages.data.store import ModalityBinding, PatchStore
from stages.evaluate import evaluate
from stages.models.base import IGNORE_INDEX
from stages.train import train
from tests.conftest import SMALL_TILES, SmallTiles


def test_the_index_checks_and_lists_every_tile(small_tiles: SmallTiles) -> None:
    spec = load_dataset(SMALL_TILES)
    index = json.loads((small_tiles.coreg / "tiles.json").read_text())
    assert {k: len(v) for k, v in index["sets"].items()} == spec.tile_counts()
    assert index["sets"]["validation"][:3] == ["0", "1", "2"]  # natural order of p0, p1, ...
    assert index["nan_fraction"]["s1"] > 0 and index["nan_fraction"]["s2"] == 0
    assert "shares its label tile's shape, transform and CRS" in index["check"]


def test_tile_store_layout_and_honest_splits(small_tiles: SmallTiles) -> None:
    spec = load_dataset(SMALL_TILES)
    store = PatchStore(small_tiles.store)
    assert store.attrs["task"] == "tiles" and store.attrs["tile_size"] == 256
    data = xr.open_zarr(small_tiles.store, group="train/s2", consolidated=False)["data"]
    assert data.dims == ("sample", "band", "y", "x") and data.shape[1:] == (13, 256, 256)
    tiles = store.attrs["tiles"]
    counts = spec.tile_counts()
    assert (
        len(tiles["train"]) + len(tiles["val"]) == counts["validation"]
        and len(tiles["test"]) == counts["test"]
    )
    assert round(0.2 * counts["validation"]) == len(tiles["val"])
    assert {t.split("/")[0] for t in tiles["train"] + tiles["val"]} == {"validation"}
    # statistics from the training tiles only, and NaN (S1) replaced by 0 after normalisation
    s1 = np.asarray(store.patches("train", "s1")[:])
    assert np.isfinite(s1).all()
    paths = [small_tiles.raw / spec.tile_path(t.split("/")[0], "s1", t.split("/")[1]) for t in tiles["train"]]
    raw = np.stack([rasterio.open(p).read() for p in paths])
    mean = np.nanmean(raw.astype(np.float64), axis=(0, 2, 3))
    np.testing.assert_allclose(store.attrs["normalisation"]["s1"]["mean"], mean, rtol=1e-6)
    labels = np.asarray(store.root["test/label"][:])
    assert not np.isin(labels, [3, 8]).any()  # savanna and snow are absent from the twin


def test_crops_carry_inputs_and_dense_targets(small_tiles: SmallTiles) -> None:
    store = PatchStore(small_tiles.store)
    binding = ModalityBinding.build(store.modalities, ["s1"], fill_missing=False)
    crops = TileCrops([(store, "train")], binding, store.class_ids, crop=64, batch_size=5, augment=True)
    (p, a, t), *_ = crops.epoch(np.random.default_rng(0))
    assert p.shape == (5, 2, 64, 64) and a.shape == (5, 0, 64, 64) and t.shape == (5, 64, 64)
    assert t.min() >= IGNORE_INDEX and t.max() < store.n_classes
    assert len(crops) == len(store.attrs["tiles"]["train"])  # one random crop per tile and epoch


@pytest.fixture(scope="module")
def trained_unet(small_tiles: SmallTiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unet")
    exp = Experiment(
        "unet", "unet", ("s2", "s1"), "quick", None, architecture={"base_width": 8}, training={"epochs": 2}
    )
    train(dataset=SMALL_TILES, experiment=exp, seed=0, store_path=small_tiles.store, out=out, threads=1)
    evaluate(SMALL_TILES, small_tiles.store, out, threads=1)
    return out


def test_segmentation_training_selects_on_val_miou(trained_unet: Path) -> None:
    info = json.loads((trained_unet / "train.json").read_text())
    assert info["selection"].startswith("best validation miou")
    best = max(info["history"], key=lambda h: (h["val_miou"], -h["epoch"]))
    assert info["best"]["epoch"] == best["epoch"]
    assert info["n_train"] > 100_000  # labelled training pixels, not tiles


def test_segmentation_is_scored_on_every_labelled_test_pixel(
    small_tiles: SmallTiles, trained_unet: Path
) -> None:
    store = PatchStore(small_tiles.store)
    metrics = json.loads((trained_unet / "metrics.json").read_text())["test"]
    labels = np.asarray(store.root["test/label"][:])
    assert metrics["n"] == int(np.isin(labels, store.class_ids).sum())
    assert 0 <= metrics["miou"] <= metrics["oa"] <= 1
    with rasterio.open(trained_unet / "map.tif") as ds:
        n = min(16, labels.shape[0])
        assert ds.height == -(-n // 4) * 256 + (-(-n // 4) - 1) * 4 and ds.crs is None


def test_tile_gan_writes_tiles_and_a_quality_report(small_tiles: SmallTiles, tmp_path: Path) -> None:
    report = augment(
        small_tiles.store,
        tmp_path / "aug.zarr",
        tmp_path / "augment" / "quality.json",
        samples_per_class=1,
        preset="quick",
        seed=0,
        threads=1,
        steps=3,
        synthetic_tiles=4,
    )
    syn = PatchStore(tmp_path / "aug.zarr")
    assert syn.attrs["synthetic"] is True and syn.attrs["generator"] == "pix2pix"
    assert syn.patches("train", "s2").shape == (4, 13, 256, 256) and syn.root["train/label"].shape == (
        4,
        256,
        256,
    )
    assert set(report["spectral_angle_deg"]) == {"s2"} and 0 <= report["tstr_val_accuracy"] <= 1
    assert report["trained_on"] == "train split only" and (tmp_path / "augment" / "spectra.png").is_file()


def test_batch_slices_never_leave_a_batch_of_one() -> None:
    def sizes(n: int, b: int) -> list[int]:
        return [s.stop - s.start for s in batch_slices(n, b)]

    assert sizes(16, 8) == [8, 8] and sizes(17, 8) == [8, 9] and sizes(18, 8) == [8, 8, 2]
    assert sizes(1, 8) == [1] and sizes(9, 8) == [9] and sizes(0, 8) == []
