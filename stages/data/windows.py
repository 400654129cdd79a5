"""Scene tiling and patch extraction, shared by the patch store, test serving and full-scene maps.

A scene is a ``(bands, H, W)`` array-like (a Zarr array or a rasterio reader wrapper) that is read
one tile at a time with a halo of ``P // 2`` pixels, zero-filled beyond the scene edge (after
normalisation, zero is the training mean: the upstream code also zero-pads). Patches are then views
into the padded tile, gathered in batches, so memory is bounded by one tile plus one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# reads rows [r0, r1) x cols [c0, c1) of a scene; all inside the scene
ReadFn = Callable[[int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class Tile:
    """A tile ``[row0, row1) x [col0, col1)`` of the scene grid."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.row1 - self.row0, self.col1 - self.col0


def tiles(height: int, width: int, size: int) -> Iterator[Tile]:
    """Row-major tiles of ``size`` x ``size`` (smaller at the right and bottom edges)."""
    for r in range(0, height, size):
        for c in range(0, width, size):
            yield Tile(r, min(r + size, height), c, min(c + size, width))


def tile_index(yx: np.ndarray, size: int, width: int) -> np.ndarray:
    """Row-major index of the tile that holds each ``(row, col)`` pixel."""
    n_cols = -(-width // size)
    return (yx[:, 0] // size) * n_cols + yx[:, 1] // size


def read_with_halo(read: ReadFn, tile: Tile, halo: int, height: int, width: int, bands: int) -> np.ndarray:
    """The tile grown by ``halo`` on each side; pixels outside the scene are 0."""
    r0, r1, c0, c1 = tile.row0 - halo, tile.row1 + halo, tile.col0 - halo, tile.col1 + halo
    out = np.zeros((bands, r1 - r0, c1 - c0), dtype=np.float32)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
    out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = read(rr0, rr1, cc0, cc1)
    return out


def extract(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Patches ``(N, bands, size, size)`` centred on tile-local ``rows``/``cols`` of a halo-padded tile.

    ``padded`` is ``(bands, h + 2*halo, w + 2*halo)``; a patch centred on local pixel (r, c) starts at
    padded index (r, c) because the halo equals ``size // 2``.
    """
    views = sliding_window_view(padded, (size, size), axis=(1, 2))  # (bands, h, w, size, size)
    return np.ascontiguousarray(views[:, rows, cols].transpose(1, 0, 2, 3))


def order_by_tile(yx: np.ndarray, size: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation grouping pixels by tile (row-major tiles), shuffled within each tile.

    Writing patches in this order lets extraction read each scene tile once; loaders shuffle later.
    """
    shuffle = rng.permutation(len(yx))
    tile_of = tile_index(yx[shuffle], size, width)
    return shuffle[np.argsort(tile_of, kind="stable")]


def patches_at(
    read: ReadFn, yx: np.ndarray, size: int, tile_size: int, height: int, width: int, bands: int
) -> np.ndarray:
    """Patches ``(N, bands, size, size)`` at ``yx`` (any order), reading each touched tile once."""
    out = np.empty((len(yx), bands, size, size), dtype=np.float32)
    if len(yx) == 0:
        return out
    tid = tile_index(yx, tile_size, width)
    n_cols = -(-width // tile_size)
    for t in np.unique(tid):
        sel = np.nonzero(tid == t)[0]
        tr, tc = divmod(int(t), n_cols)
        tile = Tile(
            tr * tile_size,
            min((tr + 1) * tile_size, height),
            tc * tile_size,
            min((tc + 1) * tile_size, width),
        )
        padded = read_with_halo(read, tile, size // 2, height, width, bands)
        out[sel] = extract(padded, yx[sel, 0] - tile.row0, yx[sel, 1] - tile.col0, size)
    return out
