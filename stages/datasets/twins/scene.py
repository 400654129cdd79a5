"""Procedural scene layouts for twins: a canvas of objects, their heights, shadows and ROI sampling.

A :class:`Canvas` holds, per pixel, the land-cover class (0 = unlabelled clutter), the surface
material, an object id (each object gets its own brightness and spectral tilt, so classes vary
within themselves) and the object height above the terrain. Dataset-specific twins paint objects
onto it; this module stays dataset-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


@dataclass
class Canvas:
    height: int
    width: int
    cls: np.ndarray = field(init=False)
    material: np.ndarray = field(init=False)
    obj: np.ndarray = field(init=False)
    elevation: np.ndarray = field(init=False)
    # an optional second material mixed in with weight ``mix`` (continua such as grass vigour)
    material2: np.ndarray = field(init=False)
    mix: np.ndarray = field(init=False)
    n_objects: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        shape = (self.height, self.width)
        self.cls = np.zeros(shape, np.uint8)
        self.material = np.zeros(shape, np.uint8)
        self.obj = np.zeros(shape, np.int32)
        self.elevation = np.zeros(shape, np.float32)
        self.material2 = np.zeros(shape, np.uint8)
        self.mix = np.zeros(shape, np.float32)

    def paint(self, mask: np.ndarray, cls: int, material: int, elevation: np.ndarray | float = 0.0) -> int:
        """Paint one object where ``mask`` is true; returns its id."""
        self.n_objects += 1
        self.cls[mask] = cls
        self.material[mask] = material
        self.obj[mask] = self.n_objects
        self.elevation[mask] = elevation[mask] if isinstance(elevation, np.ndarray) else elevation
        self.material2[mask] = material
        self.mix[mask] = 0.0
        return self.n_objects

    # -- masks ------------------------------------------------------------------------------------
    def rows_cols(self) -> tuple[np.ndarray, np.ndarray]:
        return np.ogrid[: self.height, : self.width]

    def rect(self, r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
        rr, cc = self.rows_cols()
        return (rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)

    def ellipse(self, rc: float, cc_: float, ry: float, rx: float) -> np.ndarray:
        rr, cc = self.rows_cols()
        return ((rr - rc) / ry) ** 2 + ((cc - cc_) / rx) ** 2 <= 1.0

    def stadium(self, rc: float, cc_: float, half_len: float, radius: float) -> np.ndarray:
        """A running-track shape: a rectangle with semicircular ends, long axis along columns."""
        rr, cc = self.rows_cols()
        dx = np.maximum(np.abs(cc - cc_) - half_len, 0)
        return dx**2 + (rr - rc) ** 2 <= radius**2

    def band(self, p0: tuple[float, float], p1: tuple[float, float], half_width: float) -> np.ndarray:
        """Pixels within ``half_width`` of the segment p0-p1 (``(row, col)`` points): roads, rails."""
        rr, cc = self.rows_cols()
        (r0, c0), (r1, c1) = p0, p1
        dr, dc = r1 - r0, c1 - c0
        t = np.clip(((rr - r0) * dr + (cc - c0) * dc) / max(dr * dr + dc * dc, 1e-9), 0, 1)
        return (rr - (r0 + t * dr)) ** 2 + (cc - (c0 + t * dc)) ** 2 <= half_width**2


def smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ~``sigma`` pixels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


def cast_shadows(dsm: np.ndarray, gsd: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Boolean shadow mask by marching towards the sun over the DSM (azimuth clockwise from north)."""
    az = np.deg2rad(azimuth_deg)
    # a step towards the sun: north is -row, east is +col
    dr, dc = -np.cos(az), np.sin(az)
    rise_per_px = np.tan(np.deg2rad(elevation_deg)) * gsd
    relief = float(dsm.max() - dsm.min())
    shadow = np.zeros(dsm.shape, bool)
    for k in range(1, int(np.ceil(relief / rise_per_px)) + 1):
        shifted = ndimage.shift(dsm, (-dr * k, -dc * k), order=0, mode="nearest")
        shadow |= shifted > dsm + k * rise_per_px
    return shadow


def interior(cls: np.ndarray, class_id: int, margin: int = 1) -> np.ndarray:
    """Pixels of ``class_id`` at least ``margin`` pixels from any other class: where ROIs are drawn."""
    mask = cls == class_id
    if margin <= 0:
        return mask
    return ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=margin)


def sample_clusters(
    available: np.ndarray, count: int, rng: np.random.Generator, size_range: tuple[int, int], radius: int
) -> np.ndarray:
    """Pick ``count`` pixels of ``available`` as compact clusters, as hand-drawn ROIs are.

    Each cluster starts at a random available pixel and takes its nearest available neighbours within
    ``radius``. Returns a boolean mask with exactly ``count`` pixels; raises ``ValueError`` if the
    mask holds fewer available pixels than asked for.
    """
    avail = available.copy()
    total = int(avail.sum())
    if total < count:
        raise ValueError(f"only {total} candidate pixels for {count} samples")
    chosen = np.zeros_like(avail)
    taken = 0
    h, w = avail.shape
    while taken < count:
        rows, cols = np.nonzero(avail)
        i = rng.integers(len(rows))
        r, c = rows[i], cols[i]
        r0, r1, c0, c1 = (
            max(r - radius, 0),
            min(r + radius + 1, h),
            max(c - radius, 0),
            min(c + radius + 1, w),
        )
        wr, wc = np.nonzero(avail[r0:r1, c0:c1])
        order = np.argsort((wr + r0 - r) ** 2 + (wc + c0 - c) ** 2, kind="stable")
        size = min(int(rng.integers(size_range[0], size_range[1] + 1)), count - taken, len(order))
        pick_r, pick_c = wr[order[:size]] + r0, wc[order[:size]] + c0
        chosen[pick_r, pick_c] = True
        avail[pick_r, pick_c] = False
        taken += size
    return chosen
