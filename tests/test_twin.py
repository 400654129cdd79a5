"""The Houston 2013 twin: packaged like the real data, deterministic, and not trivial."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import rasterio

from stages.config import load_dataset
from stages.datasets.envi_roi import read_envi_roi
from stages.datasets.twins.houston2013 import build_layout
from stages.twin import generate_twin
from tests.conftest import SMALL, SmallTwin


def test_archives_have_the_real_names_and_members(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    manifest = json.loads((small_twin.twin / "twin-manifest.json").read_text())
    assert set(manifest["archives"]) == {a["file"] for a in spec.source["archives"]}
    with zipfile.ZipFile(small_twin.twin / "2013_DFTC.zip") as zf:
        names = set(zf.namelist())
    for m in spec.modalities.values():
        assert m.file in names and m.file.replace(".tif", ".hdr") in names
    assert spec.labels["train"] in names


def test_rasters_have_the_real_formats(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    hsi, lidar = spec.modalities["hsi"], spec.modalities["lidar"]
    with rasterio.open(small_twin.raw / hsi.file) as ds:
        assert (ds.count, ds.height, ds.width) == (hsi.bands, spec.height, spec.width)
        assert ds.dtypes[0] == "uint16" and ds.crs.to_epsg() == 32615
        assert abs(ds.transform.a - spec.grid["gsd_m"]) < 1e-9
        cube = ds.read(window=((0, 32), (0, 64)))
    assert 100 < cube.mean() < 10000 and cube.std() > 50
    with rasterio.open(small_twin.raw / lidar.file) as ds:
        assert ds.dtypes[0] == "float32" and ds.count == 1
        dsm = ds.read(1)
    # metres of DSM: terrain around 11 m, buildings and trees tens of metres above it
    assert 5 < np.median(dsm) < 20 and dsm.max() - np.median(dsm) > 8
    header = (small_twin.raw / hsi.file.replace(".tif", ".hdr")).read_text()
    assert f"{hsi.wavelengths_nm[0]:.1f}" in header and f"bands   = {hsi.bands}" in header


def test_roi_files_hold_exactly_the_declared_counts(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    for split in ("train", "test"):
        roi = read_envi_roi(small_twin.raw / spec.labels[split])
        assert (roi.width, roi.height) == (spec.width, spec.height)
        assert [r.name for r in roi.rois] == [c.key for c in spec.classes]
        assert [r.color for r in roi.rois] == [c.color for c in spec.classes]
        counts = {c.id: len(r.rows) for c, r in zip(spec.classes, roi.rois, strict=True)}
        assert counts == spec.expected_counts(split)
    train = read_envi_roi(small_twin.raw / spec.labels["train"])
    test = read_envi_roi(small_twin.raw / spec.labels["test"])
    train_px = {(int(r), int(c)) for roi in train.rois for r, c in zip(roi.rows, roi.cols, strict=True)}
    test_px = {(int(r), int(c)) for roi in test.rois for r, c in zip(roi.rows, roi.cols, strict=True)}
    assert not train_px & test_px


def test_generation_is_deterministic(small_twin: SmallTwin, tmp_path) -> None:
    again = generate_twin(load_dataset(SMALL), tmp_path / "twin")
    first = json.loads((small_twin.twin / "twin-manifest.json").read_text())
    assert again["archives"] == first["archives"]
    assert again["contents"] == first["contents"]


def test_the_layout_has_every_class_as_a_coherent_region() -> None:
    spec = load_dataset("houston2013-twin")
    ids = {c.key: c.id for c in spec.classes}
    canvas = build_layout(spec.height, spec.width, ids, np.random.default_rng([2013, 0]))
    from scipy import ndimage

    for key in ("road", "highway", "commercial", "residential", "water", "tennis_court"):
        mask = canvas.cls == ids[key]
        assert mask.sum() > 0, key
        # spatial coherence: most pixels sit in a connected region of at least 20 pixels
        labels, _ = ndimage.label(mask)
        sizes = np.bincount(labels.ravel())[1:]
        assert sizes[sizes >= 20].sum() > 0.8 * mask.sum(), key
    # roads are lines: each large road segment is long and a few pixels wide
    labels, _ = ndimage.label(canvas.cls == ids["road"])
    for sl in ndimage.find_objects(labels):
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if max(h, w) >= 50:
            assert min(h, w) <= 6 or (labels[sl] > 0).sum() / max(h, w) <= 12


def test_commercial_roofs_share_parking_asphalt_and_differ_only_in_height() -> None:
    """The ambiguity fusion has to resolve is built in, not left to chance."""
    from stages.datasets.twins.houston2013 import CLASS_MATERIALS, MATERIAL_INDEX

    spec = load_dataset("houston2013-twin")
    ids = {c.key: c.id for c in spec.classes}
    assert dict(CLASS_MATERIALS["commercial"])["asphalt_fresh"] >= 0.5
    canvas = build_layout(spec.height, spec.width, ids, np.random.default_rng([2013, 0]))
    same = canvas.material == MATERIAL_INDEX["asphalt_fresh"]
    roofs = same & (canvas.cls == ids["commercial"])
    lots = same & (canvas.cls == ids["parking_lot1"])
    assert roofs.sum() > 500 and lots.sum() > 500
    assert np.median(canvas.elevation[roofs]) - np.median(canvas.elevation[lots]) > 8
