"""Figures: class maps in the dataset palette, confusion matrices and per-class bars.

Everything is drawn with the Agg backend and saved without timestamps, so figures are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from stages.io.atomic import atomic_path

_NO_META = {"Software": None}
# "no class": a light grey, distinct from palettes' black (e.g. Railway) and white (e.g. Residential)
BACKGROUND = (200, 200, 200)


def palette_image(classes: np.ndarray, palette: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """``(H, W)`` class ids (0 = none, 1..K) -> ``(H, W, 3)`` uint8 RGB."""
    lut = np.array([BACKGROUND, *palette], dtype=np.uint8)
    return lut[np.clip(classes, 0, len(palette))]


def save_map_png(
    path: str | os.PathLike[str], classes: np.ndarray, palette: Sequence[tuple[int, int, int]]
) -> None:
    """The class map at one pixel per pixel, in the dataset's palette."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(palette_image(classes, palette)).save(tmp, format="PNG")


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=_NO_META, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(path: str | os.PathLike[str], cm: np.ndarray, names: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix (each row is a true class), with counts in the cells."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(names)
    size = max(5.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=5,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    _save(fig, path)


def plot_maps(
    path: str | os.PathLike[str],
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    palette: Sequence[tuple[int, int, int]],
    names: Sequence[str],
) -> None:
    """Class maps stacked one above another (wide scenes) or side by side (tall ones), with a legend."""
    h, w = maps[0].shape
    wide = w >= h
    n = len(maps)
    scale = 9.0 / max(h, w)
    figsize = (w * scale + 0.3, (h * scale + 0.3) * n) if wide else ((w * scale + 0.3) * n, h * scale + 0.4)
    fig, axes = plt.subplots(n if wide else 1, 1 if wide else n, figsize=figsize, squeeze=False)
    for ax, m, title in zip(axes.ravel(), maps, titles, strict=True):
        ax.imshow(palette_image(m, palette), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    handles = [Patch(color=np.array(c) / 255, label=name) for c, name in zip(palette, names, strict=True)]
    last = axes.ravel()[-1]
    if wide:  # under the last map; the tight bounding box trims the figure around it
        last.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.02),
            ncol=min(len(names), 8),
            fontsize=6,
            frameon=False,
        )
    else:
        last.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6, frameon=False)
    _save(fig, path)


def plot_per_class(
    path: str | os.PathLike[str], values: dict[str, Sequence[float]], names: Sequence[str], ylabel: str
) -> None:
    """Grouped bars: one group per class, one bar per experiment."""
    k, n = len(names), len(values)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * k * max(1, n / 3)), 3.6))
    for i, (label, vals) in enumerate(values.items()):
        ax.bar(np.arange(k) + (i - (n - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, ncol=min(n, 4), loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
