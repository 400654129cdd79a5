"""Houston 2018: the twin is packaged like phase2.zip (a PCIDSK HSI at 1 m, LiDAR GeoTIFFs at 0.5 m over
a larger footprint, the ground truth on a window of it), and co-registration puts both sensors on the
ground truth's grid through their georeferencing alone: the HSI x2, the LiDAR cropped."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine

from stages.config import ParamsError, load_dataset
from stages.datasets.readers import SourceError, stack_vrt
from stages.twin import generate_twin
from tests.conftest import BuiltTwin, build_scene_twin, run_twin_to_all

NAME = "houston2018-twin-small"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltTwin:
    """The small twin generated, downloaded over loopback HTTP and co-registered."""
    return build_scene_twin(NAME, tmp_path_factory.mktemp(NAME))


def _truth_window(built: BuiltTwin) -> tuple[int, int, int, int]:
    r0, c0, h, w = np.load(built.twin / "_truth.npz")["window"].tolist()
    return r0, c0, h, w


def test_small_twin_inherits_through_the_full_twin() -> None:
    small, real = load_dataset(NAME), load_dataset("houston2018")
    assert small.bases == ("houston2018-twin", "houston2018")
    assert small.class_names == real.class_names and small.n_classes == 20
    assert small.modalities["lidar"].paths == real.modalities["lidar"].paths
    # the real per-class totals are unknown: only the landfuse training counts are declared
    assert real.expected_counts("train") == {c.id: 500 for c in real.classes}
    assert real.expected_counts("test") is None
    full = load_dataset("houston2018-twin")
    assert full.expected_counts("test")[9] == full.twin["test_counts"]["non_residential_buildings"]
    assert small.expected_counts("test")[9] == round(
        full.twin["test_counts"]["non_residential_buildings"] * 0.002
    )


def test_archive_holds_the_real_members_in_their_formats(built: BuiltTwin) -> None:
    spec = built.spec
    with zipfile.ZipFile(built.twin / "phase2.zip") as zf:
        names = set(zf.namelist())
    expected = {spec.modalities["hsi"].file, *spec.modalities["lidar"].paths, spec.labels["train"]}
    assert names == expected
    assert set(spec.source["archives"][0]["contents"]) == expected
    footprint_rows, footprint_cols = spec.twin["footprint_m"]
    with rasterio.open(built.raw / spec.modalities["hsi"].file) as ds:
        assert ds.driver == "PCIDSK" and ds.count == 50 and set(ds.dtypes) == {"uint16"}
        assert ds.res == (1.0, 1.0) and ds.shape == (footprint_rows, footprint_cols)
        assert ds.crs.to_epsg() == 26915
    for rel in spec.modalities["lidar"].paths:
        with rasterio.open(built.raw / rel) as ds:
            assert (ds.driver, ds.count, ds.dtypes[0], ds.res) == ("GTiff", 1, "float32", (0.5, 0.5))
            assert ds.shape == (2 * footprint_rows, 2 * footprint_cols)
    with rasterio.open(built.raw / spec.labels["train"]) as ds:
        assert (ds.dtypes[0], ds.res, ds.shape) == ("uint8", (0.5, 0.5), (spec.height, spec.width))
        # the ground truth starts label_offset_m inside the footprint
        row_m, col_m = spec.twin["label_offset_m"]
        east, north = spec.twin["origin"]
        assert (ds.transform.c, ds.transform.f) == (east + col_m, north - row_m)


def test_generation_is_byte_identical(built: BuiltTwin, tmp_path: Path) -> None:
    again = generate_twin(built.spec, tmp_path / "again")
    first = json.loads((built.twin / "twin-manifest.json").read_text())
    assert again["archives"] == first["archives"] and again["contents"] == first["contents"]


def test_coregistration_puts_both_sensors_on_the_ground_truth_grid(built: BuiltTwin) -> None:
    spec = built.spec
    sidecar = json.loads((built.coreg / "grid.json").read_text())
    assert sidecar["reference"] == "labels"
    assert sidecar["grid"]["height"] == spec.height and sidecar["grid"]["width"] == spec.width
    assert sidecar["grid"]["gsd"] == [0.5, 0.5] and sidecar["valid_fraction"] == 1.0
    r0, c0, h, w = _truth_window(built)  # the window in 1 m pixels
    with rasterio.open(built.raw / spec.modalities["hsi"].file) as ds:
        source = ds.read(window=((r0, r0 + h), (c0, c0 + w)))
    with rasterio.open(built.coreg / "hsi.tif") as ds:
        hsi = ds.read()
    assert hsi.shape == (50, spec.height, spec.width)
    # nearest x2: every 1 m pixel becomes a 2 x 2 block of the source's values
    assert np.array_equal(hsi, np.repeat(np.repeat(source, 2, axis=1), 2, axis=2))
    with rasterio.open(built.coreg / "lidar.tif") as ds:
        lidar = ds.read()
        assert list(ds.descriptions) == list(spec.modalities["lidar"].band_names)
    for band, rel in enumerate(spec.modalities["lidar"].paths):
        with rasterio.open(built.raw / rel) as ds:
            crop = ds.read(1, window=((2 * r0, 2 * r0 + spec.height), (2 * c0, 2 * c0 + spec.width)))
        np.testing.assert_array_equal(lidar[band], crop)  # same pixel size: a crop, values untouched
    assert sidecar["modalities"]["lidar"]["source"] == list(spec.modalities["lidar"].paths)
    assert len(sidecar["modalities"]["lidar"]["source_sha256"]) == 5


def test_labels_hold_the_declared_classes_and_split(built: BuiltTwin) -> None:
    spec = built.spec
    sidecar = json.loads((built.coreg / "grid.json").read_text())
    for split in ("train", "test"):
        counts = {int(k): v for k, v in sidecar["labels"][split].items()}
        assert counts == spec.expected_counts(split)
    assert [c["name"] for c in sidecar["classes"]] == spec.class_names
    # the labelled pixels are the twin's classes, on the grid the twin drew them on
    truth = np.load(built.twin / "_truth.npz")
    r0, c0, h, w = _truth_window(built)
    cls = np.repeat(np.repeat(truth["cls"][r0 : r0 + h, c0 : c0 + w], 2, axis=0), 2, axis=1)
    with (
        rasterio.open(built.coreg / "labels_train.tif") as a,
        rasterio.open(built.coreg / "labels_test.tif") as b,
    ):
        train, test = a.read(1), b.read(1)
    labelled = (train > 0) | (test > 0)
    assert np.array_equal(labelled, truth["labelled"])
    assert np.array_equal(np.maximum(train, test)[labelled], cls[labelled])


def test_lidar_separates_what_the_spectra_confuse(built: BuiltTwin) -> None:
    """Roads and highways share asphalt spectra; the DSM above the bare earth tells the elevated
    highways apart (why the twin needs the LiDAR)."""
    spec = built.spec
    ids = {c.key: c.id for c in spec.classes}
    with rasterio.open(built.coreg / "lidar.tif") as ds:
        dsm = ds.read(1)
    truth = np.load(built.twin / "_truth.npz")
    r0, c0, h, w = _truth_window(built)
    cls = np.repeat(np.repeat(truth["cls"][r0 : r0 + h, c0 : c0 + w], 2, axis=0), 2, axis=1)
    roads, highways = dsm[cls == ids["roads"]], dsm[cls == ids["highways"]]
    assert np.median(highways) - np.median(roads) > 3.0


def test_a_stacked_file_on_another_grid_is_rejected(tmp_path: Path) -> None:
    prof = dict(driver="GTiff", count=1, dtype="float32", height=8, width=8, crs="EPSG:26915")
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    with rasterio.open(a, "w", transform=Affine(0.5, 0, 0, 0, -0.5, 8), **prof) as dst:
        dst.write(np.zeros((1, 8, 8), np.float32))
    with rasterio.open(b, "w", transform=Affine(1.0, 0, 0, 0, -1.0, 8), **prof) as dst:
        dst.write(np.ones((1, 8, 8), np.float32))
    with pytest.raises(SourceError, match=r"b\.tif: its grid .* differs from .*a\.tif"):
        stack_vrt([a, b])
    with rasterio.open(stack_vrt([a, a])) as ds:  # the good case reads as one 2-band raster
        assert ds.count == 2 and ds.read().shape == (2, 8, 8)


def test_params_rules_for_labels_as_reference_and_file_stacks(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "params" / "datasets" / "houston2018.yaml").read_text())
    root = tmp_path / "params"
    (root / "datasets").mkdir(parents=True)

    def check(mutate, match: str) -> None:
        bad = json.loads(json.dumps(data))
        mutate(bad)
        (root / "datasets" / "houston2018.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ParamsError, match=match):
            load_dataset("houston2018", root=root)

    check(lambda d: d["labels"].update(format="mat"), "grid.reference `labels`")
    check(lambda d: d["modalities"]["lidar"].update(bands=4), "stacks single-band GeoTIFFs")
    check(lambda d: d["grid"].update(reference="dsm"), "neither a modality nor `labels`")


@pytest.mark.e2e
def test_snakemake_runs_the_twin_end_to_end(tmp_path: Path) -> None:
    results = run_twin_to_all(tmp_path, NAME)
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["two_branch_cnn"]["oa_mean"] > 0.75  # measured 0.91; chance is 1/20
    with rasterio.open(results / "runs" / "two_branch_cnn" / "seed0" / "map.tif") as ds:
        assert ds.shape == (96, 256) and ds.res == (0.5, 0.5)
