"""A twin of Houston 2018 (GRSS DFC 2018, phase 2): the sensors on their own grids, as the zip has them.

Everything dataset-specific comes from the params file: the member paths, the classes, the grids'
pixel sizes (``twin.gsd_m`` per modality, ``grid.gsd_m`` for the ground truth), the footprint the
sensors cover (``twin.footprint_m``) and where the ground truth sits inside it
(``twin.label_offset_m``), and the per-class counts (``twin.train_counts`` plus ``twin.test_counts``:
the real counts are unknown).

Files, all in one CRS and placed only by their georeferencing, so the co-registration must use it:

* the HSI: one PCIDSK ``.pix``, ``uint16`` reflectance x 10000, at 1 m over the whole footprint;
* the LiDAR: one single-band ``float32`` GeoTIFF per product at 0.5 m over the whole footprint. The
  band name says what it is: ``dsm*`` the first-return surface, ``dem*`` the bare earth with the
  buildings kept (``DEM+B``), ``intensity_<nm>nm`` the return intensity at that laser wavelength;
* the ground truth: a ``uint8`` GeoTIFF at 0.5 m over a window of the footprint, 0 = undefined.

The layout is :mod:`mat_scene`'s warped Voronoi parcels on the coarsest sensor grid (1 m); the labels
are chosen at the ground truth's 0.5 m, exactly ``train + test`` pixels per class, deepest inside
their parcels first. The HSI is rendered in row strips (a 4172-column, 50-band cube at full size is
never held whole). Fusion matters by construction: the road-like classes (roads, highways, major
thoroughfares, parking lots) share asphalt spectra, and buildings, elevated highways, trains and
cars differ from them in height.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from stages.config import DatasetSpec
from stages.datasets.twins import spectra
from stages.datasets.twins.mat_scene import (
    LOOKS,
    Look,
    as_dtype,
    assign_classes,
    choose_labelled,
    generic_look,
    labelled_counts,
    mix,
    parcels,
    wavelengths,
)
from stages.datasets.twins.scene import smooth_field

log = logging.getLogger(__name__)

STRIP_ROWS = 128  # HSI rows rendered at a time
_HALO = 3  # rows of context each strip borrows for the PSF blur

_ASPHALT = LOOKS["road"].reflectance
_CONCRETE = lambda wl: spectra.flat(wl, level=0.24, tilt=0.08)  # noqa: E731

# Keyed by class key. Heights in m above the terrain; penetration: the part of the height the
# bare-earth model removes in vegetation (unused for LiDAR intensities).
LOOKS_2018: dict[str, Look] = {
    "healthy_grass": Look(lambda wl: spectra.vegetation(wl, green=0.10, red=0.045, nir=0.45), 0.05, 0.03),
    "stressed_grass": Look(lambda wl: spectra.vegetation(wl, green=0.10, red=0.08, nir=0.30), 0.05, 0.03),
    "artificial_turf": Look(lambda wl: spectra.paint(wl, base=0.05, peaks=[(545, 40, 0.07)]), 0.03, 0.01),
    "evergreen_trees": Look(
        lambda wl: spectra.vegetation(wl, green=0.07, red=0.03, nir=0.33, edge=722), 11, 3, 0.4
    ),
    # February: deciduous trees are leaf-off, branches over soil and litter
    "deciduous_trees": Look(
        mix(
            lambda wl: spectra.vegetation(wl, green=0.08, red=0.05, nir=0.30),
            LOOKS["ground"].reflectance,
            0.5,
        ),
        13,
        3,
        0.8,
    ),
    "bare_earth": Look(lambda wl: spectra.soil(wl, low=0.09, high=0.32)),
    "water": LOOKS["water"],
    "residential_buildings": Look(
        mix(lambda wl: spectra.step(wl, low=0.07, high=0.25, at=600), _ASPHALT, 0.5), 7, 1.5
    ),
    "non_residential_buildings": Look(mix(_CONCRETE, _ASPHALT, 0.5), 16, 6),
    "roads": Look(_ASPHALT),
    "sidewalks": Look(_CONCRETE, 0.1, 0.03),
    "crosswalks": Look(mix(_ASPHALT, lambda wl: spectra.flat(wl, level=0.45), 0.4)),
    "major_thoroughfares": Look(mix(_ASPHALT, _CONCRETE, 0.5)),
    "highways": Look(mix(_ASPHALT, _CONCRETE, 0.6), 7, 2),
    "railways": Look(mix(_ASPHALT, LOOKS["ground"].reflectance, 0.5), 0.3, 0.1),
    "paved_parking_lots": Look(mix(_ASPHALT, _CONCRETE, 0.25)),
    "unpaved_parking_lots": Look(lambda wl: spectra.soil(wl, low=0.12, high=0.28), 0.0, 0.1),
    "cars": Look(lambda wl: spectra.paint(wl, base=0.08, peaks=[(620, 60, 0.25)]), 1.5, 0.3),
    "trains": Look(lambda wl: spectra.flat(wl, level=0.16, tilt=-0.1), 4, 0.5),
    "stadium_seats": Look(lambda wl: spectra.paint(wl, base=0.07, peaks=[(640, 50, 0.3)]), 8, 4),
}

# GDAL writes the file name and creation / update times into a .pix; fixed ones keep it byte-identical
_PIX_NAME = slice(48, 112)
_PIX_TIME = re.compile(rb"\d\d:\d\d \d\d(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\d{4}")
_FIXED_TIME = b"10:43 18Feb2017"


def _scale(gsd: float, coarse: float, what: str) -> int:
    factor = coarse / gsd
    if abs(factor - round(factor)) > 1e-9:
        raise ValueError(f"{what}: pixel size {gsd} m does not divide the layout's {coarse} m")
    return round(factor)


def _up(array: np.ndarray, k: int) -> np.ndarray:
    return array if k == 1 else np.repeat(np.repeat(array, k, axis=0), k, axis=1)


def write_pix(
    path: Path,
    cube_strips: Iterable[tuple[int, np.ndarray]],
    count: int,
    height: int,
    width: int,
    geo: dict[str, Any],
) -> None:
    """A PCIDSK ``.pix`` written strip by strip, then made byte-identical run to run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="PCIDSK", width=width, height=height, count=count, dtype="uint16", **geo
    ) as dst:
        for row, block in cube_strips:
            dst.write(block, window=Window(0, row, width, block.shape[1]))
    data = bytearray(path.read_bytes())
    data[_PIX_NAME] = path.name.encode().ljust(_PIX_NAME.stop - _PIX_NAME.start)[
        : _PIX_NAME.stop - _PIX_NAME.start
    ]
    path.write_bytes(_PIX_TIME.sub(_FIXED_TIME, bytes(data)))


def write_tif(path: Path, band: np.ndarray, dtype: str, geo: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=band.shape[1], height=band.shape[0], count=1, dtype=dtype, **geo
    ) as dst:
        dst.write(band.astype(dtype), 1)


def hsi_strips(
    cls: np.ndarray,
    parcel: np.ndarray,
    looks: dict[int, Look],
    wl: np.ndarray,
    dtype: str | None,
    seed: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row, (bands, rows, W) block)`` of the reflectance cube, :func:`render_hsi`'s recipe in
    strips: per-parcel brightness and tilt and the texture are drawn for the whole scene first, so
    the strips join seamlessly; the PSF blur borrows a halo of rows."""
    rng = np.random.default_rng([seed, 1])
    table = np.stack([np.zeros_like(wl)] + [looks[c].reflectance(wl) for c in sorted(looks)])
    lut = np.zeros(int(cls.max()) + 1, np.int64)
    lut[sorted(looks)] = np.arange(1, len(looks) + 1)
    gain = rng.normal(1.0, 0.15, parcel.max() + 1)
    tilt = rng.normal(0.0, 0.08, parcel.max() + 1)
    texture = (1.0 + 0.08 * smooth_field(cls.shape, 1.5, rng)).astype(np.float32)
    slope = (wl - wl.mean()) / (np.ptp(wl) + 1e-9)
    h = cls.shape[0]
    for i, row in enumerate(range(0, h, STRIP_ROWS)):
        lo, hi = max(row - _HALO, 0), min(row + STRIP_ROWS + _HALO, h)
        c, p = cls[lo:hi], parcel[lo:hi]
        cube = table[lut[c]] * (gain[p] * texture[lo:hi])[..., None] * (1.0 + tilt[p][..., None] * slope)
        cube = ndimage.gaussian_filter(cube, sigma=(0.7, 0.7, 0))[row - lo : row - lo + STRIP_ROWS]
        cube += np.random.default_rng([seed, 2, i]).normal(0.0, 0.012, cube.shape)
        yield row, np.moveaxis(as_dtype(np.clip(cube, 0.0, None), dtype), -1, 0)


def lidar_band(
    name: str,
    cls: np.ndarray,
    parcel: np.ndarray,
    looks: dict[int, Look],
    keys: dict[int, str],
    terrain: np.ndarray,
    height: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One LiDAR product on the fine grid, chosen by its band name (see the module docstring)."""
    if name.startswith("dsm"):
        return terrain + height + rng.normal(0.0, 0.05, cls.shape)
    if name.startswith("dem"):
        kept = np.zeros(int(cls.max()) + 1, bool)
        kept[[c for c, k in keys.items() if "building" in k]] = True
        return terrain + np.where(kept[cls], height, 0.0) + rng.normal(0.0, 0.05, cls.shape)
    laser = re.fullmatch(r"intensity_(\d+(?:\.\d+)?)nm", name)
    if laser is None:
        raise ValueError(
            f"houston2018 twin: no renderer for the LiDAR band {name!r} (dsm*, dem*, intensity_<nm>nm)"
        )
    at = np.array([float(laser.group(1))])
    refl = np.zeros(int(cls.max()) + 1)
    for c, look in looks.items():
        refl[c] = float(look.reflectance(at)[0])
    gain = rng.normal(1.0, 0.1, parcel.max() + 1)[parcel]
    return 100.0 * refl[cls] * gain * rng.gamma(8.0, 1.0 / 8.0, cls.shape)  # returns fluctuate


def generate(spec: DatasetSpec, out_dir: Path) -> dict[str, Any]:
    """Write the HSI ``.pix``, the LiDAR GeoTIFFs and the ground truth under ``out_dir`` (and
    ``_truth.npz``: the 1 m class map, the labelled mask and the ground truth's window in 1 m pixels)."""
    twin = spec.twin
    seed = twin["seed"]
    rng = np.random.default_rng([seed, 0])
    (hsi_name,) = spec.modalities_with_role("primary")
    hsi = spec.modalities[hsi_name]
    lidars = [m for m in spec.modalities.values() if m.role == "auxiliary"]
    gsd = twin["gsd_m"]
    gt_gsd = float(spec.grid["gsd_m"])
    coarse = max([*gsd.values(), gt_gsd])
    f = _scale(gt_gsd, coarse, "grid")
    rows = round(twin["footprint_m"][0] / coarse)
    cols = round(twin["footprint_m"][1] / coarse)
    r0, c0 = (round(v / coarse) for v in twin["label_offset_m"])
    h, w = spec.height, spec.width
    if h % f or w % f or r0 + h // f > rows or c0 + w // f > cols:
        raise ValueError(
            f"{spec.path}: the {h} x {w} ground truth does not fit the footprint on whole pixels."
        )

    need = labelled_counts(spec)
    need_coarse = {c: -(-n // (f * f)) for c, n in need.items()}
    window = (slice(r0, r0 + h // f), slice(c0, c0 + w // f))
    if sum(need_coarse.values()) > (h // f) * (w // f):
        raise ValueError(f"{spec.path}: {sum(need.values())} labelled pixels do not fit a {h} x {w} grid.")
    outside = np.ones((rows, cols), bool)
    outside[window] = False
    n_parcels = max(4 * len(need), rows * cols // 300)
    parcel = parcels(rows, cols, n_parcels, rng)
    cls = assign_classes(parcel, need_coarse, rng, outside)
    cls_gt = _up(cls[window], f)
    labelled = choose_labelled(cls_gt, need, rng)
    looks = {c.id: LOOKS_2018.get(c.key) or generic_look(c.id, seed) for c in spec.classes}
    keys = {c.id: c.key for c in spec.classes}

    crs = CRS.from_user_input(spec.grid["fallback_crs"])
    east, north = twin["origin"]

    def geo(pixel: float, row: float = 0.0, col: float = 0.0) -> dict[str, Any]:
        return {"crs": crs, "transform": Affine(pixel, 0, east + col, 0, -pixel, north - row)}

    k_hsi = _scale(gsd[hsi_name], coarse, hsi_name)
    strips = hsi_strips(_up(cls, k_hsi), _up(parcel, k_hsi), looks, wavelengths(spec, hsi), hsi.dtype, seed)
    write_pix(out_dir / hsi.file, strips, hsi.bands, rows * k_hsi, cols * k_hsi, geo(gsd[hsi_name]))

    for lidar in lidars:
        k = _scale(gsd[lidar.name], coarse, lidar.name)
        fine_cls, fine_parcel = _up(cls, k), _up(parcel, k)
        lrng = np.random.default_rng([seed, 3])
        terrain = 10.0 + 1.5 * smooth_field(fine_cls.shape, 40.0 / gsd[lidar.name], lrng)
        mean, sd = np.zeros(int(cls.max()) + 1), np.zeros(int(cls.max()) + 1)
        for c, look in looks.items():
            mean[c], sd[c] = look.height_m, look.height_sd
        per_parcel = lrng.standard_normal(parcel.max() + 1)[fine_parcel]
        height = np.maximum(mean[fine_cls] + sd[fine_cls] * per_parcel, -1.0)
        for i, (band, rel) in enumerate(zip(lidar.band_names, lidar.paths, strict=True)):
            band_rng = np.random.default_rng([seed, 4, i])
            array = lidar_band(band, fine_cls, fine_parcel, looks, keys, terrain, height, band_rng)
            write_tif(out_dir / rel, array, lidar.dtype or "float32", geo(gsd[lidar.name]))
        del fine_cls, fine_parcel, terrain, height, per_parcel

    labels = np.where(labelled, cls_gt, 0).astype(np.uint8)
    write_tif(out_dir / spec.labels["train"], labels, "uint8", geo(gt_gsd, r0 * coarse, c0 * coarse))
    np.savez_compressed(
        out_dir / "_truth.npz", cls=cls, labelled=labelled, window=np.array([r0, c0, h // f, w // f])
    )
    counts = {int(c): int(((cls_gt == c) & labelled).sum()) for c in need}
    log.info("houston2018 twin %s: %d parcels, labelled %s", spec.name, n_parcels, counts)
    return {"parcels": n_parcels, "labelled": counts, "footprint_px": [rows, cols], "label_window": [r0, c0]}
