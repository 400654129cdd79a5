"""The patch store: layout, honest splits and statistics, scene-served patches, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import xarray as xr

from stages.config import load_dataset
from stages.data.splits import carve_validation
from stages.data.store import ModalityBinding, PatchStore, TrainingBatches, scene_batches
from tests.conftest import SMALL, SmallTwin


def test_layout_has_named_dims_and_few_files(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    p = spec.patch_size
    train = xr.open_zarr(small_twin.store, group="train/hsi", consolidated=False)
    assert train["data"].dims == ("sample", "band", "y", "x")
    assert train["data"].shape[1:] == (spec.modalities["hsi"].bands, p, p)
    scene = xr.open_zarr(small_twin.store, group="scene/lidar", consolidated=False)
    assert scene["data"].dims == ("band", "y", "x") and scene["data"].shape == (1, spec.height, spec.width)
    test = xr.open_zarr(small_twin.store, group="test", consolidated=False)
    assert set(test.data_vars) == {"label", "yx"}  # test patches are never materialised
    store = PatchStore(small_twin.store)
    assert [c["name"] for c in store.classes] == spec.class_names
    assert [tuple(c["color"]) for c in store.classes] == spec.palette
    # sharded: a few dozen files, not one per chunk or per patch
    files = [f for f in small_twin.store.rglob("*") if f.is_file()]
    assert len(files) < 60
    summary = json.loads(small_twin.summary.read_text())
    assert summary["files"] == len(files) and len(summary["sha256"]) == 64


def test_splits_partition_the_official_pixels(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    store = PatchStore(small_twin.store)
    train, val, test = (store.labels(s) for s in ("train", "val", "test"))
    for cid, n in spec.expected_counts("train").items():
        n_val = int((val == cid).sum())
        assert n_val == round(0.2 * n) and int((train == cid).sum()) == n - n_val
    assert np.bincount(test, minlength=16)[1:].tolist() == list(spec.expected_counts("test").values())
    yx = {s: {tuple(p) for p in store.yx(s).tolist()} for s in ("train", "val", "test")}
    assert not yx["train"] & yx["val"] and not yx["train"] & yx["test"] and not yx["val"] & yx["test"]
    with rasterio.open(small_twin.coreg / "labels_train.tif") as ds:
        official = {tuple(p) for p in np.argwhere(ds.read(1) > 0).tolist()}
    assert yx["train"] | yx["val"] == official


def test_validation_carve_out_is_seeded_and_stratified() -> None:
    labels = np.repeat([1, 2, 3], [50, 10, 1])
    a, b = carve_validation(labels, 0.2, seed=3), carve_validation(labels, 0.2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert [int(a[labels == c].sum()) for c in (1, 2, 3)] == [10, 2, 0]
    assert not np.array_equal(a, carve_validation(labels, 0.2, seed=4))


def test_normalisation_uses_training_pixels_only(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    stats = store.attrs["normalisation"]["hsi"]
    with rasterio.open(small_twin.coreg / "hsi.tif") as ds:
        cube = ds.read().astype(np.float64)
    train_yx, val_yx = store.yx("train"), store.yx("val")
    values = cube[:, train_yx[:, 0], train_yx[:, 1]]
    np.testing.assert_allclose(stats["mean"], values.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], values.std(axis=1), rtol=1e-7)
    with_val = np.concatenate([values, cube[:, val_yx[:, 0], val_yx[:, 1]]], axis=1)
    assert not np.allclose(stats["mean"], with_val.mean(axis=1), rtol=1e-6)
    # stored training patches are z-scores: their centre pixels have mean ~0 and std ~1
    centre = np.asarray(store.patches("train", "hsi")[:, :, 5, 5])
    assert abs(centre.mean()) < 1e-3 and abs(centre.std(axis=0).mean() - 1) < 1e-2


def test_scene_served_patches_equal_materialised_ones(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["hsi", "lidar"])
    yx = store.yx("val")
    served = {}
    for pts, primary, auxiliary in scene_batches(store, binding, 17, yx=yx):
        for i, (r, c) in enumerate(pts.tolist()):
            served[(r, c)] = (primary[i], auxiliary[i])
    hsi, lidar = np.asarray(store.patches("val", "hsi")[:]), np.asarray(store.patches("val", "lidar")[:])
    assert len(served) == len(yx)
    for i, (r, c) in enumerate(yx.tolist()):
        np.testing.assert_array_equal(served[(r, c)][0], hsi[i])
        np.testing.assert_array_equal(served[(r, c)][1], lidar[i])
    # a patch centred on the scene corner is zero-padded beyond the edge
    ((_, corner, _),) = scene_batches(store, binding, 1, yx=np.array([[0, 0]], dtype=np.int32))
    half = store.patch_size // 2
    assert (corner[0, :, :half, :] == 0).all() and (corner[0, :, half:, half:] != 0).any()


def test_full_scene_batches_cover_every_valid_pixel_once(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["lidar"])
    seen = np.zeros(store.valid().shape, np.int32)
    for pts, primary, auxiliary in scene_batches(store, binding, 1000):
        seen[pts[:, 0], pts[:, 1]] += 1
        assert primary.shape[1] == auxiliary.shape[1] == 1
    np.testing.assert_array_equal(seen, store.valid().astype(np.int32))


def test_role_filling_feeds_a_lone_modality_into_both_inputs() -> None:
    mods = {"hsi": {"role": "primary", "bands": 144}, "lidar": {"role": "auxiliary", "bands": 1}}
    assert ModalityBinding.build(mods, ["hsi"]) == ModalityBinding(("hsi",), ("hsi",))
    assert ModalityBinding.build(mods, ["lidar"]).channels(mods) == (1, 1)
    assert ModalityBinding.build(mods, ["lidar", "hsi"]).channels(mods) == (144, 1)
    with pytest.raises(ValueError, match="not in the store"):
        ModalityBinding.build(mods, ["sar"])
    # single-stream models opt out: the unselected role stays empty, a (N, 0, P, P) array
    lone = ModalityBinding.build(mods, ["lidar"], fill_missing=False)
    assert lone == ModalityBinding(("lidar",), ()) and lone.channels(mods) == (1, 0)
    primary, auxiliary = lone.bind({"lidar": np.ones((4, 1, 5, 5), np.float32)})
    assert primary.shape == (4, 1, 5, 5) and auxiliary.shape == (4, 0, 5, 5)
    assert ModalityBinding.build(mods, ["hsi", "lidar"], fill_missing=False).channels(mods) == (144, 1)


def test_cached_and_streamed_batches_hold_the_same_samples(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["hsi", "lidar"])
    cached = TrainingBatches([(store, "train")], binding, store.class_ids, 32)
    streamed = TrainingBatches(
        [(store, "train")], binding, store.class_ids, 32, cache_bytes=0, buffer_chunks=2
    )
    assert cached._cache is not None and streamed._cache is None

    def fingerprint(batches: TrainingBatches, seed: int) -> list[tuple[float, int]]:
        rows = []
        for p, a, t in batches.epoch(np.random.default_rng(seed)):
            rows += list(
                zip(
                    (p.sum(axis=(1, 2, 3)) + a.sum(axis=(1, 2, 3))).round(3).tolist(), t.tolist(), strict=True
                )
            )
        return rows

    assert sorted(fingerprint(cached, 0)) == sorted(fingerprint(streamed, 0))
    assert fingerprint(cached, 0) == fingerprint(cached, 0)  # seeded
    assert fingerprint(cached, 0) != fingerprint(cached, 1)
