"""Bring your own data: a ``source.kind: custom`` scene described only by a params file.

The scene (written by :func:`make_scene`, also runnable as ``python -m tests.test_custom_dataset DIR``
to produce the files params/datasets/custom-example.yaml points at): a 20-band HSI GeoTIFF of
60 x 80 pixels in UTM 32N (EPSG:32632, 2 m), a 2-band SAR GeoTIFF in WGS 84 (EPSG:4326) on a coarser
grid covering the same area, a DSM ``.npy`` already on the HSI grid, and train/test label GeoTIFFs on
the HSI grid with four separable classes in vertical bands.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

from stages.config import ParamsError, load_dataset
from stages.datasets.readers import SourceError
from stages.download import RECEIPT, LocalDataError, download_dataset
from stages.io.hashing import sha256_file
from tests.conftest import ROOT, copy_project, run, shrink_to_test_size

NAME = "custom-example"
EXAMPLE = ROOT / "params" / "datasets" / f"{NAME}.yaml"
H, W, BANDS = 60, 80, 20
HSI_CRS = CRS.from_epsg(32632)
HSI_TRANSFORM = Affine(2.0, 0, 500_000.0, 0, -2.0, 5_100_120.0)
N_CLASSES = 4
TRAIN_PER_CLASS, TEST_PER_CLASS = 60, 60


@dataclass(frozen=True)
class Scene:
    hsi: Path
    sar: Path
    dsm: Path
    train: Path
    test: Path
    counts: dict[str, dict[int, int]]


def _class_map() -> np.ndarray:
    """Four vertical bands of 20 columns: class ids 1..4."""
    return np.repeat(np.arange(1, N_CLASSES + 1), W // N_CLASSES)[None, :].repeat(H, 0).astype(np.uint8)


def make_scene(out: Path | str, seed: int = 0) -> Scene:
    """Write the example scene into ``out`` and return its paths and the label counts drawn."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = _class_map()
    spectra = rng.uniform(0.1, 0.9, (N_CLASSES + 1, BANDS)).astype(np.float32)
    hsi = spectra[classes].transpose(2, 0, 1) + 0.03 * rng.standard_normal((BANDS, H, W)).astype(np.float32)
    geo = {"crs": HSI_CRS, "transform": HSI_TRANSFORM, "driver": "GTiff"}
    with rasterio.open(out / "hsi.tif", "w", width=W, height=H, count=BANDS, dtype="float32", **geo) as dst:
        dst.write(hsi.astype(np.float32))

    # SAR in WGS 84 at about 4 m, over the HSI footprint plus a margin; each pixel takes the class of
    # the HSI pixel under its centre (the nearest one outside the footprint)
    bounds = transform_bounds(HSI_CRS, "EPSG:4326", *rasterio.transform.array_bounds(H, W, HSI_TRANSFORM))
    sh, sw = 34, 44
    margin_x, margin_y = (bounds[2] - bounds[0]) * 0.05, (bounds[3] - bounds[1]) * 0.05
    sar_transform = rasterio.transform.from_bounds(
        bounds[0] - margin_x, bounds[1] - margin_y, bounds[2] + margin_x, bounds[3] + margin_y, sw, sh
    )
    rows, cols = np.mgrid[0:sh, 0:sw]
    lon, lat = rasterio.transform.xy(sar_transform, rows.ravel(), cols.ravel())
    x, y = warp_points("EPSG:4326", HSI_CRS, lon, lat)
    r, c = rasterio.transform.rowcol(HSI_TRANSFORM, x, y)
    cls = classes[np.clip(np.asarray(r), 0, H - 1), np.clip(np.asarray(c), 0, W - 1)].reshape(sh, sw)
    backscatter = np.array([[0, 0], [-22, -28], [-8, -14], [-3, -6], [-14, -20]], np.float32)
    sar = backscatter[cls].transpose(2, 0, 1) + 0.5 * rng.standard_normal((2, sh, sw)).astype(np.float32)
    with rasterio.open(
        out / "sar_wgs84.tif",
        "w",
        driver="GTiff",
        width=sw,
        height=sh,
        count=2,
        dtype="float32",
        crs="EPSG:4326",
        transform=sar_transform,
    ) as dst:
        dst.write(sar)

    heights = np.array([0, 0.0, 12.0, 20.0, 1.0], np.float32)
    dsm = heights[classes][None] + 0.2 * rng.standard_normal((1, H, W)).astype(np.float32)
    np.save(out / "dsm.npy", dsm.astype(np.float32))

    # labels: disjoint random pixels per class, away from the class borders
    train, test = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    for k in range(1, N_CLASSES + 1):
        rr, cc = np.nonzero(classes == k)
        inner = (cc % (W // N_CLASSES) >= 2) & (cc % (W // N_CLASSES) < W // N_CLASSES - 2)
        pick = rng.permutation(np.flatnonzero(inner))[: TRAIN_PER_CLASS + TEST_PER_CLASS]
        train[rr[pick[:TRAIN_PER_CLASS]], cc[pick[:TRAIN_PER_CLASS]]] = k
        test[rr[pick[TRAIN_PER_CLASS:]], cc[pick[TRAIN_PER_CLASS:]]] = k
    for split, image in (("train", train), ("test", test)):
        with rasterio.open(
            out / f"{split}.tif", "w", width=W, height=H, count=1, dtype="uint8", **geo
        ) as dst:
            dst.write(image, 1)
    counts = {
        "train": dict.fromkeys(range(1, N_CLASSES + 1), TRAIN_PER_CLASS),
        "test": dict.fromkeys(range(1, N_CLASSES + 1), TEST_PER_CLASS),
    }
    return Scene(
        out / "hsi.tif", out / "sar_wgs84.tif", out / "dsm.npy", out / "train.tif", out / "test.tif", counts
    )


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Scene]:
    """A minimal project root in tmp_path: the example params file and the scene it points at."""
    params = tmp_path / "params" / "datasets"
    params.mkdir(parents=True)
    shutil.copy(EXAMPLE, params / EXAMPLE.name)
    return tmp_path, make_scene(tmp_path / "data" / NAME)


def _spec(root: Path):
    return load_dataset(NAME, root=root / "params")


# --------------------------------------------------------------------------------------------------
# Params
# --------------------------------------------------------------------------------------------------


def test_example_params_fill_ids_keys_colours_and_stable_names(project: tuple[Path, Scene]) -> None:
    root, scene = project
    spec = _spec(root)
    assert spec.is_custom and spec.declared_shape is None
    assert [(c.id, c.key) for c in spec.classes] == [
        (1, "water"),
        (2, "trees"),
        (3, "buildings"),
        (4, "bare_soil"),
    ]
    assert len(set(spec.palette)) == N_CLASSES and spec.palette == _spec(root).palette  # deterministic
    assert {m.name: m.file for m in spec.modalities.values()} == {
        "hsi": "hsi.tif",
        "sar": "sar.tif",
        "dsm": "dsm.npy",
    }
    assert (
        spec.custom_sources["dsm.npy"] == scene.dsm and spec.custom_sources["labels_test.tif"] == scene.test
    )
    assert spec.expected_counts("train") is None


def test_multiband_npy_without_layout_is_rejected(project: tuple[Path, Scene]) -> None:
    root, _ = project
    path = root / "params" / "datasets" / f"{NAME}.yaml"
    data = yaml.safe_load(path.read_text())
    data["modalities"]["dsm"].update(bands=2, band_names=["a", "b"])
    del data["modalities"]["dsm"]["layout"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match="layout: chw"):
        _spec(root)


def test_existing_datasets_still_need_a_grid_size(tmp_path: Path) -> None:
    params = tmp_path / "params" / "datasets"
    params.mkdir(parents=True)
    data = yaml.safe_load((ROOT / "params" / "datasets" / "houston2013.yaml").read_text())
    del data["grid"]["height"]
    (params / "houston2013.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match=r"grid\.height and grid\.width are required"):
        load_dataset("houston2013", root=tmp_path / "params")


# --------------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------------


def test_download_copies_and_records_sha256(project: tuple[Path, Scene]) -> None:
    root, scene = project
    out = root / "data" / "raw" / NAME
    receipt = download_dataset(_spec(root), out)
    assert json.loads((out / RECEIPT).read_text()) == receipt and receipt["source"] == "custom"
    by_file = {i["file"]: i for i in receipt["inputs"]}
    assert set(by_file) == {"hsi.tif", "sar.tif", "dsm.npy", "labels_train.tif", "labels_test.tif"}
    assert by_file["dsm.npy"]["sha256"] == sha256_file(scene.dsm) == receipt["files"]["dsm.npy"]
    assert by_file["hsi.tif"]["path"] == str(scene.hsi)  # outside the project root: absolute
    copied = out / "hsi.tif"
    assert copied.is_file() and not copied.is_symlink() and copied.stat().st_ino != scene.hsi.stat().st_ino
    again = download_dataset(_spec(root), out)
    assert again == receipt  # deterministic receipt


def test_download_rejects_a_missing_file_and_writes_nothing(project: tuple[Path, Scene]) -> None:
    root, scene = project
    scene.sar.unlink()
    out = root / "data" / "raw" / NAME
    with pytest.raises(LocalDataError, match=r"sar_wgs84\.tif: no such file.*check the `path:`"):
        download_dataset(_spec(root), out)
    assert not out.exists() and not list(out.parent.glob(f".{NAME}*"))


def test_download_rejects_an_npy_off_the_reference_grid(project: tuple[Path, Scene]) -> None:
    root, scene = project
    out = root / "data" / "raw" / NAME
    download_dataset(_spec(root), out)
    before = sha256_file(out / RECEIPT)
    np.save(scene.dsm, np.zeros((1, H - 1, W), np.float32))
    with pytest.raises(
        LocalDataError, match=r"dsm\.npy: modality `dsm` is 59 x 80 pixels without georef.*60 x 80"
    ):
        download_dataset(_spec(root), out)
    assert sha256_file(out / RECEIPT) == before  # the previous output is left as it was
    np.save(scene.dsm, np.zeros((3, H, W), np.float32))
    with pytest.raises(LocalDataError, match=r"dsm\.npy: read with layout chw .* has 3 bands.*bands is 1"):
        download_dataset(_spec(root), out)


def test_download_rejects_a_reference_that_nothing_can_be_warped_onto(project: tuple[Path, Scene]) -> None:
    root, _ = project
    path = root / "params" / "datasets" / f"{NAME}.yaml"
    path.write_text(path.read_text().replace("reference: hsi", "reference: dsm"))
    with pytest.raises(LocalDataError, match=r"sar_wgs84\.tif: modality `sar` is 34 x 44.*no georeferencing"):
        download_dataset(_spec(root), root / "data" / "raw" / NAME)


def test_download_rejects_labels_off_the_grid(project: tuple[Path, Scene]) -> None:
    root, scene = project
    with rasterio.open(scene.test, "r+") as ds:
        ds.transform = HSI_TRANSFORM @ Affine.translation(3, 0)
    with pytest.raises(LocalDataError, match=r"test\.tif: the test labels .* not on the reference grid"):
        download_dataset(_spec(root), root / "data" / "raw" / NAME)


# --------------------------------------------------------------------------------------------------
# Co-registration
# --------------------------------------------------------------------------------------------------


def test_coregister_puts_everything_on_the_reference_grid(project: tuple[Path, Scene]) -> None:
    from stages.coregister import coregister

    root, scene = project
    spec = _spec(root)
    raw, coreg = root / "data" / "raw" / NAME, root / "coreg"
    download_dataset(spec, raw)
    sidecar = coregister(spec, raw, coreg, threads=1)
    for name in ("hsi", "sar", "dsm", "labels_train", "labels_test", "valid"):
        with rasterio.open(coreg / f"{name}.tif") as ds:
            assert (ds.height, ds.width) == (H, W), name
            assert ds.crs == HSI_CRS and ds.transform.almost_equals(HSI_TRANSFORM), name
    assert sidecar["modalities"]["sar"]["resampling"] == "bilinear"
    assert sidecar["modalities"]["dsm"]["resampling"] == "none"
    assert sidecar["modalities"]["sar"]["source_grid"]["crs"] == "EPSG:4326"
    assert sidecar["valid_fraction"] == 1.0  # the SAR footprint covers the HSI one
    assert {
        split: {int(k): v for k, v in c.items()} for split, c in sidecar["labels"].items()
    } == scene.counts
    with rasterio.open(coreg / "sar.tif") as ds:  # warped SAR keeps the class structure
        vv = ds.read(1)
    means = [float(vv[4:-4, 20 * k + 5 : 20 * k + 15].mean()) for k in range(N_CLASSES)]
    assert np.allclose(means, [-22, -8, -3, -14], atol=1.5)


def test_envi_mat_and_npy_labels_take_the_same_path(project: tuple[Path, Scene]) -> None:
    """SAR as ENVI (.img + .hdr, still in WGS 84), the DSM as an H x W x 1 .mat, labels as .npy."""
    import scipy.io

    from stages.coregister import coregister

    root, scene = project
    with rasterio.open(scene.sar) as src:
        prof = src.profile | {"driver": "ENVI"}
        prof.pop("blockxsize", None), prof.pop("blockysize", None), prof.pop("tiled", None)
        with rasterio.open(scene.sar.with_name("sar.img"), "w", **prof) as dst:
            dst.write(src.read())
    scipy.io.savemat(scene.dsm.with_name("dsm.mat"), {"height": np.load(scene.dsm)[0][..., None]})
    for split in ("train", "test"):
        with rasterio.open(getattr(scene, split)) as ds:
            np.save(scene.dsm.with_name(f"{split}.npy"), ds.read(1))
    path = root / "params" / "datasets" / f"{NAME}.yaml"
    data = yaml.safe_load(path.read_text())
    data["modalities"]["sar"].update(path=f"data/{NAME}/sar.img", format="envi")
    data["modalities"]["dsm"] = {
        "role": "auxiliary",
        "path": f"data/{NAME}/dsm.mat",
        "format": "mat",
        "key": "height",
        "bands": 1,
    }
    data["labels"] = {"format": "npy", "train": f"data/{NAME}/train.npy", "test": f"data/{NAME}/test.npy"}
    path.write_text(yaml.safe_dump(data))
    spec = _spec(root)
    raw = root / "data" / "raw" / NAME
    receipt = download_dataset(spec, raw)
    assert {"sar.img", "sar.hdr", "dsm.mat", "labels_train.npy", "labels_test.npy"} <= set(receipt["files"])
    sidecar = coregister(spec, raw, root / "coreg", threads=1)
    assert sidecar["modalities"]["sar"]["source_grid"]["crs"] == "EPSG:4326"
    assert sidecar["modalities"]["sar"]["resampling"] == "bilinear"
    assert {
        split: {int(k): v for k, v in c.items()} for split, c in sidecar["labels"].items()
    } == scene.counts


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_snakemake_runs_the_example_to_the_report(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    shrink_to_test_size(
        root,
        # batch 16: ~36 steps in three epochs, so batch-norm statistics settle on 192 training patches
        [{"model": "two_branch_cnn", "name": "two_branch_cnn", "training": {"epochs": 3, "batch_size": 16}}],
        gan_steps=2,
    )
    pipeline_path = root / "params" / "pipeline.yaml"
    pipeline = yaml.safe_load(pipeline_path.read_text())
    pipeline["datasets"] = [NAME]
    pipeline_path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    make_scene(root / "data" / NAME)  # where the example params file points (relative paths)
    run(["snakemake", "--cores", "2", f"results/{NAME}/all"], cwd=root, timeout=600)
    results = root / "results" / NAME
    assert (results / "all" / "table.md").is_file()
    receipt = json.loads((root / "data" / "raw" / NAME / RECEIPT).read_text())
    assert {i["path"] for i in receipt["inputs"]} >= {f"data/{NAME}/hsi.tif", f"data/{NAME}/dsm.npy"}
    metrics = json.loads((results / "runs" / "two_branch_cnn" / "seed0" / "metrics.json").read_text())
    assert metrics["test"]["oa"] > 1.5 / N_CLASSES  # chance is 1/4; the classes are separable
    proc = run(["snakemake", "-n", "--cores", "2", f"results/{NAME}/all"], cwd=root)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    dsm = root / "data" / NAME / "dsm.npy"  # an edited input file reruns the pipeline from the download
    np.save(dsm, np.load(dsm) + 1)
    proc = run(["snakemake", "-n", "--cores", "2", f"results/{NAME}/all"], cwd=root)
    assert f"Updated input files: {dsm}" in proc.stdout + proc.stderr


if __name__ == "__main__":
    make_scene(sys.argv[1] if len(sys.argv) > 1 else ROOT / "data" / NAME)


def test_labels_remap_applies_to_scene_label_rasters(project: tuple[Path, Scene]) -> None:
    """A scene whose label rasters hold the producer's codes (10, 20, ...) maps them through
    labels.remap, as tile datasets do; a code the remap does not list is an error, not a class."""
    from stages.coregister import coregister

    root, scene = project
    for split in ("train", "test"):
        path = getattr(scene, split)
        with rasterio.open(path) as ds:
            prof, image = ds.profile, ds.read(1)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write((image * 10).astype(np.uint8), 1)  # class k -> code 10 k; 0 stays 0
    params = root / "params" / "datasets" / f"{NAME}.yaml"
    data = yaml.safe_load(params.read_text())
    data["labels"]["remap"] = {0: 0, **{10 * k: k for k in range(1, N_CLASSES + 1)}}
    params.write_text(yaml.safe_dump(data))
    raw = root / "data" / "raw" / NAME
    download_dataset(_spec(root), raw)
    sidecar = coregister(_spec(root), raw, root / "coreg", threads=1)
    assert {
        split: {int(k): v for k, v in c.items()} for split, c in sidecar["labels"].items()
    } == scene.counts
    del data["labels"]["remap"][10 * N_CLASSES]
    params.write_text(yaml.safe_dump(data))
    with pytest.raises(SourceError, match=r"raw label codes that labels.remap does not list"):
        coregister(_spec(root), raw, root / "coreg2", threads=1)
    assert not (root / "coreg2").exists()
