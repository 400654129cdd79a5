"""A generic twin for scene datasets distributed as MATLAB files (Trento, MUUFL Gulfport, the S2FL
sets HS-SAR Berlin and HS-SAR-DSM Augsburg).

Everything dataset-specific comes from the params file: the grid, the classes and their per-class
counts, each modality's file, variable (or struct path, e.g. ``hsi.Lidar[0].z``), band count and
dtype, the labels' file, variable, dtype and unlabelled value, and optional struct fields for the
class names (``labels.class_names_key``) and band centres (``modalities.<m>.wavelengths_key``).
This module only knows how a class *looks*, keyed by the class ``key`` (with a seeded generic look
for keys it does not know).

The layout is a warped Voronoi tessellation into parcels, each parcel one class, with parcel areas
allotted in proportion to each class's labelled count. Exactly ``train + test`` pixels of each
class (the params counts, scaled for a small twin) are labelled, chosen deepest inside their
parcels first, as ground-truth polygons are drawn; everything else is unlabelled. The HSI is a
reflectance cube (smooth class spectra, per-parcel brightness, texture, noise, a slight PSF); the
LiDAR has per-band returns: band 1 the surface, later bands lower through vegetation; a SAR
modality (``twin.renderers``) is speckled backscatter in dB. A product delivered pre-upsampled
(Berlin's 30 m HSI on the SAR grid) is rendered coarse and nearest-upsampled
(``twin.low_resolution``), and a zero-filled no-data strip can be cut into it (``twin.nodata_border``).

Fusion matters by construction: vegetation classes share near-identical spectra and differ in height
and LiDAR penetration; half of each roof is road-like asphalt. A random forest on single pixels of
the full-size twins (train split -> test split) scores: Trento HSI 0.93, LiDAR 0.88, both 1.00;
MUUFL HSI 0.95, LiDAR 0.70, both 0.99 (the twins are easier than the real scenes, whose labelled
pixels are not all deep inside homogeneous parcels).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from scipy import ndimage
from scipy.spatial import cKDTree

from stages.config import DatasetSpec, Modality
from stages.datasets.splits import per_class_counts_mask
from stages.datasets.twins import spectra
from stages.datasets.twins.scene import smooth_field

log = logging.getLogger(__name__)

Spectrum = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Look:
    """How one class appears: reflectance, height above terrain (m) and its spread, the fraction of
    the height a later LiDAR return loses (vegetation lets pulses through; roofs do not) and the SAR
    co-polarised backscatter (dB; buildings bright by double bounce, water dark by specular loss)."""

    reflectance: Spectrum
    height_m: float = 0.0
    height_sd: float = 0.1
    penetration: float = 0.0
    backscatter_db: float = -12.0


def mix(a: Spectrum, b: Spectrum, w: float) -> Spectrum:
    return lambda wl: (1 - w) * a(wl) + w * b(wl)


_ASPHALT: Spectrum = lambda wl: spectra.flat(wl, level=0.10, tilt=0.25)  # noqa: E731
_SOIL: Spectrum = lambda wl: spectra.soil(wl, low=0.08, high=0.30)  # noqa: E731
_GRASS: Spectrum = lambda wl: spectra.vegetation(wl, green=0.10, red=0.045, nir=0.42)  # noqa: E731
_ROOF: Spectrum = lambda wl: spectra.step(wl, low=0.08, high=0.30, at=590)  # noqa: E731 (clay tiles)

LOOKS: dict[str, Look] = {
    # Trento: orchards, vineyards and woods share vegetation spectra; height and LiDAR penetration
    # separate them (apple trees ~3 m in rows, vines ~1.5 m, woods ~15 m).
    "apple_trees": Look(lambda wl: spectra.vegetation(wl, green=0.09, red=0.040, nir=0.40), 3.5, 0.8, 0.5),
    # roofs: half road-like asphalt, so height separates many roofs from roads
    "buildings": Look(mix(_ASPHALT, lambda wl: spectra.flat(wl, level=0.22, tilt=0.05), 0.5), 9, 2.5, 0),
    "ground": Look(_SOIL, 0.0, 0.1, 0.0),
    "woods": Look(lambda wl: spectra.vegetation(wl, green=0.085, red=0.037, nir=0.385, edge=718), 15, 3, 0.6),
    "vineyard": Look(mix(_GRASS, _SOIL, 0.35), 1.5, 0.4, 0.5),
    "roads": Look(_ASPHALT),
    # MUUFL Gulfport: a campus with trees, lawns, roads, roofs, shadows, a pond, curbs and cloth targets.
    "trees": Look(lambda wl: spectra.vegetation(wl, green=0.08, red=0.035, nir=0.40, edge=720), 12, 3, 0.6),
    "mostly_grass": Look(_GRASS, 0.1, 0.05, 0.0),
    "mixed_ground_surface": Look(mix(_SOIL, _GRASS, 0.5), 0.05, 0.05, 0.0),
    "dirt_and_sand": Look(lambda wl: spectra.soil(wl, low=0.11, high=0.36)),
    "road": Look(_ASPHALT),
    "water": Look(lambda wl: spectra.water(wl), -0.3, 0.05, 0.0, -22.0),
    "building_shadow": Look(lambda wl: spectra.diffuse_sky(wl) * spectra.flat(wl, level=0.12), 0.0, 0.1, 0.0),
    "sidewalk": Look(lambda wl: spectra.flat(wl, level=0.24, tilt=0.06), 0.05, 0.03, 0.0),
    "yellow_curb": Look(lambda wl: spectra.step(wl, low=0.07, high=0.48, at=515), 0.15, 0.03, 0.0),
    "cloth_panels": Look(lambda wl: spectra.paint(wl, base=0.08, peaks=[(630, 50, 0.35)]), 0.05, 0.02, 0.0),
    # S2FL Berlin / Augsburg (30 m HSI, Sentinel-1, DSM): urban blocks mix roofs, streets and trees, so
    # their spectra overlap; SAR double bounce and height separate them. soil / low plants / allotments
    # share spectra and differ in SAR roughness and height.
    "forest": Look(
        lambda wl: spectra.vegetation(wl, green=0.085, red=0.037, nir=0.38, edge=718), 18, 4, 0.6, -8
    ),
    "residential_area": Look(mix(mix(_ROOF, _GRASS, 0.35), _ASPHALT, 0.3), 8, 3, 0.1, -5),
    "industrial_area": Look(
        mix(lambda wl: spectra.flat(wl, level=0.26, tilt=0.02), _ASPHALT, 0.3), 10, 3, 0, -2
    ),
    "low_plants": Look(mix(_GRASS, _SOIL, 0.2), 0.4, 0.2, 0.3, -13),
    "soil": Look(_SOIL, 0.0, 0.1, 0.0, -16),
    "allotment": Look(mix(_GRASS, _SOIL, 0.3), 2.5, 1.0, 0.5, -10),
    "commercial_area": Look(
        mix(lambda wl: spectra.flat(wl, level=0.20, tilt=0.08), _ASPHALT, 0.4), 16, 5, 0, -1
    ),
}


def generic_look(class_id: int, seed: int) -> Look:
    """A seeded smooth spectrum for a class key this module has no look for."""
    rng = np.random.default_rng([seed, class_id, 7])
    level, tilt = rng.uniform(0.05, 0.4), rng.uniform(-0.3, 0.3)
    peak = (rng.uniform(450, 900), rng.uniform(30, 80), rng.uniform(0.0, 0.15))
    return Look(lambda wl: spectra.paint(wl, base=level, peaks=[peak]) * (1 + tilt * (wl - 700) / 350))


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def parcels(height: int, width: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W)`` int parcel ids 0..n-1: a Voronoi tessellation of warped coordinates (wavy borders)."""
    spacing = np.sqrt(height * width / n)
    seeds = np.column_stack([rng.uniform(0, height, n), rng.uniform(0, width, n)])
    rr, cc = np.mgrid[:height, :width].astype(np.float64)
    amp = 0.35 * spacing
    rr = rr + amp * smooth_field((height, width), spacing / 2, rng)
    cc = cc + amp * smooth_field((height, width), spacing / 2, rng)
    _, idx = cKDTree(seeds).query(np.column_stack([rr.ravel(), cc.ravel()]))
    return idx.reshape(height, width).astype(np.int32)


def assign_classes(
    parcel: np.ndarray, need: dict[int, int], rng: np.random.Generator, blocked: np.ndarray | None = None
) -> np.ndarray:
    """``(H, W)`` uint8 class map with every class covering at least its ``need`` pixels.

    Parcels go, largest first, to the class furthest below its share of the scene (shares in
    proportion to ``need``); classes still short are then grown into neighbours with area to spare.
    ``blocked`` (``(H, W)`` bool, e.g. a no-data border) pixels keep their parcel's class but count
    for nothing: the ``need`` pixels of every class lie outside them.
    """
    ids = sorted(need)
    total = sum(need.values())
    free = parcel if blocked is None else parcel[~blocked]
    target = {c: need[c] / total * free.size for c in ids}
    areas = np.bincount(free.ravel(), minlength=int(parcel.max()) + 1)
    got = dict.fromkeys(ids, 0.0)
    lut = np.zeros(len(areas), np.uint8)
    for p in np.argsort(-areas, kind="stable"):
        c = max(ids, key=lambda k: (target[k] - got[k]) / max(target[k], 1e-9))
        lut[p] = c
        got[c] += areas[p]
    cls = lut[parcel]
    work = cls if blocked is None else np.where(blocked, 0, cls).astype(np.uint8)  # 0: never spare
    for c in sorted(ids, key=lambda k: need[k]):
        _grow(work, c, need, rng)
    return work if blocked is None else np.where(blocked, cls, work).astype(np.uint8)


def _grow(cls: np.ndarray, c: int, need: dict[int, int], rng: np.random.Generator) -> None:
    """Grow class ``c`` in place until it covers ``need[c]`` pixels, taking only spare pixels."""
    counts = {k: int((cls == k).sum()) for k in need}
    while counts[c] < need[c]:
        spare = np.isin(cls, [k for k in need if k != c and counts[k] > need[k]])
        mask = cls == c
        ring = ndimage.binary_dilation(mask) & spare if mask.any() else np.zeros_like(mask)
        if not ring.any():  # no spare neighbour: start a new patch somewhere spare
            ring = np.zeros_like(mask)
            ring.ravel()[rng.choice(np.flatnonzero(spare))] = True
        for r, col in np.argwhere(ring)[rng.permutation(int(ring.sum()))]:
            donor = int(cls[r, col])
            if counts[c] >= need[c]:
                break
            if counts[donor] > need[donor]:
                cls[r, col] = c
                counts[donor] -= 1
                counts[c] += 1


def choose_labelled(
    cls: np.ndarray, need: dict[int, int], rng: np.random.Generator, blocked: np.ndarray | None = None
) -> np.ndarray:
    """``(H, W)`` bool: exactly ``need[c]`` pixels of each class, deepest inside their regions first,
    none on ``blocked`` pixels (a no-data border carries no ground truth)."""
    labelled = np.zeros(cls.shape, bool)
    jitter = smooth_field(cls.shape, 3.0, rng)  # breaks ties into blob-shaped, not ring-shaped, sets
    for c in sorted(need):
        mask = cls == c
        if blocked is not None:
            mask &= ~blocked
        depth = ndimage.distance_transform_edt(mask) + 1.5 * jitter
        idx = np.flatnonzero(mask)
        order = np.argsort(-depth.ravel()[idx], kind="stable")
        labelled.ravel()[idx[order[: need[c]]]] = True
    return labelled


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def wavelengths(spec: DatasetSpec, modality: Modality) -> np.ndarray:
    """Band centres (nm): the params file's, else ``twin.wavelength_range_nm`` spaced linearly."""
    if modality.wavelengths_nm:
        return np.asarray(modality.wavelengths_nm, np.float64)
    lo, hi = spec.twin.get("wavelength_range_nm", [400.0, 1000.0])
    return np.linspace(lo, hi, modality.bands)


def render_hsi(
    cls: np.ndarray, parcel: np.ndarray, looks: dict[int, Look], wl: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``(H, W, C)`` float64 reflectance: class spectra x parcel brightness x texture, blurred, noisy."""
    table = np.stack([np.zeros_like(wl)] + [looks[c].reflectance(wl) for c in sorted(looks)])
    lut = np.zeros(int(cls.max()) + 1, np.int64)
    lut[sorted(looks)] = np.arange(1, len(looks) + 1)
    # each parcel its own brightness and spectral tilt, so that classes vary within themselves
    gain = rng.normal(1.0, 0.15, parcel.max() + 1)[parcel]
    tilt = rng.normal(0.0, 0.08, parcel.max() + 1)[parcel]
    texture = 1.0 + 0.08 * smooth_field(cls.shape, 1.5, rng)
    slope = (wl - wl.mean()) / (np.ptp(wl) + 1e-9)
    cube = table[lut[cls]] * (gain * texture)[..., None] * (1.0 + tilt[..., None] * slope)
    cube = ndimage.gaussian_filter(cube, sigma=(0.7, 0.7, 0))  # the sensor PSF mixes edge pixels
    cube += rng.normal(0.0, 0.012, cube.shape)
    return np.clip(cube, 0.0, None)


def render_lidar(
    cls: np.ndarray,
    parcel: np.ndarray,
    looks: dict[int, Look],
    bands: int,
    gsd: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(H, W, bands)`` float64 elevation (m): terrain + class heights; later returns go lower in
    vegetation (by the class's penetration)."""
    terrain = 10.0 + 1.5 * smooth_field(cls.shape, 40.0 / gsd, rng)
    mean = np.zeros(int(cls.max()) + 1)
    sd = np.zeros_like(mean)
    pen = np.zeros_like(mean)
    for c, look in looks.items():
        mean[c], sd[c], pen[c] = look.height_m, look.height_sd, look.penetration
    # one height per parcel and class, plus per-pixel roughness
    per_parcel = rng.standard_normal(parcel.max() + 1)[parcel]
    height = np.maximum(mean[cls] + sd[cls] * (0.6 * per_parcel + 0.4 * rng.standard_normal(cls.shape)), -1)
    out = np.empty((*cls.shape, bands))
    for b in range(bands):
        drop = pen[cls] * b / max(bands - 1, 1) * rng.uniform(0.5, 1.0, cls.shape)
        out[..., b] = terrain + height * (1 - drop) + rng.normal(0.0, 0.05, cls.shape)
    return out


def render_backscatter(
    cls: np.ndarray, parcel: np.ndarray, looks: dict[int, Look], bands: int, rng: np.random.Generator
) -> np.ndarray:
    """``(H, W, bands)`` float64 SAR backscatter (dB): band 1 the class's co-polarised level, each later
    band a few dB lower, cross-polarised bands less so over vegetation (volume scattering); a
    per-parcel offset and multiplicative speckle (4 looks). [U] the real channels' meaning."""
    level = np.full(int(cls.max()) + 1, -12.0)
    pen = np.zeros_like(level)
    for c, look in looks.items():
        level[c], pen[c] = look.backscatter_db, look.penetration
    offset = rng.normal(0.0, 1.0, parcel.max() + 1)[parcel]
    out = np.empty((*cls.shape, bands))
    for b in range(bands):
        db = level[cls] + offset - 6.0 * b + 4.0 * pen[cls] * (b % 2)
        speckle = rng.gamma(4.0, 1.0 / 4.0, cls.shape)
        out[..., b] = db + 10.0 * np.log10(speckle)
    return out


def box(h: int, w: int, fractions: dict[str, float]) -> np.ndarray:
    """``(H, W)`` bool strip of the given ``left/right/top/bottom`` fractions of the width / height."""
    mask = np.zeros((h, w), bool)
    left, right = round(fractions.get("left", 0) * w), round(fractions.get("right", 0) * w)
    top, bottom = round(fractions.get("top", 0) * h), round(fractions.get("bottom", 0) * h)
    mask[:, :left] = True
    mask[:, w - right :] = True  # right = 0: the empty slice w:
    mask[:top] = True
    mask[h - bottom :] = True
    return mask


def coarse_grid(h: int, w: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays between the ``(H, W)`` grid and a coarser one of ``scale``: ``(rows_lr, cols_lr)``
    sample the fine grid at the coarse pixels' centres, ``(rows_up, cols_up)`` nearest-upsample back."""
    lh, lw = max(1, round(h * scale)), max(1, round(w * scale))
    rows_lr = np.minimum(((np.arange(lh) + 0.5) * h / lh).astype(np.int64), h - 1)
    cols_lr = np.minimum(((np.arange(lw) + 0.5) * w / lw).astype(np.int64), w - 1)
    rows_up = np.minimum((np.arange(h) * lh / h).astype(np.int64), lh - 1)
    cols_up = np.minimum((np.arange(w) * lw / w).astype(np.int64), lw - 1)
    return rows_lr, cols_lr, rows_up, cols_up


# --------------------------------------------------------------------------------------------------
# MATLAB files
# --------------------------------------------------------------------------------------------------

# scipy writes the creation time into the 116-byte text header: a fixed one keeps files byte-identical
_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: landfuse synthetic twin".ljust(116)


def _parse_key(key: str) -> list[str]:
    """``hsi.Lidar[0].z`` -> ``["hsi", "Lidar", "z"]``; a twin writes 1 x 1 struct arrays only."""
    parts = []
    for part in key.split("."):
        if part.endswith("]"):
            name, index = part[:-1].split("[", 1)
            if int(index) != 0:
                raise ValueError(f"twins write 1 x 1 struct arrays; cannot write index {index} of `{key}`")
            part = name
        parts.append(part)
    return parts


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``value`` at struct path ``key`` in nested dicts (savemat writes a dict as a 1 x 1 struct)."""
    *parents, leaf = _parse_key(key)
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def write_mat(path: Path, variables: dict[str, Any]) -> None:
    """MATLAB v5 file (compressed, as MATLAB's default -v7 is) with a fixed header: byte-identical."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=True, oned_as="column")
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def as_dtype(array: np.ndarray, dtype: str | None) -> np.ndarray:
    dtype = np.dtype(dtype or "float64")
    if dtype.kind in "ui":  # integer sensors store scaled values (reflectance x 10000)
        info = np.iinfo(dtype)
        return np.clip(np.rint(array * 10000), info.min, info.max).astype(dtype)
    return array.astype(dtype)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def labelled_counts(spec: DatasetSpec) -> dict[int, int]:
    """Labelled pixels per class id: ``train + test``, both scaled as the params file says."""
    train, test = spec.expected_counts("train"), spec.expected_counts("test")
    if train is None or test is None:
        raise ValueError(f"{spec.path}: a mat_scene twin needs train and test counts for every class.")
    return {c: train[c] + test[c] for c in train}


def _render(
    spec: DatasetSpec,
    name: str,
    modality: Modality,
    cls: np.ndarray,
    parcel: np.ndarray,
    looks: dict[int, Look],
    rng: np.random.Generator,
) -> np.ndarray:
    """``(H, W, bands)`` array of one modality, as ``twin.renderers`` says (default: the primary
    modality reflectance, the others elevation)."""
    default = "reflectance" if modality.role == "primary" else "elevation"
    kind = (spec.twin.get("renderers") or {}).get(name, default)
    if kind == "reflectance":
        return render_hsi(cls, parcel, looks, wavelengths(spec, modality), rng)
    if kind == "backscatter":
        return render_backscatter(cls, parcel, looks, modality.bands, rng)
    return render_lidar(cls, parcel, looks, modality.bands, float(spec.grid.get("gsd_m", 1.0)), rng)


def generate(spec: DatasetSpec, out_dir: Path) -> dict[str, Any]:
    """Write the twin's ``.mat`` files under ``out_dir`` at their member paths, plus ``_truth.npz``.

    Optional ``twin`` switches: ``low_resolution`` renders a modality on a coarser grid and
    nearest-upsamples it (a product pre-upsampled onto the reference grid); ``nodata_border`` fills a
    strip of the listed modalities with their ``nodata`` value in every band and keeps labels off it;
    ``renderers`` picks each modality's renderer. Train and test label maps in files of their own
    (``labels.train != labels.test`` and no ``labels.split``) split each class's labelled pixels
    into its ``train`` count, drawn at random (the twin's seed), and the rest as test.
    """
    seed = spec.twin["seed"]
    rng = np.random.default_rng([seed, 0])
    h, w = spec.height, spec.width
    need = labelled_counts(spec)
    border_spec = spec.twin.get("nodata_border")
    border = box(h, w, border_spec) if border_spec else None
    free = h * w - (0 if border is None else int(border.sum()))
    if sum(need.values()) > free:
        raise ValueError(f"{spec.path}: {sum(need.values())} labelled pixels do not fit a {h} x {w} grid.")
    n_parcels = max(4 * len(need), h * w // 300)
    parcel = parcels(h, w, n_parcels, rng)
    cls = assign_classes(parcel, need, rng, border)
    labelled = choose_labelled(cls, need, rng, border)
    looks = {c.id: LOOKS.get(c.key) or generic_look(c.id, seed) for c in spec.classes}

    files: dict[str, dict[str, Any]] = {}
    low_res = spec.twin.get("low_resolution") or {}
    for name, modality in spec.modalities.items():
        if modality.format != "mat":
            raise ValueError(f"{spec.path}: mat_scene writes .mat modalities; {name} is {modality.format}.")
        if name in low_res:
            # the sensor sees the coarse grid; its pixels are repeated onto the fine one
            rows_lr, cols_lr, rows_up, cols_up = coarse_grid(h, w, low_res[name])
            coarse = _render(
                spec,
                name,
                modality,
                cls[np.ix_(rows_lr, cols_lr)],
                parcel[np.ix_(rows_lr, cols_lr)],
                looks,
                rng,
            )
            array = as_dtype(coarse, modality.dtype)
            del coarse
            array = array[rows_up][:, cols_up]
        else:
            array = as_dtype(_render(spec, name, modality, cls, parcel, looks, rng), modality.dtype)
        if border is not None and name in border_spec["modalities"]:
            array[border] = modality.nodata
        if modality.role == "primary":
            wl_key = spec.raw["modalities"][name].get("wavelengths_key")
            if wl_key:
                _put(files.setdefault(modality.file, {}), wl_key, wavelengths(spec, modality))
        if modality.bands == 1:
            array = array[..., 0]
        _put(files.setdefault(modality.file, {}), modality.key or name, array)
        del array

    labels_spec = spec.labels
    unlabelled = labels_spec.get("unlabelled", 0)
    label_map = np.where(labelled, cls.astype(np.int64), unlabelled)  # int64: unlabelled may be -1
    dtype = labels_spec.get("dtype", "uint8")
    if labels_spec["train"] != labels_spec["test"] and "split" not in labels_spec:
        train_counts = spec.expected_counts("train")
        train = per_class_counts_mask(np.where(labelled, cls, 0), train_counts, seed)
        for split, mask in (("train", train), ("test", labelled & ~train)):
            split_map = np.where(mask, label_map, unlabelled).astype(dtype)
            _put(files.setdefault(labels_spec[split], {}), spec.label_key(split), split_map)
    else:
        files_entry = files.setdefault(labels_spec["train"], {})
        _put(files_entry, labels_spec.get("key", "labels"), label_map.astype(dtype))
        if labels_spec.get("class_names_key"):
            _put(files_entry, labels_spec["class_names_key"], np.array(spec.class_names, dtype=object))

    written = sorted(files)
    for rel in written:
        write_mat(out_dir / rel, files.pop(rel))  # pop: each cube is freed once it is written
    extra = {} if border is None else {"border": border}
    np.savez_compressed(out_dir / "_truth.npz", cls=cls, labelled=labelled, parcel=parcel, **extra)
    counts = {int(c): int(((cls == c) & labelled).sum()) for c in need}
    log.info("mat_scene twin %s: %d parcels, labelled %s", spec.name, n_parcels, counts)
    return {"parcels": n_parcels, "labelled": counts, "files": written}
