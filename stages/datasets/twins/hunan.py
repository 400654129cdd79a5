"""The MMHunan twin: Sentinel-2 / Sentinel-1 / SRTM tiles of synthetic landscapes, packaged like the data.

The landscapes and the S2 and S1 renderers are the DFC 2020 twin's (:mod:`stages.datasets.twins.dfc20`),
imported, not copied: spatially coherent parcels, crop fields, urban blocks, rivers and lakes, with the
same built-in ambiguities (urban vs barren in S2, grassland vs cropland in S1...). What differs:

* **Classes.** Hunan's seven classes are drawn as DFC landscape classes (``LOOKS``: cropland as
  croplands, unused land as barren, built-up as urban; DFC shrubland parcels are labelled forest,
  which is what the Hunan remap does with its second forest code). Class ids and keys come from the
  params file; this module only knows how each class key *looks*.
* **Raw label codes.** The ``lc`` files hold raw codes, as the real ones do, not class ids: every unit
  gets one of the raw codes that ``labels.remap`` maps to its class, and unlabelled patches get the
  codes it maps to 0 (Hunan: 0 and 255). One tile in three has a no-data (255) strip along an edge, so
  the ignore value always occurs even in a small twin.
* **No clouds.** The real S2 is a 2017 composite [3P]; tiles carry thin haze at most.
* **Terrain.** ``topo`` is elevation (m) and GDAL's terrain ruggedness index, float32: rolling hills
  plus a land-cover offset smoothed over ~60 m (paddies, water and wetlands in valleys, forest on the
  hills), so terrain is informative but not a class map.
* **Ids and georeferencing.** Tile ids are non-contiguous (gaps of 1..3000, as the real 2604, 11624...)
  and prefix-stable, so a smaller twin with the same seed holds exactly the first tiles of a larger one.
  Tiles sit on a 10 m grid in UTM 49N [U]: the real tiles may not be georeferenced at all [3P].

Tiles are generated one at a time from ``default_rng([seed, crc32(set), index, k])``.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from stages.config import DatasetSpec
from stages.datasets.twins.dfc20 import Clouds, Layout, build_layout, render_s1, render_s2
from stages.datasets.twins.dfc20 import _write as write_tile
from stages.datasets.twins.scene import smooth_field
from stages.io.logs import progress

log = logging.getLogger(__name__)

# Hunan class key -> the DFC landscape class that renders it (S2 spectra, S1 backscatter, layout)
LOOKS: dict[str, tuple[str, ...]] = {
    "cropland": ("croplands",),
    "forest": ("forest", "shrubland"),
    "grassland": ("grassland",),
    "wetland": ("wetlands",),
    "water": ("water",),
    "unused_land": ("barren",),
    "built_up": ("urban",),
}
# elevation offset (m) per DFC landscape class before smoothing: low paddies and water, forested hills
TERRAIN_M = {
    "croplands": -25.0,
    "water": -35.0,
    "wetlands": -30.0,
    "urban": -10.0,
    "grassland": 5.0,
    "barren": 15.0,
    "shrubland": 30.0,
    "forest": 45.0,
}
EPSG = 32649  # [U] UTM 49N covers most of Hunan


def tile_ids(seed: int, tile_set: str, n: int) -> list[int]:
    """Non-contiguous, prefix-stable tile ids: id ``i`` depends only on the gaps before it."""
    key = zlib.crc32(tile_set.encode())
    ids, current = [], 1000
    for i in range(n):
        current += int(np.random.default_rng([seed, key, i, 99]).integers(1, 3000))
        ids.append(current)
    return ids


def _check_spec(spec: DatasetSpec) -> tuple[dict[str, str], dict[str, list[int]], list[int]]:
    roles = dict(spec.twin.get("roles") or {})
    missing = [r for r in ("optical", "sar", "dem") if roles.get(r) not in spec.modalities]
    if missing:
        raise ValueError(f"{spec.path}: twin.roles must name modalities for {missing} (optical, sar, dem).")
    if spec.modalities[roles["sar"]].bands != 2 or not spec.modalities[roles["optical"]].wavelengths_nm:
        raise ValueError(f"{spec.path}: the hunan twin needs a 2-band SAR and an optical with wavelengths.")
    if spec.modalities[roles["dem"]].bands not in (1, 2):
        raise ValueError(f"{spec.path}: the hunan twin writes 1 (elevation) or 2 (+ TRI) dem bands.")
    keys = {c.key for c in spec.classes}
    if keys != set(LOOKS):
        raise ValueError(f"{spec.path}: the hunan twin renders classes {sorted(LOOKS)}, got {sorted(keys)}.")
    remap = {int(k): int(v) for k, v in (spec.labels.get("remap") or {}).items()}
    # raw codes per class id (and for 0, no label): what the lc files may hold for each
    codes: dict[int, list[int]] = {}
    for raw, cls in sorted(remap.items()):
        codes.setdefault(cls, []).append(raw)
    lacking = [c.key for c in spec.classes if c.id not in codes]
    if lacking or 0 not in codes:
        raise ValueError(f"{spec.path}: labels.remap needs raw codes for {lacking or 'no label (0)'}.")
    return roles, codes, [c.id for c in spec.classes]


def render_raw_labels(
    lay: Layout, ids: dict[str, int], codes: dict[int, list[int]], nodata: bool, rng: np.random.Generator
) -> np.ndarray:
    """Raw lc codes (uint8, H x W): one code per unit, the no-label codes on unlabelled patches."""
    dfc_to_id = {dfc: ids[key] for key, looks in LOOKS.items() for dfc in looks}
    unit_code = np.array([int(rng.choice(codes[dfc_to_id[c]])) for c in lay.unit_cls], np.uint8)
    raw = unit_code[lay.unit]
    none = codes[0]
    raw[lay.unlabelled] = none[0]
    if nodata:  # a no-data strip along one edge: the last no-label code (Hunan: 255)
        size = raw.shape[0]
        width = int(rng.integers(4, size // 6))
        side = int(rng.integers(0, 4))
        strip = (slice(None), slice(0, width)) if side < 2 else (slice(0, width), slice(None))
        raw_view = raw if side % 2 == 0 else raw[::-1, ::-1]
        raw_view[strip] = none[-1]
    return raw


def render_topo(lay: Layout, bands: int, rng: np.random.Generator) -> np.ndarray:
    """Elevation (m) and terrain ruggedness index, float32 ``(bands, H, W)``."""
    shape = lay.unit.shape
    base = rng.uniform(40, 600)
    relief = rng.uniform(20, 120) * smooth_field(shape, 60, rng) + 8 * smooth_field(shape, 12, rng)
    offset = np.array([TERRAIN_M["water" if k == "water_windy" else k] for k in lay.unit_cls])[lay.unit]
    elevation = base + relief + ndimage.gaussian_filter(offset, 6.0, mode="nearest")
    elevation += rng.normal(0, 0.8, shape)  # SRTM noise
    # GDAL TRI (Riley): mean absolute difference to the eight neighbours
    padded = np.pad(elevation, 1, mode="edge")
    h, w = shape
    tri = np.mean(
        [
            np.abs(padded[1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w] - elevation)
            for dr in (-1, 0, 1)
            for dc in (-1, 0, 1)
            if dr or dc
        ],
        axis=0,
    )
    return np.stack([elevation, tri][:bands]).astype(np.float32)


def _georef(tile_id: int, size: int, gsd: float) -> Any:
    row, col = divmod(tile_id, 200)
    return from_origin(300_000 + col * size * gsd, 3_300_000 - row * size * gsd, gsd, gsd)


def generate(spec: DatasetSpec, out_dir: Path) -> dict[str, Any]:
    """Write every tile of every set into ``out_dir`` laid out as the real archive's contents."""
    roles, codes, class_ids = _check_spec(spec)
    optical, sar, dem = (spec.modalities[roles[r]] for r in ("optical", "sar", "dem"))
    ids = {c.key: c.id for c in spec.classes}
    seed = int(spec.twin["seed"])
    size = int(spec.tiles["size"])
    gsd = float(spec.grid.get("gsd_m", 10.0))
    wl = np.asarray(optical.wavelengths_nm, np.float64)
    label_kind = spec.labels["train"]
    lut = spec.label_lut()
    counts = spec.tile_counts() or {}
    crs = CRS.from_epsg(EPSG)
    truth: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {"size": size, "sets": {}}
    for tile_set in spec.tiles["sets"]:
        n = int(counts.get(tile_set, 0))
        set_key = zlib.crc32(tile_set.encode())
        set_ids = tile_ids(seed, tile_set, n)
        hist = np.zeros((n, 256), np.int64)
        for index, tile_id in enumerate(
            progress(set_ids, desc=f"hunan twin {tile_set}", total=n, unit="tile")
        ):
            rng_layout, rng_s2, rng_s1, rng_topo, rng_lc, rng_haze = (
                np.random.default_rng([seed, set_key, index, k]) for k in range(6)
            )
            lay = build_layout(size, rng_layout)
            zero = np.zeros((size, size))
            haze = zero
            if rng_haze.random() < 0.3:  # a composite: no clouds, the odd thin haze
                haze = rng_haze.uniform(0.02, 0.08) * np.clip(
                    0.6 + 0.5 * smooth_field((size, size), 40, rng_haze), 0, 1
                )
            raw = render_raw_labels(lay, ids, codes, index % 3 == 0, rng_lc)
            tiles = {
                optical.file: render_s2(lay, Clouds(zero, haze, zero), wl, optical.band_names, rng_s2),
                sar.file: render_s1(lay, index, rng_s1),
                dem.file: render_topo(lay, dem.bands, rng_topo),
                label_kind: raw[None],
            }
            transform = _georef(tile_id, size, gsd)
            for kind, data in tiles.items():
                write_tile(out_dir / spec.tile_path(tile_set, kind, tile_id), data, crs, transform)
            hist[index] = np.bincount(raw.ravel(), minlength=256)
        truth[f"{tile_set}_ids"] = np.array(set_ids, np.int64)
        truth[f"{tile_set}_raw_code_pixels"] = hist
        total = max(int(hist.sum()), 1)
        by_class = lut[np.arange(256)] if lut is not None else np.arange(256)
        class_px = {cid: int(hist[:, by_class == cid].sum()) for cid in [0, *class_ids]}
        summary["sets"][tile_set] = {
            "tiles": n,
            "class_fraction": {c.key: round(class_px[c.id] / total, 4) for c in spec.classes},
            "unlabelled_fraction": round(class_px[0] / total, 5),
        }
    np.savez_compressed(out_dir / "_truth.npz", **truth)
    return summary
