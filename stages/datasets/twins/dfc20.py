"""The DFC 2020 twin: Sentinel-2 / Sentinel-1 tiles of synthetic landscapes, packaged like the contest data.

Each 256 x 256 tile at 10 m is an independent landscape (a random "archetype": farmland, forest,
peri-urban, wetland, arid) made of spatially coherent regions: warped Voronoi parcels of forest,
shrubland, grassland, wetlands, barren and urban land; croplands as rectangular fields on a rotated
grid; urban parcels as blocks between streets; rivers and lakes of water on top. Savanna and
Snow/Ice never occur (as in the real contest data, whose benchmarks score 8 classes).

What makes it a fair test of fusion (each point is built in, not hoped for):

* **Clouds.** About 45% of the tiles carry thick clouds (bright, nearly flat across bands, high in
  the B10 cirrus band, with soft edges) covering 10-60% of the tile, and their shadows; many more
  carry thin haze. Under a thick cloud S2 sees nothing of the ground, S1 sees it unchanged.
* **Classes S2 confuses, S1 separates.** Urban and barren land share one range of bright mineral
  surfaces (concrete, sand-coloured roofs, bare soil and rock: ``ENDMEMBERS["barren"] is
  ENDMEMBERS["urban"]``) and one kind of structure (blocks on a slightly warped lattice whose 1-2 px
  lines, streets or rock joints, darken alike), so S2 cannot tell them apart; in S1 urban land is the
  brightest class (double bounce, bright facade lines) and barren land the darkest besides water.
  Wetlands are spectrally the middle of the grassland range with ~5% less SWIR (S2 separates them
  only partly), while flooded vegetation gives them a VV ~5 dB above grassland at similar VH.
* **Classes S1 confuses, S2 separates.** Grassland and croplands share backscatter (crop fields
  scatter around the grassland level with their state: green, stubble, ploughed), forest and
  shrubland differ by only 1 dB of volume scattering, and wind-roughened lakes backscatter like
  barren land, while their spectra differ clearly (crop vigour or bare soil, forest's dark dense
  canopy vs shrubland's soil background, water's darkness beyond 700 nm).
* **Both remain informative alone.** Each modality separates most classes on its own; the union
  resolves the rest. Per-parcel brightness/state jitter, per-pixel texture, per-tile atmosphere and
  S1 calibration offsets, the 20 m / 60 m S2 bands' blur and multiplicative speckle (ENL 4.4, in
  linear power, then dB) keep single pixels ambiguous; the spatial context resolves much of it.
  Check on ``dfc20-twin`` (per-pixel logistic regression on bands plus 5 x 5 and 11 x 11 local means,
  64k pixels of the validation tiles -> 168k pixels of the test tiles): mIoU S2 0.67, S1 0.58,
  both 0.91 (OA 0.77, 0.68, 0.95); ``tests/test_twin_dfc20.py`` repeats a smaller check.

Packaging (``DFC_Public_Dataset.zip``, member paths from ``tiles.sets`` in the params file):

* ``s2``: 13 bands uint16, L1C-like top-of-atmosphere reflectance x 1e4 (path radiance, water-vapour
  absorption in B09 and B10, 20 m and 60 m bands blurred to their native resolution), pixel-interleaved.
* ``s1``: 2 bands (VV, VH) float32 sigma0 in dB (means near -12 / -19; the real data: -12.5 /
  -20.2), with a -30 dB noise floor; about one tile in eight (ids with ``id % 8 == 5``) has a few NaN
  pixels, as one real SEN12MS patch does.
* ``dfc``: 1 band uint8, classes 1..10 from the params file, 0 (unlabelled) in rare small patches.
* ``lc``: 4 bands uint8 of MODIS-like layers (IGBP, LCCS land cover, land use, surface hydrology) at
  500 m (50 px blocks), derived from the labels. Nothing in the pipeline reads them; they are cheap
  (they compress to a few kB) and make the unpacked tree match the real one. The IGBP codes follow the
  DFC lookup in datasets.md; the LCCS codes are [U] (MCD12Q1 user guide, from memory).
* Georeferencing [U]: real SEN12MS tiles carry the UTM zone of their region. Here tiles come in
  "ROIs" of four adjacent tiles (ids 4k..4k+3) that share a random UTM zone (WGS 84, EPSG 326xx /
  327xx) and sit side by side on one 10 m grid; all kinds of a tile share the same grid.

``_truth.npz`` (kept aside, not packed) holds per-tile diagnostics per set: bit-packed thick-cloud
masks, cloud and haze fractions, class pixel counts, archetype and EPSG code.

Tiles are generated one at a time from ``default_rng([seed, crc32(set), id, k])``, so memory stays
bounded, any tile is reproducible on its own and a smaller twin with the same seed holds exactly
the first tiles of a larger one. Class ids and keys, band wavelengths, file templates and tile counts
all come from the params file; this module knows how each DFC class *looks* (keyed by class ``key``).
"""

from __future__ import annotations

import itertools
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from stages.config import DatasetSpec
from stages.datasets.twins import spectra
from stages.datasets.twins.scene import smooth_field
from stages.io.logs import progress

log = logging.getLogger(__name__)

LC_KIND = "lc"  # the MODIS layers' file token in the real layout (not a modality: nothing reads it)
LAND = ("forest", "shrubland", "grassland", "wetlands", "croplands", "urban", "barren")
PRESENT = (*LAND, "water")
ABSENT = ("savanna", "snow_ice")

# ------------------------------------------------------------------------------------------------
# S2: surface reflectance endmembers. The VNIR shape comes from spectra.py; SWIR (B11 1614 nm, B12
# 2202 nm) is given explicitly and interpolated from 1100 nm. Each class (or crop state) varies
# between a "lo" and a "hi" endmember per parcel; shared or nested ranges are the built-in confusions.
# ------------------------------------------------------------------------------------------------
Spectrum = Callable[[np.ndarray], np.ndarray]


def _with_swir(vnir: Spectrum, swir1: float, swir2: float) -> Spectrum:
    def refl(wl: np.ndarray) -> np.ndarray:
        wl = np.asarray(wl, dtype=np.float64)
        at_1100 = float(vnir(np.array([1100.0]))[0])
        swir = np.interp(wl, [1100.0, 1614.0, 2202.0], [at_1100, swir1, swir2])
        return np.where(wl < 1100.0, vnir(wl), swir)

    return refl


def _veg(green: float, red: float, nir: float, edge: float = 715.0) -> Spectrum:
    return lambda wl: spectra.vegetation(wl, green=green, red=red, nir=nir, edge=edge)


def _soil(low: float, high: float) -> Spectrum:
    return lambda wl: spectra.soil(wl, low=low, high=high)


def _mix(*parts: tuple[float, Spectrum]) -> Spectrum:
    return lambda wl: sum(w * f(wl) for w, f in parts)


# mineral surfaces shared by urban and barren land (the S2 confusion S1 resolves)
_MINERAL_DARK = _mix((0.55, lambda wl: spectra.flat(wl, level=0.15, tilt=0.25)), (0.45, _soil(0.09, 0.24)))
_MINERAL_BRIGHT = _soil(0.17, 0.36)
_GRASS_LUSH = _veg(green=0.10, red=0.045, nir=0.36, edge=716)
_GRASS_DRY = _mix((0.6, _veg(green=0.10, red=0.08, nir=0.28, edge=710)), (0.4, _soil(0.10, 0.28)))

ENDMEMBERS: dict[str, tuple[Spectrum, Spectrum]] = {
    # dense, dark canopy: low visible and SWIR, high NIR
    "forest": (
        _with_swir(_veg(green=0.050, red=0.022, nir=0.30, edge=724), 0.14, 0.060),
        _with_swir(_veg(green=0.065, red=0.030, nir=0.36, edge=721), 0.17, 0.080),
    ),
    # sparse woody cover over soil: brighter visible and SWIR, lower NIR
    "shrubland": (
        _with_swir(
            _mix((0.65, _veg(green=0.08, red=0.06, nir=0.28, edge=712)), (0.35, _soil(0.10, 0.30))),
            0.27,
            0.19,
        ),
        _with_swir(
            _mix((0.40, _veg(green=0.09, red=0.07, nir=0.26, edge=712)), (0.60, _soil(0.12, 0.32))),
            0.31,
            0.24,
        ),
    ),
    "grassland": (_with_swir(_GRASS_LUSH, 0.25, 0.135), _with_swir(_GRASS_DRY, 0.31, 0.215)),
    # a moister grassland: the middle of the grassland range with ~5% less SWIR
    "wetlands": (
        _with_swir(_mix((0.85, _GRASS_LUSH), (0.15, _GRASS_DRY)), 0.243, 0.138),
        _with_swir(_mix((0.35, _GRASS_LUSH), (0.65, _GRASS_DRY)), 0.275, 0.181),
    ),
    # crop fields by state (see CROP_STATES)
    "crop_green": (
        _with_swir(_veg(green=0.11, red=0.035, nir=0.44, edge=719), 0.25, 0.12),
        _with_swir(_veg(green=0.12, red=0.040, nir=0.52, edge=720), 0.27, 0.13),
    ),
    "crop_stubble": (
        _with_swir(_mix((0.35, _veg(green=0.10, red=0.09, nir=0.25)), (0.65, _soil(0.13, 0.34))), 0.36, 0.28),
        _with_swir(_mix((0.25, _veg(green=0.10, red=0.09, nir=0.25)), (0.75, _soil(0.15, 0.38))), 0.40, 0.32),
    ),
    "crop_ploughed": (_with_swir(_soil(0.05, 0.16), 0.20, 0.17), _with_swir(_soil(0.07, 0.21), 0.25, 0.21)),
    # urban and barren: one shared range of mineral surfaces with a little dry vegetation
    "urban": (
        _with_swir(_mix((0.92, _MINERAL_DARK), (0.08, _GRASS_DRY)), 0.25, 0.22),
        _with_swir(_mix((0.92, _MINERAL_BRIGHT), (0.08, _GRASS_DRY)), 0.38, 0.34),
    ),
    "water": (
        _with_swir(lambda wl: spectra.water(wl, turbidity=0.01), 0.004, 0.002),
        _with_swir(lambda wl: spectra.water(wl, turbidity=0.05), 0.008, 0.004),
    ),
}
ENDMEMBERS["barren"] = ENDMEMBERS["urban"]  # the same surfaces: S2 cannot tell them apart, S1 can
CLOUD = _with_swir(lambda wl: spectra.flat(wl, level=0.60, tilt=-0.05), 0.42, 0.27)

# L1C top of atmosphere: path reflectance and two-way transmittance per band centre (nm); B09 (945 nm)
# and B10 (1374 nm) sit in water-vapour absorption bands, so the surface barely reaches B10.
_ATM_WL = np.array([443, 492, 560, 665, 704, 741, 783, 833, 865, 945, 1374, 1614, 2202], np.float64)
_PATH = np.array([0.080, 0.060, 0.038, 0.024, 0.021, 0.018, 0.015, 0.013, 0.012, 0.009, 0.0005, 0.004, 0.002])
_TRANS = np.array([0.72, 0.78, 0.84, 0.88, 0.89, 0.90, 0.91, 0.92, 0.92, 0.25, 0.004, 0.93, 0.90])
# cloud tops are above the water vapour: high in B10
_CLOUD_B10 = 0.25

# S1 sigma0 (VV, VH) in dB per class / state, before per-parcel jitter, tile offset and speckle.
S1_DB: dict[str, tuple[float, float]] = {
    "forest": (-9.0, -15.0),  # volume scattering
    "shrubland": (-10.0, -16.0),  # ~1 dB below forest: S1 confuses them
    "grassland": (-13.0, -20.5),
    "wetlands": (-7.5, -18.5),  # flooded vegetation: double bounce raises VV, not VH
    "crop_green": (-12.0, -18.5),  # crop states scatter around grassland
    "crop_stubble": (-13.5, -21.0),
    "crop_ploughed": (-11.5, -20.0),  # rough soil
    "urban": (-6.5, -13.0),  # plus bright facade lines (double bounce)
    "barren": (-17.5, -26.0),  # smooth: the darkest land
    "water": (-23.0, -30.0),  # calm: specular, down to the noise floor
    "water_windy": (-16.5, -25.5),  # wind-roughened lakes backscatter like barren land
}
CROP_STATES = (("crop_green", 0.45), ("crop_stubble", 0.3), ("crop_ploughed", 0.25))
ENL = 4.4  # equivalent number of looks of S1 GRD at 10 m
NOISE_FLOOR_DB = -30.0

# Landscape archetypes: class weights for the Voronoi parcels (croplands/urban parcels are subdivided).
ARCHETYPES: dict[str, tuple[float, dict[str, float]]] = {
    "farmland": (
        0.25,
        dict(
            forest=0.08,
            shrubland=0.05,
            grassland=0.22,
            wetlands=0.07,
            croplands=0.45,
            urban=0.07,
            barren=0.06,
        ),
    ),
    "forest": (
        0.2,
        dict(
            forest=0.45, shrubland=0.2, grassland=0.15, wetlands=0.08, croplands=0.06, urban=0.03, barren=0.03
        ),
    ),
    "periurban": (
        0.2,
        dict(
            forest=0.08, shrubland=0.06, grassland=0.2, wetlands=0.04, croplands=0.14, urban=0.36, barren=0.12
        ),
    ),
    "wetland": (
        0.15,
        dict(
            forest=0.1, shrubland=0.06, grassland=0.3, wetlands=0.34, croplands=0.1, urban=0.05, barren=0.05
        ),
    ),
    "arid": (
        0.2,
        dict(
            forest=0.02, shrubland=0.3, grassland=0.16, wetlands=0.02, croplands=0.08, urban=0.14, barren=0.28
        ),
    ),
}

# MODIS-like lc layers: DFC key -> (IGBP choices, LCCS-LC, LCCS-LU, LCCS-SH). IGBP codes invert the DFC
# lookup of datasets.md; the LCCS codes are [U].
LC_CODES: dict[str, tuple[tuple[int, ...], int, int, int]] = {
    "forest": ((1, 2, 4, 5), 11, 10, 10),
    "shrubland": ((6, 7), 41, 40, 40),
    "grassland": ((10,), 31, 30, 30),
    "wetlands": ((11,), 31, 30, 50),
    "croplands": ((12, 14), 31, 36, 30),
    "urban": ((13,), 255, 9, 255),
    "barren": ((16,), 1, 1, 1),
    "water": ((17,), 3, 3, 3),
}
MODIS_PX = 50  # 500 m at 10 m


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """One tile's land cover: per-pixel unit ids and per-unit class keys, states and parameters."""

    unit: np.ndarray  # (H, W) int32: parcel / field / block / water body
    unit_key: list[str]  # material key per unit (a class key or a crop state)
    unit_cls: list[str]  # class key per unit
    unit_group: list[int]  # the parcel's first unit: urban and barren blocks share its S2 surface
    lines: np.ndarray  # (H, W) bool: streets in urban parcels, joints/gullies in barren ones
    facade: np.ndarray  # (H, W) bool: building edges along streets (S1 double bounce)
    unlabelled: np.ndarray  # (H, W) bool
    archetype: str


def _rotated(shape: tuple[int, int], angle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    ca, sa = np.cos(angle), np.sin(angle)
    off = rng.uniform(0, 100, 2)
    return ca * rr + sa * cc + off[0], -sa * rr + ca * cc + off[1]


def _lattice(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Blocks between 1-2 px lines on a slightly warped, rotated grid: ``(line mask, block ids)``.

    Urban parcels use it for blocks and streets, barren parcels for rock/soil patches and the joints,
    gullies or terrace edges between them, drawn from the same distribution: in S2 the two look alike.
    """
    u, v = _rotated(shape, rng.uniform(0, np.pi / 2), rng)
    u, v = u + 1.2 * smooth_field(shape, 12, rng), v + 1.2 * smooth_field(shape, 12, rng)
    a, b = rng.uniform(7, 12), rng.uniform(8, 14)
    width = rng.uniform(1.0, 1.8)
    lines = ((u % a) < width) | ((v % b) < width)
    return lines, np.floor(u / a).astype(np.int64) * 1000 + np.floor(v / b).astype(np.int64)


def build_layout(size: int, rng: np.random.Generator) -> Layout:
    """Parcels, fields, blocks and water bodies of one tile (deterministic for a given ``rng``)."""
    shape = (size, size)
    names = list(ARCHETYPES)
    arch = str(rng.choice(names, p=np.array([ARCHETYPES[n][0] for n in names])))
    weights = np.array([ARCHETYPES[arch][1][k] for k in LAND])
    weights = rng.dirichlet(weights * 12 + 0.3)

    # warped Voronoi parcels
    n_seeds = int(rng.integers(10, 24))
    seeds = rng.uniform(-10, size + 10, (n_seeds, 2))
    rr, cc = np.mgrid[:size, :size].astype(np.float64)
    amp = rng.uniform(6, 16)
    rw = rr + amp * smooth_field(shape, 16, rng)
    cw = cc + amp * smooth_field(shape, 16, rng)
    d2 = (rw[..., None] - seeds[:, 0]) ** 2 + (cw[..., None] - seeds[:, 1]) ** 2
    parcel = np.argmin(d2, axis=-1).astype(np.int32)
    parcel_cls = [LAND[i] for i in rng.choice(len(LAND), size=n_seeds, p=weights)]

    unit = np.zeros(shape, np.int32)
    unit_key: list[str] = []
    unit_cls: list[str] = []
    unit_group: list[int] = []
    lines = np.zeros(shape, bool)

    def new_unit(key: str, cls: str, group: int | None = None) -> int:
        unit_key.append(key)
        unit_cls.append(cls)
        unit_group.append(len(unit_key) - 1 if group is None else group)
        return len(unit_key) - 1

    # croplands: rectangular fields on one rotated grid per tile
    fu, fv = _rotated(shape, rng.uniform(0, np.pi / 2), rng)
    fa, fb = rng.uniform(14, 34), rng.uniform(20, 50)
    field_id = np.floor(fu / fa).astype(np.int64) * 1000 + np.floor(fv / fb).astype(np.int64)
    # urban blocks between streets, barren patches between joints: one lattice each per tile
    lattices = {"urban": _lattice(shape, rng), "barren": _lattice(shape, rng)}
    states, probs = zip(*CROP_STATES, strict=True)

    for p in range(n_seeds):
        mask = parcel == p
        if not mask.any():
            continue
        cls = parcel_cls[p]
        if cls == "croplands":
            ids, inv = np.unique(field_id[mask], return_inverse=True)
            base = len(unit_key)
            for _ in ids:
                new_unit(str(rng.choice(states, p=probs)), "croplands")
            unit[mask] = base + inv
        elif cls in lattices:
            on_line, block_id = lattices[cls]
            ids, inv = np.unique(block_id[mask], return_inverse=True)
            base = len(unit_key)
            for _ in ids:
                new_unit(cls, cls, group=base)
            unit[mask] = base + inv
            lines |= mask & on_line
        else:
            unit[mask] = new_unit(cls, cls)
    urban = np.isin(unit, [i for i, c in enumerate(unit_cls) if c == "urban"])
    facade = ndimage.binary_dilation(lines & urban) & ~lines & urban

    # water on top: a meandering river and/or lakes
    water = np.zeros(shape, bool)
    if rng.random() < 0.45:
        along, across = (rr, cc) if rng.random() < 0.5 else (cc, rr)
        centre = (
            rng.uniform(0.2, 0.8) * size
            + rng.uniform(10, 40)
            * np.sin(2 * np.pi * along / rng.uniform(120, 400) + rng.uniform(0, 2 * np.pi))
            + 12 * smooth_field(shape, 30, rng)
        )
        width = rng.uniform(2, 9) * (1 + 0.25 * smooth_field(shape, 25, rng))
        river = np.abs(across - centre) < width / 2
        unit[river] = new_unit("water", "water")
        water |= river
    if rng.random() < 0.4:
        field = smooth_field(shape, rng.uniform(8, 16), rng)
        lakes = field > np.quantile(field, 1 - rng.uniform(0.03, 0.12))
        labels, n = ndimage.label(lakes)
        for k in range(1, n + 1):
            unit[labels == k] = new_unit("water_windy" if rng.random() < 0.35 else "water", "water")
        water |= lakes
    lines &= ~water
    facade &= ~water

    unlabelled = np.zeros(shape, bool)
    if rng.random() < 0.12:  # rare unlabelled patches (0 in the real labels)
        r0, c0 = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(3, 12, 2)
        unlabelled = ((rr - r0) / ry) ** 2 + ((cc - c0) / rx) ** 2 <= 1
    return Layout(unit, unit_key, unit_cls, unit_group, lines, facade, unlabelled, arch)


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


@dataclass
class Clouds:
    thick: np.ndarray  # (H, W) opacity 0..1
    haze: np.ndarray  # (H, W) opacity 0..1
    shadow: np.ndarray  # (H, W) 0..1 shading of the ground


def make_clouds(size: int, rng: np.random.Generator) -> Clouds:
    shape = (size, size)
    thick = np.zeros(shape)
    shadow = np.zeros(shape)
    if rng.random() < 0.45:
        field = smooth_field(shape, rng.uniform(10, 26), rng) + 0.35 * smooth_field(shape, 3, rng)
        cover = rng.uniform(0.1, 0.6)
        thresh = np.quantile(field, 1 - cover)
        thick = np.clip((field - thresh) / rng.uniform(0.2, 0.5), 0, 1)
        shift = rng.uniform(8, 24) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        shadow = ndimage.shift(thick, shift, order=1, mode="constant", cval=0.0)
    haze = np.zeros(shape)
    if rng.random() < 0.4:
        haze = rng.uniform(0.04, 0.22) * np.clip(0.6 + 0.5 * smooth_field(shape, 40, rng), 0, 1)
    return Clouds(thick, haze, shadow)


def _band_sigmas(names: tuple[str, ...]) -> np.ndarray:
    """PSF blur per band: 10 m bands lightly, 20 m and 60 m bands to their native resolution."""
    res = {"B01": 60, "B09": 60, "B10": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20}
    return np.array([{10: 0.45, 20: 0.9, 60: 2.4}[res.get(n, 10)] for n in names])


def render_s2(
    lay: Layout, clouds: Clouds, wl: np.ndarray, names: tuple[str, ...], rng: np.random.Generator
) -> np.ndarray:
    """L1C-like TOA reflectance x 1e4, uint16 (bands, H, W)."""
    size = lay.unit.shape[0]
    shape = (size, size)
    n_units = len(lay.unit_key)
    lo = np.stack([ENDMEMBERS["water" if k == "water_windy" else k][0](wl) for k in lay.unit_key])
    hi = np.stack([ENDMEMBERS["water" if k == "water_windy" else k][1](wl) for k in lay.unit_key])
    # one surface per parcel; the blocks of urban and barren parcels vary a little around it
    group = np.asarray(lay.unit_group)
    block = np.isin(group, group[group != np.arange(n_units)])  # units of a subdivided parcel
    t_unit = np.clip(rng.uniform(0, 1, n_units)[group] + block * rng.normal(0, 0.1, n_units), 0, 1)
    gain = np.clip(rng.normal(1.0, 0.07, n_units), 0.8, 1.2)[group] * (
        1 + block * rng.normal(0, 0.04, n_units)
    )
    t = np.clip(t_unit[lay.unit] + 0.12 * smooth_field(shape, 3, rng), 0, 1)[None]
    refl = lo[lay.unit].transpose(2, 0, 1) * (1 - t) + hi[lay.unit].transpose(2, 0, 1) * t
    texture = 1 + 0.035 * smooth_field(shape, 1.5, rng) + 0.03 * smooth_field(shape, 6, rng)
    refl = refl * (gain[lay.unit] * texture)[None]
    # streets (asphalt and building shadow) and barren joints (shade) darken alike at 10 m
    refl[:, lay.lines] *= 0.88
    # atmosphere (per-tile aerosol and water vapour), cloud shadows, haze and thick clouds
    path = np.interp(wl, _ATM_WL, _PATH) * rng.uniform(0.6, 1.5)
    trans = np.interp(wl, _ATM_WL, _TRANS)
    trans[np.isclose(wl, 945, atol=30)] *= rng.uniform(0.7, 1.3)
    ground = refl * (1 - 0.7 * clouds.shadow)[None] * (1 - 0.4 * clouds.haze)[None]
    toa = path[:, None, None] + trans[:, None, None] * ground
    cloud = CLOUD(wl)
    cloud[np.isclose(wl, 1374, atol=40)] = _CLOUD_B10
    brightness = 0.85 + 0.15 * smooth_field(shape, 4, rng)
    alpha = 1 - (1 - clouds.thick) * (1 - clouds.haze)
    toa = (1 - alpha)[None] * toa + (alpha * brightness)[None] * cloud[:, None, None]
    sig = _band_sigmas(names)
    toa = np.stack([ndimage.gaussian_filter(b, s, mode="nearest") for b, s in zip(toa, sig, strict=True)])
    toa += rng.normal(0, 0.0025, toa.shape)
    return np.clip(np.rint(toa * 1e4), 1, 65535).astype(np.uint16)


def render_s1(lay: Layout, tile_id: int, rng: np.random.Generator) -> np.ndarray:
    """Sigma0 in dB, float32 (2, H, W): VV, VH."""
    size = lay.unit.shape[0]
    shape = (size, size)
    n_units = len(lay.unit_key)
    means = np.array([S1_DB[k] for k in lay.unit_key])  # (U, 2)
    jitter = rng.normal(0, 0.8, (n_units, 1)) + rng.normal(0, 0.4, (n_units, 2))
    db = (means + jitter)[lay.unit].transpose(2, 0, 1)  # (2, H, W)
    db += rng.normal(0, 0.6)  # per-tile calibration / incidence offset
    db += 0.6 * smooth_field(shape, 4, rng)[None]
    # double bounce along facades: bright, heavy-tailed points and lines
    n_fac = int(lay.facade.sum())
    if n_fac:
        bright = np.where(rng.random(n_fac) < 0.45, np.minimum(rng.gamma(2.0, 2.5, n_fac), 14.0), 0.0)
        db[0][lay.facade] += bright
        db[1][lay.facade] += 0.6 * bright
    power = 10 ** (db / 10) * rng.gamma(ENL, 1 / ENL, db.shape) + 10 ** (NOISE_FLOOR_DB / 10)
    out = (10 * np.log10(power)).astype(np.float32)
    if tile_id % 8 == 5:  # the odd no-data pixels
        r, c = rng.integers(0, size, 2)
        n = int(rng.integers(1, 40))
        rows = np.clip(r + rng.integers(-3, 4, n), 0, size - 1)
        cols = np.clip(c + rng.integers(-3, 4, n), 0, size - 1)
        out[:, rows, cols] = np.nan
    return out


def render_labels(lay: Layout, ids: dict[str, int]) -> np.ndarray:
    lut = np.array([ids[c] for c in lay.unit_cls], np.uint8)
    labels = lut[lay.unit]
    labels[lay.unlabelled] = 0
    return labels


def render_lc(lay: Layout, rng: np.random.Generator) -> np.ndarray:
    """4 MODIS-like layers at 500 m (blocky, majority of the land cover), uint8 (4, H, W)."""
    size = lay.unit.shape[0]
    keys = list(LC_CODES)
    cls_idx = np.array([keys.index(c) for c in lay.unit_cls])[lay.unit]
    igbp_pick = {k: int(rng.choice(v[0])) for k, v in LC_CODES.items()}
    off = rng.integers(0, MODIS_PX, 2)
    edges_r = np.unique(np.clip(np.r_[0, np.arange(off[0], size, MODIS_PX), size], 0, size))
    edges_c = np.unique(np.clip(np.r_[0, np.arange(off[1], size, MODIS_PX), size], 0, size))
    out = np.zeros((4, size, size), np.uint8)
    for r0, r1 in itertools.pairwise(edges_r):
        for c0, c1 in itertools.pairwise(edges_c):
            key = keys[int(np.bincount(cls_idx[r0:r1, c0:c1].ravel(), minlength=len(keys)).argmax())]
            codes = (igbp_pick[key], *LC_CODES[key][1:])
            out[:, r0:r1, c0:c1] = np.array(codes, np.uint8)[:, None, None]
    return out


# ------------------------------------------------------------------------------------------------
# The twin
# ------------------------------------------------------------------------------------------------


def _georef(seed: int, set_key: int, tile_id: int, size: int, gsd: float) -> tuple[CRS, Any]:
    """ROIs of four adjacent tiles share a UTM zone and a 10 m grid [U]."""
    roi, k = divmod(tile_id, 4)
    rng = np.random.default_rng([seed, set_key, 1_000_000 + roi])
    zone = int(rng.integers(1, 61))
    epsg = (32600 if rng.random() < 0.75 else 32700) + zone
    east = round(float(rng.uniform(250_000, 700_000)) / gsd) * gsd
    north = round(float(rng.uniform(1_000_000, 7_000_000)) / gsd) * gsd
    transform = from_origin(east + (k % 2) * size * gsd, north - (k // 2) * size * gsd, gsd, gsd)
    return CRS.from_epsg(epsg), transform


def _write(path: Path, data: np.ndarray, crs: CRS, transform: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        interleave="pixel",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _check_spec(spec: DatasetSpec) -> tuple[str, str, dict[str, int]]:
    ids = {c.key: c.id for c in spec.classes}
    missing = [k for k in PRESENT if k not in ids]
    if missing:
        raise ValueError(f"{spec.path}: the dfc20 twin generator needs class keys {missing}.")
    mods = spec.modalities
    s2 = next((n for n, m in mods.items() if m.bands == 13 and m.wavelengths_nm), None)
    s1 = next((n for n, m in mods.items() if m.bands == 2), None)
    if s2 is None or s1 is None:
        raise ValueError(
            f"{spec.path}: the dfc20 twin needs a 13-band S2 (with wavelengths) and a 2-band S1."
        )
    if spec.labels["train"] != spec.labels["test"]:
        raise ValueError(f"{spec.path}: the dfc20 twin writes one label token; train and test differ.")
    return s2, s1, ids


def generate(spec: DatasetSpec, out_dir: Path) -> dict[str, Any]:
    """Write every tile of every set into ``out_dir`` laid out as the real archive's contents.

    Returns a summary (tile counts, class fractions, cloud cover). ``_truth.npz`` keeps per-tile
    diagnostics: archetype, thick-cloud masks (bit-packed), haze and class fractions.
    """
    s2_name, s1_name, ids = _check_spec(spec)
    s2, s1 = spec.modalities[s2_name], spec.modalities[s1_name]
    seed = int(spec.twin["seed"])
    size = int(spec.tiles["size"])
    gsd = float(spec.grid.get("gsd_m", 10.0))
    wl = np.asarray(s2.wavelengths_nm, np.float64)
    label_kind = spec.labels["train"]
    counts = spec.tile_counts() or {}
    truth: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {"size": size, "sets": {}}
    class_ids = [c.id for c in spec.classes]
    for tile_set in spec.tiles["sets"]:
        n = int(counts.get(tile_set, 0))
        set_key = zlib.crc32(tile_set.encode())
        hist = np.zeros((n, max(class_ids) + 1), np.int64)
        cloud_bits, haze, cloud_frac, archetypes, epsg = [], [], [], [], []
        for tile_id in progress(range(n), desc=f"dfc20 twin {tile_set}", total=n, unit="tile"):
            rng_layout, rng_cloud, rng_s2, rng_s1, rng_lc = (
                np.random.default_rng([seed, set_key, tile_id, k]) for k in range(5)
            )
            lay = build_layout(size, rng_layout)
            clouds = make_clouds(size, rng_cloud)
            crs, transform = _georef(seed, set_key, tile_id, size, gsd)
            labels = render_labels(lay, ids)
            tiles = {
                s2.file: render_s2(lay, clouds, wl, s2.band_names, rng_s2),
                s1.file: render_s1(lay, tile_id, rng_s1),
                label_kind: labels[None],
                LC_KIND: render_lc(lay, rng_lc),
            }
            for kind, data in tiles.items():
                _write(out_dir / spec.tile_path(tile_set, kind, tile_id), data, crs, transform)
            hist[tile_id] = np.bincount(labels.ravel(), minlength=hist.shape[1])
            cloud_bits.append(np.packbits(clouds.thick > 0.5))
            cloud_frac.append(float((clouds.thick > 0.5).mean()))
            haze.append(float(clouds.haze.mean()))
            archetypes.append(lay.archetype)
            epsg.append(crs.to_epsg())
        truth[f"{tile_set}_cloud_bits"] = np.array(cloud_bits, np.uint8).reshape(n, -1)
        truth[f"{tile_set}_cloud_fraction"] = np.array(cloud_frac)
        truth[f"{tile_set}_haze"] = np.array(haze)
        truth[f"{tile_set}_class_pixels"] = hist
        truth[f"{tile_set}_archetype"] = np.array(archetypes, dtype="U16")
        truth[f"{tile_set}_epsg"] = np.array(epsg, np.int32)
        total = max(int(hist.sum()), 1)
        summary["sets"][tile_set] = {
            "tiles": n,
            "class_fraction": {c.key: round(float(hist[:, c.id].sum()) / total, 4) for c in spec.classes},
            "unlabelled_fraction": round(float(hist[:, 0].sum()) / total, 5),
            "cloudy_tiles": int(sum(f > 0 for f in cloud_frac)),
            "thick_cloud_fraction": round(float(np.mean(cloud_frac)) if n else 0.0, 4),
        }
    np.savez_compressed(out_dir / "_truth.npz", **truth)
    return summary
