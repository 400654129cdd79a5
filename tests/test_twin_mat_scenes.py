"""The MATLAB scene twins (Trento, MUUFL Gulfport): packaged like the real archives, deterministic,
split as the params say, and taken through the whole pipeline by Snakemake."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import scipy.io

from stages.config import load_dataset
from stages.datasets.readers import SourceError, read_mat
from stages.datasets.splits import SplitError, per_class_counts_mask
from stages.twin import generate_twin
from tests.conftest import BuiltTwin, build_scene_twin, run_twin_to_all

TWINS = ["trento-twin-small", "muufl-twin-small"]


@pytest.fixture(scope="module", params=TWINS)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltTwin:
    """A small twin generated, downloaded over loopback HTTP and co-registered."""
    return build_scene_twin(request.param, tmp_path_factory.mktemp(request.param))


def test_label_rasters_hold_the_declared_classes_and_split(built: BuiltTwin) -> None:
    spec = built.spec
    images = {}
    for split in ("train", "test"):
        with rasterio.open(built.coreg / f"labels_{split}.tif") as ds:
            images[split] = ds.read(1)
        ids, counts = np.unique(images[split][images[split] > 0], return_counts=True)
        assert dict(zip(ids.tolist(), counts.tolist(), strict=True)) == spec.expected_counts(split)
        assert sorted(ids.tolist()) == [c.id for c in spec.classes]
    assert not ((images["train"] > 0) & (images["test"] > 0)).any()
    grid = json.loads((built.coreg / "grid.json").read_text())
    assert grid["grid"]["height"] == spec.height and grid["grid"]["width"] == spec.width


def test_mat_files_have_the_real_variables_dtypes_and_layout(built: BuiltTwin) -> None:
    spec = built.spec
    for m in spec.modalities.values():
        array = read_mat(built.raw / m.file, m.key)
        assert array.shape == (spec.height, spec.width, m.bands), m.name  # H x W x C
        assert array.dtype == np.dtype(m.dtype), m.name
    labels = read_mat(built.raw / spec.labels["train"], spec.labels["key"])
    assert labels.shape == (spec.height, spec.width) and labels.dtype == np.dtype(spec.labels["dtype"])
    assert set(np.unique(labels).tolist()) == {spec.labels["unlabelled"]} | {c.id for c in spec.classes}
    # every member the params list, at its real path, and nothing else
    archive = spec.source["archives"][0]
    with zipfile.ZipFile(built.twin / archive["file"]) as zf:
        assert sorted(zf.namelist()) == sorted(archive["contents"])
    manifest = json.loads((built.twin / "twin-manifest.json").read_text())
    assert manifest["archives"][archive["file"]] != archive["sha256"]  # the twin's own checksums


def test_labelled_pixels_form_coherent_regions(built: BuiltTwin) -> None:
    """Ground truth is drawn as patches inside fields, not scattered pixels."""
    from scipy import ndimage

    truth = np.load(built.twin / "_truth.npz")
    for c in built.spec.classes:
        mask = truth["labelled"] & (truth["cls"] == c.id)
        components, _ = ndimage.label(mask)
        sizes = np.bincount(components.ravel())[1:]
        assert sizes[sizes >= 10].sum() >= 0.8 * mask.sum(), c.key


def test_muufl_struct_is_laid_out_as_matlab_has_it(tmp_path: Path) -> None:
    """``hsi`` is a 1 x 1 struct holding Data, Lidar(1).z, sceneLabels and info (read without our reader)."""
    spec = load_dataset("muufl-twin-small")
    generate_twin(spec, tmp_path / "twin")
    with zipfile.ZipFile(tmp_path / "twin" / spec.source["archives"][0]["file"]) as zf:
        mat = scipy.io.loadmat(zf.open(spec.modalities["hsi"].file), struct_as_record=False)
    assert mat["hsi"].shape == (1, 1)
    hsi = mat["hsi"][0, 0]
    assert {"Data", "Lidar", "sceneLabels", "info"} <= set(hsi._fieldnames)
    assert hsi.Data.shape == (spec.height, spec.width, spec.modalities["hsi"].bands)
    assert hsi.Lidar.shape == (1, 1) and hsi.Lidar[0, 0].z.shape == (spec.height, spec.width, 2)
    labels = hsi.sceneLabels[0, 0]
    assert labels.labels.min() == -1
    assert [str(np.squeeze(n)) for n in labels.Materials_Type.ravel()] == spec.class_names
    assert hsi.info[0, 0].wavelength.size == spec.modalities["hsi"].bands


def test_generation_is_byte_identical(built: BuiltTwin, tmp_path: Path) -> None:
    again = generate_twin(load_dataset(built.spec.name), tmp_path / "twin")
    first = json.loads((built.twin / "twin-manifest.json").read_text())
    assert again["archives"] == first["archives"] and again["contents"] == first["contents"]


def test_per_class_split_is_seeded_and_exact() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (40, 50)).astype(np.uint8)
    counts = {1: 10, 2: 0, 3: 25}
    a = per_class_counts_mask(labels, counts, seed=3)
    assert (a == per_class_counts_mask(labels, counts, seed=3)).all()
    assert not (a == per_class_counts_mask(labels, counts, seed=4)).all()
    assert {c: int((a & (labels == c)).sum()) for c in counts} == counts
    assert not (a & (labels == 0)).any()


def test_read_mat_indexes_struct_arrays(tmp_path: Path) -> None:
    """``hsi.Lidar[1].z`` is MATLAB's ``hsi.Lidar(2).z``; ``[0]`` also reads a 1 x 1 struct array."""
    lidar = np.empty((1, 2), dtype=[("z", object)])
    lidar[0, 0]["z"], lidar[0, 1]["z"] = np.zeros((3, 4, 2)), np.ones((3, 4, 2))
    scipy.io.savemat(tmp_path / "a.mat", {"hsi": {"Lidar": lidar, "One": {"z": np.full((3, 4), 2.0)}}})
    assert read_mat(tmp_path / "a.mat", "hsi.Lidar[1].z").sum() == 24
    assert read_mat(tmp_path / "a.mat", "hsi.Lidar[0].z").sum() == 0
    assert read_mat(tmp_path / "a.mat", "hsi.One[0].z").shape == (3, 4)
    with pytest.raises(SourceError, match="no variable"):
        read_mat(tmp_path / "a.mat", "hsi.Lidar[2].z")


def _save_v73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 behind a 512-byte MATLAB header, column-major
    arrays (so HDF5 sees the axes reversed), a 1 x 1 struct as a group."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as fh:
        for key, array in arrays.items():
            fh.create_dataset(key, data=np.ascontiguousarray(array.T))
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015 HDF5 schema 1.00"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(124) + b"\x00\x02IM")


def test_read_mat_v73_struct_paths(tmp_path: Path) -> None:
    cube = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)  # H x W x C as MATLAB holds it
    z = np.arange(3 * 4 * 2, dtype=np.float64).reshape(3, 4, 2)
    _save_v73(tmp_path / "v73.mat", {"hsi/Data": cube, "hsi/Lidar/z": z})
    with pytest.raises(NotImplementedError):  # scipy does not read v7.3: the h5py path is taken
        scipy.io.loadmat(tmp_path / "v73.mat")
    np.testing.assert_array_equal(read_mat(tmp_path / "v73.mat", "hsi.Data"), cube)
    np.testing.assert_array_equal(read_mat(tmp_path / "v73.mat", "hsi.Lidar[0].z"), z)
    with pytest.raises(SourceError, match=r"no variable `hsi\.Gone`"):
        read_mat(tmp_path / "v73.mat", "hsi.Gone")
    with pytest.raises(SourceError, match=r"only index \[0\]"):
        read_mat(tmp_path / "v73.mat", "hsi.Lidar[1].z")


def test_split_needs_enough_labelled_pixels() -> None:
    labels = np.zeros((8, 8), np.uint8)
    labels[:2] = 1
    with pytest.raises(SplitError, match="class 1: 16 labelled pixels"):
        per_class_counts_mask(labels, {1: 17}, seed=0)


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
    assert metrics["two_branch_cnn"]["oa_mean"] > 2 / n_classes  # measured: Trento 0.86, MUUFL 0.93
    assert (results / "all" / "table.md").is_file()


def test_band_centres_come_from_the_params_or_the_file(built: BuiltTwin) -> None:
    """Trento lists its wavelengths in the params; MUUFL's live in the .mat (hsi.info.wavelength) and
    co-registration records them from there."""
    sidecar = json.loads((built.coreg / "grid.json").read_text())
    hsi = built.spec.modalities["hsi"]
    recorded = sidecar["modalities"]["hsi"]["wavelengths_nm"]
    if hsi.wavelengths_nm:
        assert recorded == list(hsi.wavelengths_nm)
    else:
        assert hsi.wavelengths_key == "hsi.info.wavelength"
        lo, hi = built.spec.twin["wavelength_range_nm"]
        np.testing.assert_allclose(recorded, np.linspace(lo, hi, hsi.bands))
