"""The S2FL twins (HS-SAR Berlin, HS-SAR-DSM Augsburg): packaged like the S2FL archive, deterministic,
with the declared classes and train/test maps, Berlin's zero no-data HSI border masked through the
whole pipeline, and both taken end to end by Snakemake."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io
import yaml

from stages.config import DatasetSpec, ParamsError, load_dataset
from stages.coregister import declared_nodata
from stages.data.store import ModalityBinding, PatchStore, scene_batches
from stages.datasets.twins.mat_scene import box, coarse_grid
from stages.twin import generate_twin
from tests.conftest import BuiltTwin, build_scene_twin, run_twin_to_all

TWINS = ["berlin-twin-small", "augsburg-twin-small"]


@pytest.fixture(scope="module", params=TWINS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltTwin:
    """A small twin generated, downloaded over loopback HTTP, co-registered and in a patch store."""
    from stages.patches import build_patch_store

    out = build_scene_twin(request.param, tmp_path_factory.mktemp(request.param))
    build_patch_store(
        out.spec,
        out.coreg,
        out.store,
        val_fraction=0.2,
        split_seed=0,
        chunk_samples=64,
        shard_samples=128,
        threads=1,
    )
    return out


def _border(spec: DatasetSpec) -> np.ndarray:
    """``(H, W)`` bool: the twin's no-data strip as its params describe it (empty without one)."""
    rule = spec.twin.get("nodata_border")
    return box(spec.height, spec.width, rule) if rule else np.zeros((spec.height, spec.width), bool)


def test_label_maps_hold_the_declared_classes_and_counts(built: BuiltTwin) -> None:
    spec = built.spec
    images = {}
    for split in ("train", "test"):
        # the raw .mat maps, read without our reader
        raw = scipy.io.loadmat(built.raw / spec.labels[split])[spec.label_key(split)]
        with rasterio.open(built.coreg / f"labels_{split}.tif") as ds:
            images[split] = ds.read(1)
        assert (images[split] == raw).all(), split  # nothing dropped on the way
        ids, counts = np.unique(raw[raw > 0], return_counts=True)
        assert dict(zip(ids.tolist(), counts.tolist(), strict=True)) == spec.expected_counts(split)
        assert ids.tolist() == [c.id for c in spec.classes]
    assert not ((images["train"] > 0) & (images["test"] > 0)).any()
    counts = json.loads((built.store / "zarr.json").read_text())["attributes"]["split"]["counts"]
    for c in spec.classes:  # the store keeps every labelled pixel: train + val = train, test = test
        assert counts["train"][str(c.id)] + counts["val"][str(c.id)] == spec.expected_counts("train")[c.id]
        assert counts["test"][str(c.id)] == spec.expected_counts("test")[c.id]


def test_mat_files_have_the_real_names_keys_shapes_and_dtypes(built: BuiltTwin) -> None:
    spec = built.spec
    archive = spec.source["archives"][0]
    expected = {m.file for m in spec.modalities.values()} | {spec.labels["train"], spec.labels["test"]}
    with zipfile.ZipFile(built.twin / archive["file"]) as zf:
        assert sorted(zf.namelist()) == sorted(expected)
    for m in spec.modalities.values():
        mat = scipy.io.loadmat(built.raw / m.file)
        assert m.key in mat, m.name
        array = mat[m.key]
        # H x W x C; a one-band modality (Augsburg's DSM) is a 2-D H x W array
        shape = (spec.height, spec.width) if m.bands == 1 else (spec.height, spec.width, m.bands)
        assert array.shape == shape and array.dtype == np.dtype(m.dtype), m.name
    for split in ("train", "test"):
        labels = scipy.io.loadmat(built.raw / spec.labels[split])[spec.label_key(split)]
        assert labels.shape == (spec.height, spec.width) and labels.dtype == np.dtype(spec.labels["dtype"])
    manifest = json.loads((built.twin / "twin-manifest.json").read_text())
    assert set(manifest["archives"]) == {archive["file"]}  # the twin's own checksums, from its generator


def test_generation_is_byte_identical(built: BuiltTwin, tmp_path: Path) -> None:
    again = generate_twin(load_dataset(built.spec.name), tmp_path / "twin")
    first = json.loads((built.twin / "twin-manifest.json").read_text())
    assert again["archives"] == first["archives"] and again["contents"] == first["contents"]


def test_no_data_border_is_masked_everywhere(built: BuiltTwin) -> None:
    """Berlin: the HSI is zero in every band on the border and nowhere else; valid.tif is 0 exactly
    there; no label and no patch centre (train, val, test or map) falls on it."""
    spec = built.spec
    border = _border(spec)
    if spec.name.startswith("berlin"):
        assert border[:, 0].all() and border[-1].all() and 0 < border.mean() < 0.2  # left and bottom
    for name, m in spec.modalities.items():
        array = scipy.io.loadmat(built.raw / m.file)[m.key].reshape(spec.height, spec.width, -1)
        all_zero = (array == 0).all(axis=2)
        if name in (spec.twin.get("nodata_border") or {}).get("modalities", []):
            assert (all_zero == border).all(), name
        else:
            assert not all_zero.any(), name  # e.g. the SAR covers the HSI's border
    with rasterio.open(built.coreg / "valid.tif") as ds:
        valid = ds.read(1).astype(bool)
    assert (valid == ~border).all()
    for split in ("train", "test"):
        with rasterio.open(built.coreg / f"labels_{split}.tif") as ds:
            assert not ds.read(1)[border].any(), split
    store = PatchStore(built.store)
    assert (store.valid() == valid).all()
    for split in ("train", "val", "test"):
        yx = store.yx(split)
        assert len(yx) and not border[yx[:, 0], yx[:, 1]].any(), split
    binding = ModalityBinding.build(store.modalities, list(store.modalities))
    centres = np.concatenate([pts for pts, _, _ in scene_batches(store, binding, 4096)])
    assert len(centres) == valid.sum() and not border[centres[:, 0], centres[:, 1]].any()


@pytest.mark.parametrize("built", ["berlin-twin-small"], indirect=True)
def test_berlin_hsi_is_upsampled_from_a_coarse_grid(built: BuiltTwin) -> None:
    """The HSI is a coarser grid (``low_resolution`` times the size) nearest-upsampled: every data pixel
    equals the others of its coarse pixel, and there are only as many distinct pixels as coarse ones."""
    spec = built.spec
    scale = spec.twin["low_resolution"]["hsi"]
    m = spec.modalities["hsi"]
    hsi = scipy.io.loadmat(built.raw / m.file)[m.key].reshape(spec.height * spec.width, m.bands)
    _, cols_lr, rows_up, cols_up = coarse_grid(spec.height, spec.width, scale)
    coarse_id = (rows_up[:, None] * len(cols_lr) + cols_up[None, :]).ravel()
    data = np.flatnonzero(~_border(spec).ravel())
    _, first, inverse = np.unique(coarse_id[data], return_index=True, return_inverse=True)
    assert np.array_equal(hsi[data], hsi[data[first]][inverse])
    assert len(np.unique(hsi[data], axis=0)) == len(first) < len(data) / 4


@pytest.mark.parametrize("built", ["augsburg-twin-small"], indirect=True)
def test_augsburg_binds_sar_and_dsm_as_one_auxiliary_input(built: BuiltTwin) -> None:
    spec = built.spec
    assert len(spec.modalities_with_role("auxiliary")) == 2
    store = PatchStore(built.store)
    binding = ModalityBinding.build(store.modalities, list(store.modalities))
    assert binding.primary == tuple(spec.modalities_with_role("primary"))
    assert binding.auxiliary == tuple(spec.modalities_with_role("auxiliary"))
    aux_bands = sum(spec.modalities[n].bands for n in binding.auxiliary)
    assert binding.channels(store.modalities)[1] == aux_bands


def test_declared_nodata_rules() -> None:
    """``all_bands`` flags only all-zero spectra; ``any_band`` any zero band; no value flags nothing."""
    spec = load_dataset("berlin-twin-small")
    hsi = spec.modalities["hsi"]
    block = np.ones((3, 2, 2))
    block[:, 0, 0] = 0  # an all-zero spectrum
    block[1, 1, 1] = 0  # one zero band: a value
    assert declared_nodata(block, hsi).tolist() == [[True, False], [False, False]]
    any_band = type(hsi)(**{**hsi.__dict__, "nodata_rule": "any_band"})
    assert declared_nodata(block, any_band).tolist() == [[True, False], [False, True]]
    assert not declared_nodata(block, spec.modalities["sar"]).any()


def test_nodata_rule_needs_a_value(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    raw = yaml.safe_load((Path(__file__).parents[1] / "params/datasets/berlin.yaml").read_text())
    del raw["modalities"]["hsi"]["nodata"]
    (datasets / "berlin.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="nodata_rule needs"):
        load_dataset("berlin", root=tmp_path)


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("name", TWINS)
def test_snakemake_runs_the_twin_end_to_end(name: str, tmp_path: Path) -> None:
    results = run_twin_to_all(tmp_path, name)
    metrics = json.loads((results / "metrics.json").read_text())
    assert "two_branch_cnn" in metrics
    n_classes = load_dataset(name).n_classes
    # measured: Berlin 0.96, Augsburg 0.72 (chance 1/8, 1/7)
    assert metrics["two_branch_cnn"]["oa_mean"] > 2 / n_classes
    assert (results / "all" / "table.md").is_file()
    # the predicted map covers every pixel with data and nothing on the no-data border
    with rasterio.open(results / "runs" / "two_branch_cnn" / "seed0" / "map.tif") as ds:
        predicted = ds.read(1)
    assert ((predicted == 0) == _border(load_dataset(name))).all()
