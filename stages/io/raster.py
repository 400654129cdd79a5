"""GeoTIFF conventions shared by the stages: creation profiles, block iteration and class maps."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from stages.io.atomic import atomic_path

BLOCK = 256
# GDAL's block cache defaults to 5% of RAM; stages stream tiles, so a small cache is enough. In bytes:
# rasterio hands GDAL_CACHEMAX to GDALSetCacheMax, so a bare 256 would be a 256-byte cache (no block
# is ever reused, and a warp over a row-blocked raster such as a .pix rereads each row per chunk).
GDAL_CACHE_BYTES = 256 * 2**20
CLASS_NODATA = 0  # class maps: 0 = unlabelled / not classified, classes are 1..K


def profile(
    height: int, width: int, count: int, dtype: str, transform: Affine | None, crs: CRS | None, **extra: Any
) -> dict[str, Any]:
    """A tiled, ZSTD-compressed GeoTIFF profile (predictor suited to the dtype; ``transform=None``
    writes a plain pixel grid without georeferencing)."""
    floating = np.dtype(dtype).kind == "f"
    prof = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        crs=crs,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="zstd",
        zstd_level=1,
        predictor=3 if floating else 2,
        interleave="band" if count > 1 else "pixel",
        BIGTIFF="IF_SAFER",
    )
    if transform is not None:
        prof["transform"] = transform
    if floating:
        prof["nodata"] = np.nan
    prof.update(extra)
    return prof


def block_windows(height: int, width: int, size: int = BLOCK) -> Iterator[Window]:
    """Row-major windows of ``size`` x ``size`` covering a grid (aligned with the GeoTIFF tiles)."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def write_class_map(
    path: str | os.PathLike[str],
    classes: np.ndarray,
    transform: Affine | None,
    crs: CRS | None,
    palette: Sequence[tuple[int, int, int]],
    class_names: Sequence[str],
) -> None:
    """Write a ``uint8`` class raster (0 = none, 1..K) with a colour table and class names, atomically."""
    prof = profile(
        classes.shape[0],
        classes.shape[1],
        1,
        "uint8",
        transform,
        crs,
        nodata=CLASS_NODATA,
        photometric="palette",
    )
    with atomic_path(path) as tmp, warnings.catch_warnings():
        if transform is None:  # a deliberate pixel grid (e.g. a mosaic of tiles)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **prof) as dst:
            # the colour table must precede the pixels in a compressed, tiled GeoTIFF
            dst.write_colormap(1, colormap(palette))
            dst.update_tags(1, class_names=",".join(class_names))
            dst.write(classes.astype(np.uint8), 1)


def colormap(palette: Sequence[tuple[int, int, int]]) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table: 0 is transparent black, class ``k`` gets ``palette[k - 1]``."""
    cmap = {0: (0, 0, 0, 0)}
    cmap.update({i + 1: (*map(int, rgb), 255) for i, rgb in enumerate(palette)})
    return cmap


def transform_to_list(transform: Affine) -> list[float]:
    return [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f]


def crs_to_str(crs: CRS | None) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()
