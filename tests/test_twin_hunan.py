"""The MMHunan twin: packaged like the real data, raw label codes remapped to the declared classes,
255 (no data) ignored, deterministic, and runnable end to end through the tile path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
import zarr

from stages.config import DatasetSpec, ParamsError, load_dataset
from stages.data.tile_store import read_tile
from stages.datasets.tiles import index_tiles
from stages.datasets.twins import hunan
from stages.download import download_dataset
from stages.twin import generate_twin
from tests.conftest import copy_project, run

SMALL = "hunan-twin-small"
ARCHIVE = "Hunan_Dataset.zip"


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return load_dataset(SMALL)


@pytest.fixture(scope="module")
def twin(spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hunan") / "twin"
    generate_twin(spec, out)
    return out


@pytest.fixture(scope="module")
def raw(spec: DatasetSpec, twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The twin fetched over loopback HTTP and unpacked by the real download stage."""
    out = tmp_path_factory.mktemp("hunan-raw") / "raw"
    download_dataset(spec, out, twin_dir=twin)
    return out


def _kinds(spec: DatasetSpec) -> dict[str, str]:
    return {**{m.file: name for name, m in spec.modalities.items()}, spec.labels["train"]: "label"}


def test_params_describe_a_twin_of_the_real_dataset(spec: DatasetSpec) -> None:
    real, main = load_dataset("hunan"), load_dataset("hunan-twin")
    assert spec.is_twin and spec.raw["twin_of"] == "hunan" and spec.task == "tiles"
    assert real.source["kind"] == "manual" and "drive.google.com" in real.source["instructions"]
    assert main.tile_counts() == real.tiles["counts"] == {"train": 400, "val": 50, "test": 50}
    assert main.twin["seed"] == spec.twin["seed"] and spec.tiles["size"] == 256
    assert [c.key for c in spec.classes] == list(hunan.LOOKS)
    # the README's remap, shifted by one because landfuse keeps 0 for "no label"
    readme = [255, 0, 1, 2, 1, 3, 4, 6, 6, 5, 6, 7, 255]
    lut = spec.label_lut()
    assert lut is not None
    for code in range(12):
        hunan_class = readme[code]
        expected = 0 if hunan_class == 255 else min(hunan_class, 6) + 1  # stray 7 merged into built-up
        assert lut[code] == expected, code
    assert lut[255] == 0 and lut[12] == 255  # unlisted codes are rejected, not classes


def test_label_remap_is_validated(tmp_path: Path) -> None:
    root = tmp_path / "params"
    (root / "datasets").mkdir(parents=True)
    data = yaml.safe_load((Path(load_dataset("hunan").path)).read_text())
    data["labels"]["remap"][3] = 9  # not a class id
    (root / "datasets" / "hunan.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError, match="remap"):
        load_dataset("hunan", root=root)


def test_archive_holds_the_real_layout_with_declared_formats(
    spec: DatasetSpec, twin: Path, raw: Path
) -> None:
    with zipfile.ZipFile(twin / ARCHIVE) as zf:
        members = set(zf.namelist())
    expected = {
        spec.tile_path(tile_set, kind, tile_id)
        for tile_set, n in spec.tile_counts().items()
        for tile_id in hunan.tile_ids(spec.twin["seed"], tile_set, n)
        for kind in _kinds(spec)
    }
    assert members == expected
    assert all(m.startswith("Hunan_Dataset/") for m in members)
    ids = hunan.tile_ids(spec.twin["seed"], "train", spec.tile_counts()["train"])
    assert len(set(np.diff(ids).tolist())) > 1  # non-contiguous ids, as the real ones
    for member in sorted(members):
        kind = member.split("/")[2]
        name = _kinds(spec)[kind]
        with rasterio.open(raw / member) as ds:
            assert (ds.height, ds.width) == (256, 256), member
            if name == "label":
                assert ds.count == 1 and ds.dtypes[0] == "uint8", member
            else:
                m = spec.modalities[name]
                assert ds.count == m.bands and ds.dtypes[0] == m.dtype, member


def test_reading_yields_declared_classes_and_ignores_255(spec: DatasetSpec, raw: Path) -> None:
    index = index_tiles(raw, spec)
    counts = spec.tile_counts()
    assert {s: len(ids) for s, ids in index["sets"].items()} == counts
    assert index["bands"] == {"s2": 13, "s1": 2, "topo": 2}
    raw_codes: set[int] = set()
    classes: set[int] = set()
    label = spec.labels["train"]
    for tile_set, ids in index["sets"].items():
        for tile_id in ids:
            with rasterio.open(raw / spec.tile_path(tile_set, label, tile_id)) as ds:
                raw_codes |= set(np.unique(ds.read(1)).tolist())
            classes |= set(np.unique(read_tile(raw, spec, (tile_set, tile_id), label)).tolist())
    assert 255 in raw_codes and raw_codes <= {int(k) for k in spec.labels["remap"]}
    # every declared class occurs, 0 is "no label", nothing else (255 never becomes a class)
    assert classes == {0} | {c.id for c in spec.classes}


def test_generation_is_byte_identical(spec: DatasetSpec, twin: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_twin(spec, again)
    assert (again / ARCHIVE).read_bytes() == (twin / ARCHIVE).read_bytes()
    first = json.loads((twin / "twin-manifest.json").read_text())
    assert json.loads((again / "twin-manifest.json").read_text())["archives"] == first["archives"]


def test_small_twin_is_the_prefix_of_the_full_twin(spec: DatasetSpec) -> None:
    full = load_dataset("hunan-twin")
    for tile_set, n in spec.tile_counts().items():
        big = hunan.tile_ids(full.twin["seed"], tile_set, full.tile_counts()[tile_set])
        assert hunan.tile_ids(spec.twin["seed"], tile_set, n) == big[:n]


@pytest.mark.e2e
def test_snakemake_runs_the_small_twin_to_the_report(tmp_path: Path) -> None:
    root = copy_project(tmp_path / "project")
    path = root / "params" / "pipeline.yaml"
    pipeline = yaml.safe_load(path.read_text())
    experiments = [{"model": "unet", "name": "unet", "training": {"epochs": 2}}]
    pipeline.update(datasets=[SMALL], seeds=[0], experiments=experiments)
    pipeline["augment"]["synthetic_tiles"] = 2
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    gan_path = root / "params" / "models" / "pix2pix.yaml"
    gan = yaml.safe_load(gan_path.read_text())
    gan["presets"]["quick"]["training"]["epochs"] = 2
    gan_path.write_text(yaml.safe_dump(gan, sort_keys=False))
    run(["snakemake", "--cores", "2", f"results/{SMALL}/all"], cwd=root)
    results = root / "results" / SMALL
    table = (results / "all" / "table.md").read_text()
    assert "mIoU" in table and "| unet |" in table
    metrics = json.loads((results / "runs" / "unet" / "seed0" / "metrics.json").read_text())["test"]
    assert len(metrics["per_class_iou"]) == 7 and 0.0 <= metrics["miou"] <= 1.0
    store = zarr.open_group(results / "patches.zarr", mode="r")
    for split in ("train", "val", "test"):  # the store holds class ids and 0, never the raw 255
        assert set(np.unique(store[f"{split}/label"][:]).tolist()) <= {0, *range(1, 8)}, split
