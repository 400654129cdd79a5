"""Labelled pixels, the validation carve-out and training-only normalisation statistics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stages.data.windows import tile_index, tiles


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(yx, label)`` of every labelled pixel (label > 0) in row-major order; yx is ``(N, 2)`` int32."""
    rows, cols = np.nonzero(labels)
    return np.stack([rows, cols], axis=1).astype(np.int32), labels[rows, cols]


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over ``labels`` (the official training samples) marking the validation subset.

    Stratified: each class gives ``round(fraction * n)`` samples, at least one when it has two or
    more, and always keeps at least one for training. Seeded, so the split is reproducible. The
    official test pixels never enter this function.
    """
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        idx = np.nonzero(labels == cls)[0]
        n_val = round(fraction * len(idx))
        n_val = min(max(n_val, 1), len(idx) - 1) if len(idx) >= 2 else 0
        is_val[rng.choice(idx, size=n_val, replace=False)] = True
    return is_val


def band_statistics(
    read: Callable[[int, int, int, int], np.ndarray], yx: np.ndarray, height: int, width: int, tile: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over the pixels ``yx``, read tile by tile (float64).

    A band with zero spread gets std 1 so normalisation leaves it at 0 rather than dividing by 0.
    """
    tid = tile_index(yx, tile, width)
    total = sq = None
    n = 0
    for t in tiles(height, width, tile):
        idx = tile_index(np.array([[t.row0, t.col0]]), tile, width)[0]
        sel = yx[tid == idx]
        if len(sel) == 0:
            continue
        block = read(t.row0, t.row1, t.col0, t.col1).astype(np.float64)
        values = block[:, sel[:, 0] - t.row0, sel[:, 1] - t.col0]  # (bands, n)
        if not np.isfinite(values).all():
            raise ValueError("training pixels include NaN or infinite values; check the valid mask")
        total = values.sum(axis=1) if total is None else total + values.sum(axis=1)
        sq = (values**2).sum(axis=1) if sq is None else sq + (values**2).sum(axis=1)
        n += values.shape[1]
    if n == 0:
        raise ValueError("no training pixels to compute normalisation statistics from")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return mean, np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
