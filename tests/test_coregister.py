"""Co-registration: resampling onto the reference grid, shift estimation, labels and the sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.transform import from_origin
from scipy import ndimage

from stages.config import load_dataset
from stages.coregister import coregister, estimate_shift
from stages.datasets.envi_roi import Roi, write_envi_roi
from tests.conftest import SMALL, SmallTwin


def test_twin_modalities_share_the_reference_grid(small_twin: SmallTwin) -> None:
    spec = load_dataset(SMALL)
    sidecar = json.loads((small_twin.coreg / "grid.json").read_text())
    assert (sidecar["grid"]["height"], sidecar["grid"]["width"]) == (spec.height, spec.width)
    assert sidecar["grid"]["crs"] == "EPSG:32615"
    for name, m in sidecar["modalities"].items():
        assert m["resampling"] == "none", name  # same grid: copied, not resampled
        assert abs(m["shift_px"]["dy"]) < 0.3 and abs(m["shift_px"]["dx"]) < 0.3, name
    assert sidecar["modalities"]["hsi"]["wavelengths_nm"][0] == spec.modalities["hsi"].wavelengths_nm[0]
    assert sidecar["labels"]["train"] == {str(k): v for k, v in spec.expected_counts("train").items()}
    with (
        rasterio.open(small_twin.coreg / "hsi.tif") as ds,
        rasterio.open(small_twin.raw / spec.modalities["hsi"].file) as src,
    ):
        np.testing.assert_array_equal(ds.read(5), src.read(5))
    with rasterio.open(small_twin.coreg / "labels_test.tif") as ds:
        assert ds.colormap(1)[1][:3] == spec.classes[0].color
        assert ds.tags(1)["class_names"].split(",") == spec.class_names


def test_phase_correlation_recovers_a_sub_pixel_shift() -> None:
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.standard_normal((256, 256)), 2)
    moved = ndimage.shift(image, (-1.6, 0.7), order=3, mode="wrap")
    est = estimate_shift(image, moved)
    assert est["dy"] == pytest.approx(1.6, abs=0.1) and est["dx"] == pytest.approx(-0.7, abs=0.1)


def _custom_dataset(root: Path, raw: Path) -> str:
    """A 2-modality dataset whose auxiliary raster has half the resolution and an offset origin."""
    h, w, gsd = 40, 60, 1.0
    x0, y0 = 500000.0, 4000000.0
    raw.mkdir(parents=True)
    cols = np.arange(w, dtype=np.float32)
    ramp = np.broadcast_to(cols, (h, w))
    with rasterio.open(
        raw / "ref.tif",
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=3,
        dtype="float32",
        transform=from_origin(x0, y0, gsd, gsd),
        crs="EPSG:32633",
    ) as dst:
        dst.write(np.stack([ramp, ramp * 2, ramp + 1]))
    # auxiliary: 2 m pixels, value = easting of the pixel centre, starting 4 m west of the reference
    aw, ah = w // 2 + 4, h // 2 + 2
    east = x0 - 4 + 2 * (np.arange(aw) + 0.5)
    with rasterio.open(
        raw / "aux.tif",
        "w",
        driver="GTiff",
        height=ah,
        width=aw,
        count=1,
        dtype="float32",
        transform=from_origin(x0 - 4, y0 + 2, 2 * gsd, 2 * gsd),
        crs="EPSG:32633",
    ) as dst:
        dst.write(np.broadcast_to(east.astype(np.float32), (ah, aw))[None])
    labels = [
        Roi("a", (255, 0, 0), np.array([1, 2]), np.array([1, 2])),
        Roi("b", (0, 0, 255), np.array([30]), np.array([50])),
    ]
    write_envi_roi(raw / "train.txt", labels, width=w, height=h)
    write_envi_roi(
        raw / "test.txt",
        [
            Roi("a", (255, 0, 0), np.array([5]), np.array([5])),
            Roi("b", (0, 0, 255), np.array([6]), np.array([6])),
        ],
        width=w,
        height=h,
    )
    spec = {
        "name": "custom",
        "title": "two grids",
        "task": "scene",
        "source": {"kind": "manual"},
        "grid": {"height": h, "width": w, "gsd_m": gsd, "reference": "ref"},
        "modalities": {
            "ref": {"role": "primary", "file": "ref.tif", "format": "geotiff", "bands": 3},
            "aux": {"role": "auxiliary", "file": "aux.tif", "format": "geotiff", "bands": 1},
        },
        "labels": {"format": "envi_roi", "train": "train.txt", "test": "test.txt"},
        "patch_size": 5,
        "classes": [
            {"id": 1, "key": "a", "name": "A", "color": [255, 0, 0]},
            {"id": 2, "key": "b", "name": "B", "color": [0, 0, 255]},
        ],
    }
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "custom.yaml").write_text(yaml.safe_dump(spec))
    return "custom"


def test_a_coarser_offset_modality_is_resampled_bilinearly(tmp_path: Path) -> None:
    name = _custom_dataset(tmp_path / "params", tmp_path / "raw")
    spec = load_dataset(name, root=tmp_path / "params")
    sidecar = coregister(spec, tmp_path / "raw", tmp_path / "coreg", threads=1)
    assert sidecar["modalities"]["aux"]["resampling"] == "bilinear"
    assert sidecar["modalities"]["ref"]["resampling"] == "none"
    with rasterio.open(tmp_path / "coreg" / "aux.tif") as ds:
        assert ds.dtypes[0] == "float32" and (ds.height, ds.width) == (40, 60)
        aux = ds.read(1)
    # the auxiliary value is the easting, a linear function: bilinear resampling reproduces it
    # exactly at each reference pixel centre (away from the edge half-pixel)
    expected = 500000.0 + np.arange(60) + 0.5
    np.testing.assert_allclose(aux[5:-5, 2:-2], np.broadcast_to(expected[2:-2], (30, 56)), atol=1e-3)
    with rasterio.open(tmp_path / "coreg" / "labels_train.tif") as ds:
        labels = ds.read(1)
    assert labels[1, 1] == 1 and labels[30, 50] == 2 and labels.sum() == 1 + 1 + 2


def test_the_stages_gdal_block_cache_is_counted_in_bytes() -> None:
    """rasterio hands GDAL_CACHEMAX to GDALSetCacheMax (bytes): 256 meant as megabytes was a 256-byte
    cache, which made warping a row-blocked .pix ~100x slower (benchmarks/bench_coregister.py)."""
    from rasterio.env import get_gdal_config

    from stages.io.raster import GDAL_CACHE_BYTES

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        assert get_gdal_config("GDAL_CACHEMAX") >= 64 * 2**20
