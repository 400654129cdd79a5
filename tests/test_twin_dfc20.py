"""The DFC 2020 twin: packaged like the real contest data, deterministic, and built to need fusion."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from stages.config import DatasetSpec, load_dataset
from stages.datasets.twins import dfc20
from stages.download import download_dataset
from stages.twin import generate_twin

SMALL = "dfc20-twin-small"
ARCHIVE = "DFC_Public_Dataset.zip"
KINDS = ("s2", "s1", "dfc", dfc20.LC_KIND)


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return load_dataset(SMALL)


@pytest.fixture(scope="module")
def twin(spec: DatasetSpec, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dfc20") / "twin"
    generate_twin(spec, out)
    return out


@pytest.fixture(scope="module")
def raw(spec: DatasetSpec, twin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The twin fetched over loopback HTTP and unpacked by the real download stage."""
    out = tmp_path_factory.mktemp("dfc20-raw") / "raw"
    download_dataset(spec, out, twin_dir=twin)
    return out


def expected_members(spec: DatasetSpec) -> set[str]:
    return {
        spec.tile_path(tile_set, kind, tile_id)
        for tile_set, n in spec.tile_counts().items()
        for tile_id in range(n)
        for kind in KINDS
    }


def test_params_describe_a_twin_of_the_real_dataset(spec: DatasetSpec) -> None:
    assert spec.is_twin and spec.raw["twin_of"] == "dfc20" and spec.task == "tiles"
    assert "synthetic" in spec.raw["license"].lower()
    assert set(spec.tile_counts()) == set(spec.tiles["sets"])
    main = load_dataset("dfc20-twin")
    assert main.twin["seed"] == spec.twin["seed"]
    assert all(main.tile_counts()[s] > spec.tile_counts()[s] for s in spec.tiles["sets"])
    assert {a["file"] for a in spec.source["archives"]} == {ARCHIVE}
    assert not any("sha256" in a for a in spec.source["archives"])


def test_the_archive_holds_exactly_the_real_layout(spec: DatasetSpec, twin: Path) -> None:
    manifest = json.loads((twin / "twin-manifest.json").read_text())
    assert set(manifest["archives"]) == {ARCHIVE}
    with zipfile.ZipFile(twin / ARCHIVE) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert names == sorted(names) and set(names) == expected_members(spec)
    assert set(manifest["contents"][ARCHIVE]) == set(names)
    assert "ROIs0000_validation/s2_validation/ROIs0000_validation_s2_0_p0.tif" in names
    assert "ROIs0000_test/dfc_0/ROIs0000_test_dfc_0_p0.tif" in names
    assert all(i.date_time == infos[0].date_time for i in infos)
    assert not any("_truth" in n for n in names) and (twin / "_truth.npz").is_file()


def test_download_fetches_and_unpacks_every_tile(spec: DatasetSpec, twin: Path, raw: Path) -> None:
    receipt = json.loads((raw / "download.json").read_text())
    assert receipt["source"] == "twin" and receipt["archives"][0]["url"] == f"twin:{ARCHIVE}"
    manifest = json.loads((twin / "twin-manifest.json").read_text())
    assert receipt["archives"][0]["sha256"] == manifest["archives"][ARCHIVE]
    unpacked = {p.relative_to(raw).as_posix() for p in raw.rglob("*.tif")}
    assert unpacked == expected_members(spec)
    assert set(receipt["files"]) == expected_members(spec)


def test_tiles_have_the_real_formats_on_one_grid_per_tile(spec: DatasetSpec, raw: Path) -> None:
    s2, s1 = spec.modalities["s2"], spec.modalities["s1"]
    size = spec.tiles["size"]
    class_ids = {c.id for c in spec.classes}
    absent = {c.id for c in spec.classes if c.key in dfc20.ABSENT}
    assert absent == {3, 8}
    nan_tiles, seen, s1_stats = 0, set(), []
    for tile_set, n in spec.tile_counts().items():
        for tile_id in range(n):
            grids = set()
            for kind, count, dtype in (
                ("s2", s2.bands, "uint16"),
                ("s1", s1.bands, "float32"),
                ("dfc", 1, "uint8"),
                (dfc20.LC_KIND, 4, "uint8"),
            ):
                with rasterio.open(raw / spec.tile_path(tile_set, kind, tile_id)) as ds:
                    assert (ds.count, ds.height, ds.width) == (count, size, size)
                    assert set(ds.dtypes) == {dtype}
                    assert ds.crs.is_projected and ds.crs.to_epsg() // 100 in (326, 327)
                    assert ds.transform.a == spec.grid["gsd_m"] == -ds.transform.e
                    grids.add((ds.crs.to_epsg(), tuple(ds.transform)))
                    data = ds.read()
                if kind == "s2":
                    # L1C reflectance x 1e4: ground in the hundreds to thousands, clouds brighter
                    assert data.min() >= 1 and data.max() < 20000 and 500 < np.median(data) < 4000
                elif kind == "s1":
                    finite = data[np.isfinite(data)]
                    assert finite.min() > -35 and finite.max() < 30
                    nan_tiles += int(np.isnan(data).any())
                    s1_stats.append(np.nanmean(data.reshape(2, -1), axis=1))
                elif kind == "dfc":
                    values = set(np.unique(data).tolist())
                    assert values <= class_ids | {0} and not values & absent
                    assert (data == 0).mean() < 0.02  # unlabelled pixels are rare
                    seen |= values
            assert len(grids) == 1, (tile_set, tile_id)
    assert nan_tiles >= 1
    assert seen - {0} == class_ids - absent  # every present class occurs in the small twin
    vv, vh = np.mean(s1_stats, axis=0)
    assert -16 < vv < -8 and -23 < vh < -15 and vh < vv


def test_tiles_per_set_match_the_params(spec: DatasetSpec, twin: Path, raw: Path) -> None:
    manifest = json.loads((twin / "twin-manifest.json").read_text())
    for tile_set, n in spec.tile_counts().items():
        labels = list(raw.glob(spec.tile_path(tile_set, "dfc", "*")))
        assert len(labels) == n == manifest["summary"]["sets"][tile_set]["tiles"]


def test_generation_is_byte_identical(spec: DatasetSpec, twin: Path, tmp_path: Path) -> None:
    again = generate_twin(spec, tmp_path / "again")
    first = json.loads((twin / "twin-manifest.json").read_text())
    assert again["archives"] == first["archives"]
    assert again["contents"] == first["contents"]
    assert (tmp_path / "again" / ARCHIVE).read_bytes() == (twin / ARCHIVE).read_bytes()


def test_the_ambiguities_are_built_in(spec: DatasetSpec) -> None:
    """Fusion is needed by construction: what one modality confuses, the other separates."""
    wl = np.asarray(spec.modalities["s2"].wavelengths_nm, float)
    # S2 confuses urban with barren (one shared range of surfaces) and wetlands with grassland
    assert dfc20.ENDMEMBERS["urban"] is dfc20.ENDMEMBERS["barren"]
    grass = [f(wl) for f in dfc20.ENDMEMBERS["grassland"]]
    for f in dfc20.ENDMEMBERS["wetlands"]:
        assert np.all(f(wl) >= np.minimum(*grass) * 0.9) and np.all(f(wl) <= np.maximum(*grass) * 1.01)
    # ... which S1 separates by several dB
    db = dfc20.S1_DB
    assert db["urban"][0] - db["barren"][0] > 8 and db["wetlands"][0] - db["grassland"][0] > 4
    # S1 confuses forest with shrubland and grassland with crop fields, which S2 separates
    assert max(abs(a - b) for a, b in zip(db["forest"], db["shrubland"], strict=True)) <= 1.0
    crops = np.array([db[state] for state, _ in dfc20.CROP_STATES])
    weights = np.array([w for _, w in dfc20.CROP_STATES])
    assert np.abs(crops - db["grassland"]).max() <= 2.0
    assert np.abs(weights @ crops - db["grassland"]).max() <= 1.0
    red = int(np.argmin(abs(wl - 665)))
    forest = dfc20.ENDMEMBERS["forest"][1](wl)
    shrub = dfc20.ENDMEMBERS["shrubland"][0](wl)
    assert shrub[red] > 1.5 * forest[red]
    # and clouds hide the ground from S2 in many tiles (S1 is unaffected)
    rngs = [np.random.default_rng([0, i]) for i in range(40)]
    cover = [float((dfc20.make_clouds(64, r).thick > 0.5).mean()) for r in rngs]
    assert 0.25 < np.mean([c > 0 for c in cover]) < 0.7 and max(cover) > 0.2


def test_tiles_are_coherent_regions(spec: DatasetSpec) -> None:
    from scipy import ndimage

    lay = dfc20.build_layout(256, np.random.default_rng([spec.twin["seed"], 0, 0, 0]))
    labels = dfc20.render_labels(lay, {c.key: c.id for c in spec.classes})
    # most pixels lie in large connected regions of their class
    big = 0
    for cls in np.unique(labels):
        regions, _ = ndimage.label(labels == cls)
        sizes = np.bincount(regions.ravel())[1:]
        big += sizes[sizes >= 200].sum()
    assert big > 0.9 * labels.size


def test_a_linear_classifier_needs_both_modalities(spec: DatasetSpec, raw: Path) -> None:
    """Each modality alone is informative; together they are clearly better (on unseen test tiles)."""
    from scipy import ndimage
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    def features(tile_set: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s2, s1, y = [], [], []
        for tile_id in range(spec.tile_counts()[tile_set]):
            with rasterio.open(raw / spec.tile_path(tile_set, "s2", tile_id)) as ds:
                a = ds.read().astype(np.float32) / 1e4
            with rasterio.open(raw / spec.tile_path(tile_set, "s1", tile_id)) as ds:
                b = np.nan_to_num(ds.read(), nan=-25.0)
            with rasterio.open(raw / spec.tile_path(tile_set, "dfc", tile_id)) as ds:
                y.append(ds.read(1)[::4, ::4].ravel())
            # a 7 x 7 local mean: what a small receptive field sees (it averages S1 speckle)
            s2.append(ndimage.uniform_filter(a, (1, 7, 7))[:, ::4, ::4].reshape(len(a), -1).T)
            s1.append(ndimage.uniform_filter(b, (1, 7, 7))[:, ::4, ::4].reshape(len(b), -1).T)
        return np.concatenate(s2), np.concatenate(s1), np.concatenate(y)

    def miou(y: np.ndarray, p: np.ndarray) -> float:
        return float(
            np.mean([((y == c) & (p == c)).sum() / ((y == c) | (p == c)).sum() for c in np.unique(y)])
        )

    train, test = features("validation"), features("test")
    keep_tr, keep_te = train[2] > 0, test[2] > 0
    scores = {}
    for name, parts in (("s2", [0]), ("s1", [1]), ("both", [0, 1])):
        x_tr = np.concatenate([train[k] for k in parts], 1)[keep_tr]
        x_te = np.concatenate([test[k] for k in parts], 1)[keep_te]
        model = LinearDiscriminantAnalysis().fit(x_tr, train[2][keep_tr])
        scores[name] = miou(test[2][keep_te], model.predict(x_te))
    assert min(scores["s2"], scores["s1"]) > 0.35, scores
    assert scores["both"] > max(scores["s2"], scores["s1"]) + 0.12, scores
