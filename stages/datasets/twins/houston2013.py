"""The Houston 2013 twin: a synthetic urban campus scene seen by a CASI-like HSI and a LiDAR DSM.

What makes it a fair test of fusion (each point is built in, not hoped for):

* **Only height separates some classes.** Most commercial flat roofs use the same asphalt membrane
  as Parking Lot 1, and a third of residential roofs use dark shingles close to road asphalt. An
  HSI-only model cannot tell a roof from a lot; the DSM can.
* **Only spectra separate others.** Healthy/stressed/synthetic grass, soil, water, roads, the highway,
  parking lots, courts and the track are all at ground level: a DSM-only model confuses them.
* **Overlapping spectra.** Healthy vs stressed grass and road vs highway vs parking asphalt overlap
  within their natural variability (per-object brightness and tilt, per-pixel texture).
* **Spatial coherence.** Roads and rails are lines, buildings blocks with gable or flat roofs, fields
  patches, the track a stadium ring; training/test ROIs are compact clusters as if hand-drawn.
* **Nuisances.** Terrain relief in the DSM (it is not an nDSM), cast shadows from the DSM, band-
  dependent sensor noise, across-track gain striping and a blurring PSF that mixes edge pixels.

Geometry, classes, colours, file names and split counts all come from the dataset's params file;
this module only knows how each Houston class *looks* (keyed by the class ``key``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage

from stages.config import DatasetSpec
from stages.datasets.envi_roi import Roi, write_envi_roi
from stages.datasets.twins import spectra
from stages.datasets.twins.scene import Canvas, cast_shadows, interior, sample_clusters, smooth_field
from stages.io.logs import progress

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Materials: name -> reflectance(wl). Several classes share materials on purpose (see docstring).
# ------------------------------------------------------------------------------------------------
MATERIALS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "grass_healthy": lambda wl: spectra.vegetation(wl, green=0.10, red=0.040, nir=0.44, edge=716),
    "grass_stressed": lambda wl: (
        0.85 * spectra.vegetation(wl, green=0.11, red=0.060, nir=0.39, edge=711)
        + 0.15 * spectra.soil(wl, low=0.08, high=0.28)
    ),
    "turf": lambda wl: spectra.paint(wl, base=0.045, peaks=[(548, 38, 0.055)]) + 0.035 * (wl > 700),
    "tree": lambda wl: spectra.vegetation(wl, green=0.08, red=0.032, nir=0.40, edge=721),
    "soil": lambda wl: spectra.soil(wl, low=0.07, high=0.30),
    "water": lambda wl: spectra.water(wl),
    "shingle_dark": lambda wl: spectra.flat(wl, level=0.105, tilt=0.22),
    "shingle_grey": lambda wl: spectra.flat(wl, level=0.17, tilt=0.08),
    "tile_red": lambda wl: spectra.step(wl, low=0.08, high=0.31, at=598),
    "metal_roof": lambda wl: spectra.flat(wl, level=0.31, tilt=-0.08),
    "asphalt_fresh": lambda wl: spectra.flat(wl, level=0.100, tilt=0.26),
    "asphalt_aged": lambda wl: spectra.flat(wl, level=0.118, tilt=0.22),
    "concrete": lambda wl: spectra.flat(wl, level=0.225, tilt=0.12),
    "white_membrane": lambda wl: spectra.flat(wl, level=0.50, tilt=-0.06),
    "ballast": lambda wl: (
        spectra.flat(wl, level=0.075, tilt=0.10) + spectra.step(wl, low=0, high=0.03, at=580)
    ),
    "court_acrylic": lambda wl: spectra.paint(wl, base=0.06, peaks=[(490, 42, 0.11)]) + 0.08 * (wl > 720),
    "court_line": lambda wl: spectra.flat(wl, level=0.55),
    "track_rubber": lambda wl: spectra.step(wl, low=0.065, high=0.27, at=596),
    "sidewalk": lambda wl: spectra.flat(wl, level=0.28, tilt=0.06),
    "car_white": lambda wl: spectra.flat(wl, level=0.55),
    "car_black": lambda wl: spectra.flat(wl, level=0.05),
    "car_red": lambda wl: spectra.step(wl, low=0.05, high=0.45, at=590),
    "car_blue": lambda wl: spectra.paint(wl, base=0.05, peaks=[(470, 40, 0.25)]),
    "car_silver": lambda wl: spectra.flat(wl, level=0.32, tilt=-0.05),
}
MATERIAL_INDEX = {name: i for i, name in enumerate(MATERIALS)}
CAR_MATERIALS = ["car_white", "car_black", "car_red", "car_blue", "car_silver"]

# Which material a class's object uses, with probabilities.
CLASS_MATERIALS: dict[str, list[tuple[str, float]]] = {
    "residential": [("shingle_dark", 0.4), ("shingle_grey", 0.3), ("tile_red", 0.2), ("metal_roof", 0.1)],
    "commercial": [("asphalt_fresh", 0.6), ("concrete", 0.25), ("white_membrane", 0.15)],
    "highway": [("concrete", 0.7), ("asphalt_aged", 0.3)],
}

HOUSTON_KEYS = [
    "grass_healthy",
    "grass_stressed",
    "grass_synthetic",
    "tree",
    "soil",
    "water",
    "residential",
    "commercial",
    "road",
    "highway",
    "railway",
    "parking_lot1",
    "parking_lot2",
    "tennis_court",
    "running_track",
]


@dataclass
class _Ctx:
    canvas: Canvas
    rng: np.random.Generator
    ids: dict[str, int]

    def material(self, key: str) -> int:
        options = CLASS_MATERIALS.get(key)
        if not options:
            name = {
                "grass_synthetic": "turf",
                "road": "asphalt_aged",
                "railway": "ballast",
                "parking_lot1": "asphalt_fresh",
                "parking_lot2": "asphalt_fresh",
                "tennis_court": "court_acrylic",
                "running_track": "track_rubber",
            }.get(key, key)
            return MATERIAL_INDEX[name]
        names, probs = zip(*options, strict=True)
        return MATERIAL_INDEX[str(self.rng.choice(names, p=probs))]


# ------------------------------------------------------------------------------------------------
# Object "adders": each paints one object of a class inside a rectangle (r0, c0, r1, c1).
# Blocks use them to build land uses; the quota top-up reuses them on open ground.
# ------------------------------------------------------------------------------------------------
Rect = tuple[int, int, int, int]


def _house(ctx: _Ctx, r: Rect) -> None:
    c = ctx.canvas
    r0, c0, r1, c1 = r
    mask = c.rect(r0, c0, r1, c1)
    rr, cc = c.rows_cols()
    eave = ctx.rng.uniform(3.0, 6.0)
    # a gable roof: the ridge runs along the long axis
    along_rows = (r1 - r0) > (c1 - c0)
    d = np.abs(cc - (c0 + c1 - 1) / 2) if along_rows else np.abs(rr - (r0 + r1 - 1) / 2)
    half = ((c1 - c0) if along_rows else (r1 - r0)) / 2
    elev = (eave + ctx.rng.uniform(1.5, 2.5) * (1 - d / max(half, 1))).astype(np.float32)
    c.paint(mask, ctx.ids["residential"], ctx.material("residential"), np.broadcast_to(elev, mask.shape))


def _tree(ctx: _Ctx, r: Rect) -> None:
    c = ctx.canvas
    r0, c0, r1, c1 = r
    ry, rx = (r1 - r0) / 2, (c1 - c0) / 2
    rc, ccen = r0 + ry, c0 + rx
    mask = c.ellipse(rc, ccen, ry, rx)
    rr, cc = c.rows_cols()
    d2 = np.clip(((rr - rc) / ry) ** 2 + ((cc - ccen) / rx) ** 2, 0, 1)
    elev = (ctx.rng.uniform(7, 15) * np.sqrt(1 - d2) + ctx.rng.uniform(0, 1.5, size=mask.shape)).astype(
        np.float32
    )
    c.paint(mask, ctx.ids["tree"], ctx.material("tree"), elev)


def _grove(ctx: _Ctx, r: Rect) -> None:
    r0, c0, r1, c1 = r
    for _ in range(max(1, (r1 - r0) * (c1 - c0) // 30)):
        h, w = ctx.rng.integers(4, 9, size=2)
        y, x = ctx.rng.integers(r0, max(r0 + 1, r1 - h)), ctx.rng.integers(c0, max(c0 + 1, c1 - w))
        _tree(ctx, (y, x, y + h, x + w))


def _flat_patch(key: str, elevation: float = 0.0, shape: str = "ellipse") -> Callable[[_Ctx, Rect], None]:
    def add(ctx: _Ctx, r: Rect) -> None:
        c = ctx.canvas
        r0, c0, r1, c1 = r
        if shape == "ellipse":
            mask = c.ellipse((r0 + r1) / 2, (c0 + c1) / 2, (r1 - r0) / 2, (c1 - c0) / 2)
        else:
            mask = c.rect(r0, c0, r1, c1)
        c.paint(mask, ctx.ids[key], ctx.material(key), elevation)

    return add


def _commercial(ctx: _Ctx, r: Rect) -> None:
    """A flat-roofed building (with rooftop units) and parking lots around it."""
    c = ctx.canvas
    r0, c0, r1, c1 = r
    h, w = r1 - r0, c1 - c0
    _parking(ctx, r)
    bh, bw = max(6, int(h * ctx.rng.uniform(0.45, 0.7))), max(8, int(w * ctx.rng.uniform(0.35, 0.6)))
    y = r0 + int(ctx.rng.integers(0, max(1, h - bh + 1)))
    x = c0 + int(ctx.rng.integers(0, max(1, w - bw + 1)))
    mask = c.rect(y, x, y + bh, x + bw)
    roof = ctx.rng.uniform(9.0, 28.0)
    elev = np.full(mask.shape, roof, np.float32)
    for _ in range(max(1, bh * bw // 120)):  # HVAC units: small bumps, same roof material
        uy, ux = ctx.rng.integers(y, y + bh - 2), ctx.rng.integers(x, x + bw - 2)
        elev[uy : uy + 2, ux : ux + 2] = roof + 2.0
    c.paint(mask, ctx.ids["commercial"], ctx.material("commercial"), elev)


def _parking(ctx: _Ctx, r: Rect) -> None:
    """Parking Lot 1 is empty asphalt; Parking Lot 2 is the same asphalt full of parked cars."""
    c = ctx.canvas
    r0, c0, r1, c1 = r
    key = "parking_lot2" if ctx.rng.random() < 0.4 else "parking_lot1"
    mask = c.rect(r0, c0, r1, c1)
    c.paint(mask, ctx.ids[key], ctx.material(key), 0.05)
    if key == "parking_lot2":
        # rows of cars: 1 x 2 px stalls; cars keep the lot's class (they are part of it) but not its material
        for y in range(r0 + 1, r1 - 1, 3):
            for x in range(c0 + 1, c1 - 1, 2):
                if ctx.rng.random() < 0.7:
                    car = c.rect(y, x, y + 2, x + 1)
                    c.material[car] = MATERIAL_INDEX[str(ctx.rng.choice(CAR_MATERIALS))]
                    c.elevation[car] = 1.5
                    c.obj[car] = c.n_objects = c.n_objects + 1


def _tennis(ctx: _Ctx, r: Rect) -> None:
    c = ctx.canvas
    r0, c0, r1, c1 = r
    ch, cw = 9, 15
    for y in range(r0, r1 - ch + 1, ch + 2):
        for x in range(c0, c1 - cw + 1, cw + 2):
            court = c.rect(y, x, y + ch, x + cw)
            c.paint(court, ctx.ids["tennis_court"], ctx.material("tennis_court"), 0.0)
            lines = court & ~c.rect(y + 1, x + 1, y + ch - 1, x + cw - 1)
            lines |= c.rect(y, x + cw // 2, y + ch, x + cw // 2 + 1)
            c.material[lines] = MATERIAL_INDEX["court_line"]


def _track(ctx: _Ctx, r: Rect) -> None:
    """A running track (stadium ring) around a synthetic-grass infield."""
    c = ctx.canvas
    r0, c0, r1, c1 = r
    rc, cc = (r0 + r1) / 2, (c0 + c1) / 2
    radius = (r1 - r0) / 2
    half_len = max(0.0, (c1 - c0) / 2 - radius)
    outer = c.stadium(rc, cc, half_len, radius)
    inner = c.stadium(rc, cc, half_len, radius - 5)
    c.paint(outer & ~inner, ctx.ids["running_track"], ctx.material("running_track"), 0.0)
    c.paint(inner, ctx.ids["grass_synthetic"], ctx.material("grass_synthetic"), 0.0)


def _pond(ctx: _Ctx, r: Rect) -> None:
    _flat_patch("water", elevation=-0.8)(ctx, r)


ADDERS: dict[str, tuple[Callable[[_Ctx, Rect], None], tuple[int, int]]] = {
    # class key -> (adder, preferred (height, width) in pixels)
    "grass_healthy": (_flat_patch("grass_healthy"), (16, 24)),
    "grass_stressed": (_flat_patch("grass_stressed"), (16, 24)),
    "grass_synthetic": (_flat_patch("grass_synthetic", shape="rect"), (16, 28)),
    "tree": (_grove, (14, 20)),
    "soil": (_flat_patch("soil"), (14, 22)),
    "water": (_pond, (12, 20)),
    "residential": (_house, (5, 7)),
    "commercial": (_commercial, (20, 30)),
    "road": (_flat_patch("road", shape="rect"), (4, 40)),
    "highway": (_flat_patch("highway", shape="rect"), (9, 40)),
    "railway": (_flat_patch("railway", elevation=0.8, shape="rect"), (3, 50)),
    "parking_lot1": (_parking, (12, 18)),
    "parking_lot2": (_parking, (12, 18)),
    "tennis_court": (_tennis, (20, 34)),
    "running_track": (_track, (22, 44)),
}


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------


def _residential_block(ctx: _Ctx, r: Rect) -> None:
    r0, c0, r1, c1 = r
    rng = ctx.rng
    y = r0 + 2
    while y + 5 <= r1 - 1:
        hh = int(rng.integers(4, 7))
        x = c0 + 2
        while x + 5 <= c1 - 1:
            ww = int(rng.integers(5, 9))
            if y + hh <= r1 - 1 and x + ww <= c1 - 1:
                if rng.random() < 0.85:
                    _house(ctx, (y, x, y + hh, x + ww))
                elif rng.random() < 0.6:
                    _tree(ctx, (y, x, y + hh + 1, x + ww))
            x += ww + int(rng.integers(2, 5))
        y += hh + int(rng.integers(3, 5))
    # street trees between the houses
    for _ in range(max(1, (r1 - r0) * (c1 - c0) // 250)):
        y, x = rng.integers(r0, r1 - 4), rng.integers(c0, c1 - 4)
        if ctx.canvas.cls[y + 2, x + 2] in (ctx.ids["grass_healthy"], ctx.ids["grass_stressed"]):
            _tree(ctx, (y, x, y + 4, x + 4))


def _commercial_block(ctx: _Ctx, r: Rect) -> None:
    r0, c0, r1, c1 = r
    w = c1 - c0
    n = 1 if w < 60 else 2
    step = w // n
    for i in range(n):
        _commercial(ctx, (r0 + 2, c0 + i * step + 2, r1 - 2, c0 + (i + 1) * step - 2))


def _sports_block(ctx: _Ctx, r: Rect) -> None:
    r0, c0, r1, c1 = r
    h, w = r1 - r0, c1 - c0
    choice = ctx.rng.random()
    if choice < 0.4 and h >= 24 and w >= 46:
        th = min(h - 4, 40)
        _track(ctx, (r0 + 2, c0 + 2, r0 + 2 + th, c0 + 2 + min(w - 4, int(th * 2.2))))
    elif choice < 0.7 and h >= 13 and w >= 19:
        _tennis(ctx, (r0 + 2, c0 + 2, r1 - 2, c1 - 2))
    else:
        _flat_patch("grass_synthetic", shape="rect")(ctx, (r0 + 3, c0 + 3, r1 - 3, c1 - 3))


def _open_block(ctx: _Ctx, r: Rect) -> None:
    r0, c0, r1, c1 = r
    rng = ctx.rng
    for _ in range(int(rng.integers(1, 4))):
        key = str(rng.choice(["soil", "water", "grass_stressed", "tree"], p=[0.35, 0.2, 0.25, 0.2]))
        adder, (ph, pw) = ADDERS[key]
        ph, pw = (
            min(ph + int(rng.integers(0, 10)), r1 - r0 - 2),
            min(pw + int(rng.integers(0, 16)), c1 - c0 - 2),
        )
        if ph < 4 or pw < 4:
            continue
        y, x = rng.integers(r0 + 1, r1 - ph), rng.integers(c0 + 1, c1 - pw)
        adder(ctx, (y, x, y + ph, x + pw))


BLOCK_USES = {
    "residential": (_residential_block, 0.36),
    "commercial": (_commercial_block, 0.26),
    "sports": (_sports_block, 0.12),
    "open": (_open_block, 0.26),
}


def _positions(length: int, spacing: tuple[int, int], rng: np.random.Generator) -> list[int]:
    out, p = [], int(rng.integers(spacing[0] // 2, spacing[1] // 2 + 1))
    while p < length - spacing[0] // 3:
        out.append(p)
        p += int(rng.integers(*spacing))
    return out


def build_layout(height: int, width: int, ids: dict[str, int], rng: np.random.Generator) -> Canvas:
    """Ground, blocks between a road grid, then roads, the highway and the railway on top."""
    canvas = Canvas(height, width)
    ctx = _Ctx(canvas, rng, ids)
    # ground: a smooth mosaic of healthy and stressed grass. Vigour varies continuously and patchily,
    # so near the boundary of the two classes a pixel can look more like the other class than its own.
    vigour = smooth_field((height, width), 14, rng)
    ground = vigour > -0.3
    canvas.paint(ground, ids["grass_healthy"], MATERIAL_INDEX["grass_healthy"], 0.0)
    canvas.paint(~ground, ids["grass_stressed"], MATERIAL_INDEX["grass_stressed"], 0.0)
    canvas.material2[ground] = MATERIAL_INDEX["grass_stressed"]
    canvas.material2[~ground] = MATERIAL_INDEX["grass_healthy"]
    patchy = smooth_field((height, width), 5, rng)
    canvas.mix[:] = np.clip(0.25 + 0.2 * patchy + 0.05 * rng.standard_normal((height, width)), 0.0, 0.8)

    rows = _positions(height, (48, 78), rng)
    cols = _positions(width, (64, 110), rng)
    edges_r, edges_c = [0, *rows, height], [0, *cols, width]
    names = list(BLOCK_USES)
    weights = np.array([BLOCK_USES[n][1] for n in names])
    for i in range(len(edges_r) - 1):
        for j in range(len(edges_c) - 1):
            r = (edges_r[i] + 3, edges_c[j] + 3, edges_r[i + 1] - 3, edges_c[j + 1] - 3)
            if r[2] - r[0] < 10 or r[3] - r[1] < 14:
                continue
            use = str(rng.choice(names, p=weights / weights.sum()))
            BLOCK_USES[use][0](ctx, r)

    # sidewalks (unlabelled clutter), then roads over them
    for y in rows:
        canvas.paint(canvas.band((y, 0), (y, width), 3.0), 0, MATERIAL_INDEX["sidewalk"], 0.1)
        canvas.paint(canvas.band((y, 0), (y, width), 1.6), ids["road"], ctx.material("road"), 0.0)
    for x in cols:
        canvas.paint(canvas.band((0, x), (height, x), 3.0), 0, MATERIAL_INDEX["sidewalk"], 0.1)
        canvas.paint(canvas.band((0, x), (height, x), 1.6), ids["road"], ctx.material("road"), 0.0)

    # the highway: a wide band across the scene, in segments, with overpasses over the cross streets
    hy = int(rng.integers(int(height * 0.3), int(height * 0.7)))
    seg_edges = [0, *cols, width]
    for a, b in itertools.pairwise(seg_edges):
        seg = canvas.band((hy, a), (hy + rng.uniform(-2, 2), b), 4.2)
        canvas.paint(seg, ids["highway"], ctx.material("highway"), 0.0)
    _, cc = canvas.rows_cols()
    for x in cols:
        ramp = np.clip(1 - np.abs(cc - x) / 16.0, 0, 1) * 7.0  # 7 m deck, 16 px ramps
        deck = (canvas.cls == ids["highway"]) & (ramp > 0)
        canvas.elevation[deck] = np.broadcast_to(ramp, canvas.cls.shape)[deck]

    # the railway: a thin, slightly slanted line on an embankment
    ry0 = int(rng.integers(int(height * 0.1), int(height * 0.9)))
    ry1 = int(np.clip(ry0 + rng.integers(-height // 4, height // 4 + 1), 3, height - 4))
    canvas.paint(canvas.band((ry0, 0), (ry1, width), 1.3), ids["railway"], ctx.material("railway"), 0.8)
    return canvas


def top_up(ctx: _Ctx, need: dict[str, int], margin: int, max_tries: int = 4000) -> None:
    """Add objects on open ground until every class has ``need[key]`` interior pixels."""
    canvas, rng = ctx.canvas, ctx.rng
    open_ids = (ctx.ids["grass_healthy"], ctx.ids["grass_stressed"], ctx.ids["soil"])
    for key, n in need.items():
        adder, (ph, pw) = ADDERS[key]
        tries = 0
        while interior(canvas.cls, ctx.ids[key], margin).sum() < n:
            tries += 1
            if tries > max_tries:
                raise ValueError(
                    f"could not fit {n} interior pixels of class '{key}' into a {canvas.height} x "
                    f"{canvas.width} twin; enlarge grid or lower twin.count_scale in the params file"
                )
            y = int(rng.integers(1, canvas.height - ph - 1))
            x = int(rng.integers(1, canvas.width - pw - 1))
            if np.isin(canvas.cls[y - 1 : y + ph + 1, x - 1 : x + pw + 1], open_ids).all():
                adder(ctx, (y, x, y + ph, x + pw))


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


@dataclass
class Rendering:
    """Per-pixel maps needed to render the HSI cube strip by strip (all H x W, small)."""

    canvas: Canvas
    dsm: np.ndarray  # float32 metres
    shadow: np.ndarray  # bool
    texture: np.ndarray  # float32 multiplicative
    obj_gain: np.ndarray  # (n_objects + 1,) brightness per object
    obj_tilt: np.ndarray  # (n_objects + 1,) spectral tilt per object
    column_gain: np.ndarray  # (bands, W) across-track striping


def prepare_rendering(canvas: Canvas, gsd: float, n_bands: int, rng: np.random.Generator) -> Rendering:
    shape = (canvas.height, canvas.width)
    terrain = 11.0 + 1.2 * smooth_field(shape, 60, rng) + 0.3 * smooth_field(shape, 8, rng)
    dsm = (terrain + canvas.elevation + rng.normal(0, 0.12, shape)).astype(np.float32)
    shadow = cast_shadows(dsm, gsd, azimuth_deg=135.0, elevation_deg=55.0)
    texture = (
        1
        + 0.06 * smooth_field(shape, 25, rng)
        + 0.035 * smooth_field(shape, 1.2, rng)
        + 0.02 * rng.standard_normal(shape)
    )
    n = canvas.n_objects + 1
    return Rendering(
        canvas=canvas,
        dsm=dsm,
        shadow=shadow,
        texture=texture.astype(np.float32),
        obj_gain=np.clip(rng.normal(1.0, 0.09, n), 0.7, 1.3).astype(np.float32),
        obj_tilt=rng.normal(0.0, 0.06, n).astype(np.float32),
        column_gain=(1 + 0.004 * rng.standard_normal((n_bands, canvas.width))).astype(np.float32),
    )


def render_strip(
    rend: Rendering, wl: np.ndarray, reflectance: np.ndarray, r0: int, r1: int, rng: np.random.Generator
) -> np.ndarray:
    """Radiance DN (uint16, bands x (r1 - r0) x W) for rows [r0, r1), with a 2-row halo for the PSF."""
    canvas = rend.canvas
    h0, h1 = max(0, r0 - 2), min(canvas.height, r1 + 2)
    sl = slice(h0, h1)
    mat, obj, mix = canvas.material[sl], canvas.obj[sl], canvas.mix[sl][None]
    refl = (1 - mix) * reflectance[:, mat] + mix * reflectance[:, canvas.material2[sl]]  # (B, h, W)
    tilt = 1 + rend.obj_tilt[obj][None] * ((wl - 700.0) / 350.0)[:, None, None]
    refl = refl * (rend.obj_gain[obj] * rend.texture[sl])[None] * tilt
    sun = spectra.solar_irradiance(wl)[:, None, None]
    sky = spectra.diffuse_sky(wl)[:, None, None]
    shade = rend.shadow[sl][None]
    radiance = refl * sun * np.where(shade, sky, 1.0 + 0.3 * sky)
    # the sensor PSF mixes neighbouring pixels (spatial only)
    radiance = ndimage.gaussian_filter(radiance, sigma=(0, 0.55, 0.55), mode="nearest")
    radiance = radiance[:, r0 - h0 : r0 - h0 + (r1 - r0)]
    dn = 9000.0 * radiance * rend.column_gain[:, None, :] + 180.0
    dn += rng.standard_normal(dn.shape) * spectra.noise_sigma(wl)[:, None, None]
    return np.clip(np.rint(dn), 0, 65535).astype(np.uint16)


# ------------------------------------------------------------------------------------------------
# The twin
# ------------------------------------------------------------------------------------------------


def _split_pixels(
    canvas: Canvas, spec: DatasetSpec, ids: dict[str, int], rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Train and test pixel masks per class, as compact ROI clusters, test kept off the train pixels."""
    train_counts, test_counts = spec.expected_counts("train"), spec.expected_counts("test")
    train, test = {}, {}
    for c in spec.classes:
        cand = interior(canvas.cls, c.id, margin=1)
        tr = sample_clusters(cand, train_counts[c.id], rng, size_range=(6, 24), radius=4)
        keep_out = ndimage.binary_dilation(tr, iterations=2)
        te = sample_clusters(cand & ~keep_out, test_counts[c.id], rng, size_range=(15, 60), radius=6)
        train[c.key], test[c.key] = tr, te
    return train, test


def generate(spec: DatasetSpec, out_dir: Path) -> dict[str, Any]:
    """Generate the twin's files into ``out_dir`` laid out as the real archive's contents.

    Returns a summary (shapes, counts). File names come from the params file's modality and label
    entries; the caller packs them into archives.
    """
    twin = spec.twin or {}
    seed = int(twin["seed"])
    ids = {c.key: c.id for c in spec.classes}
    missing = [k for k in HOUSTON_KEYS if k not in ids]
    if missing:
        raise ValueError(f"{spec.path}: the houston2013 twin generator needs class keys {missing}.")
    hsi_name = spec.modalities_with_role("primary")[0]
    aux_name = spec.modalities_with_role("auxiliary")[0]
    hsi, aux = spec.modalities[hsi_name], spec.modalities[aux_name]
    if hsi.wavelengths_nm is None:
        raise ValueError(f"{spec.path}: modalities.{hsi_name}.wavelengths_nm is needed to render the twin.")
    wl = np.asarray(hsi.wavelengths_nm, dtype=np.float64)
    h, w, gsd = spec.height, spec.width, float(spec.grid.get("gsd_m", 1.0))
    rng_layout, rng_render, rng_split, rng_noise = (np.random.default_rng([seed, k]) for k in range(4))

    log.info("laying out a %d x %d scene", h, w)
    canvas = build_layout(h, w, ids, rng_layout)
    train_counts, test_counts = spec.expected_counts("train"), spec.expected_counts("test")
    need = {c.key: int(1.6 * (train_counts[c.id] + test_counts[c.id])) + 60 for c in spec.classes}
    top_up(_Ctx(canvas, rng_layout, ids), need, margin=1)
    train, test = _split_pixels(canvas, spec, ids, rng_split)

    rend = prepare_rendering(canvas, gsd, len(wl), rng_render)
    reflectance = np.stack([MATERIALS[m](wl) for m in MATERIALS], axis=1).astype(np.float32)  # (B, M)

    transform = from_origin(*twin.get("origin", (0.0, float(h) * gsd)), gsd, gsd)
    crs = spec.grid.get("fallback_crs")
    hsi_path, aux_path = out_dir / hsi.file, out_dir / aux.file
    hsi_path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=h, width=w, transform=transform, crs=crs, interleave="band")
    with rasterio.open(hsi_path, "w", count=len(wl), dtype=hsi.dtype or "uint16", **profile) as dst:
        strip = 32
        for r0 in progress(range(0, h, strip), desc="render HSI", total=-(-h // strip), unit="strip"):
            r1 = min(h, r0 + strip)
            dst.write(
                render_strip(rend, wl, reflectance, r0, r1, rng_noise), window=Window(0, r0, w, r1 - r0)
            )
    with rasterio.open(aux_path, "w", count=1, dtype=aux.dtype or "float32", **profile) as dst:
        dst.write(rend.dsm[None])
    _write_envi_header(hsi_path.with_suffix(".hdr"), spec, hsi_name, transform)
    _write_envi_header(aux_path.with_suffix(".hdr"), spec, aux_name, transform)

    for split, masks in (("train", train), ("test", test)):
        rois = []
        for c in spec.classes:
            rows, cols = np.nonzero(masks[c.key])
            rois.append(Roi(c.key, c.color, rows, cols))
        write_envi_roi(out_dir / spec.labels[split], rois, width=w, height=h)
    copyright_path = out_dir / Path(hsi.file).parent / "copyright.txt"
    copyright_path.write_text(
        f"{spec.title}\nSynthetic data generated by landfuse's twin generator (seed {seed}).\n"
        "It imitates the packaging of the GRSS DFC 2013 data; it contains no real imagery.\n"
    )
    # ground truth of the whole scene, for diagnostics and tests (not part of the real archive)
    np.savez_compressed(
        out_dir / "_truth.npz", cls=canvas.cls, material=canvas.material, dsm=rend.dsm, shadow=rend.shadow
    )
    return {
        "shape": [h, w],
        "bands": {hsi_name: len(wl), aux_name: 1},
        "objects": int(canvas.n_objects),
        "train": {c.key: int(train[c.key].sum()) for c in spec.classes},
        "test": {c.key: int(test[c.key].sum()) for c in spec.classes},
        "shadow_fraction": float(rend.shadow.mean()),
    }


def _write_envi_header(path: Path, spec: DatasetSpec, modality: str, transform: Any) -> None:
    """An ENVI ``.hdr`` beside each GeoTIFF, as the real archive ships."""
    m = spec.modalities[modality]
    lines = [
        "ENVI",
        f"description = {{landfuse synthetic twin: {Path(m.file).name}}}",
        f"samples = {spec.width}",
        f"lines   = {spec.height}",
        f"bands   = {m.bands}",
        "header offset = 0",
        "file type = TIFF",
        f"data type = {12 if (m.dtype or '') == 'uint16' else 4}",
        "interleave = bsq",
        "byte order = 0",
        f"map info = {{UTM, 1.000, 1.000, {transform.c:.3f}, {transform.f:.3f}, {transform.a:g}, "
        f"{-transform.e:g}, 15, North, WGS-84, units=Meters}}",
        f"band names = {{{', '.join(m.band_names)}}}",
    ]
    if m.wavelengths_nm:
        lines += [
            "wavelength units = Nanometers",
            f"wavelength = {{{', '.join(f'{x:.1f}' for x in m.wavelengths_nm)}}}",
        ]
    path.write_text("\n".join(lines) + "\n")
