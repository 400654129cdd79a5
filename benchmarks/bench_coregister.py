"""Co-registration of a row-blocked raster (a PCIDSK ``.pix``, as Houston 2018's HSI ships) x2 onto a
finer grid, with the stages' GDAL block cache against the one they used to set by mistake.

rasterio passes ``GDAL_CACHEMAX`` to ``GDALSetCacheMax``, which counts bytes: the stages once passed
256 meaning megabytes and so ran with a 256-byte cache. A ``.pix`` stores one image row per block, so
with no cache the warper rereads every source row for each chunk it warps. The baseline is that
setting; the result is printed as a ratio.

Usage::

    python benchmarks/bench_coregister.py                       # 50 bands, 600 x 2000 at 1 m
    python benchmarks/bench_coregister.py --bands 50 --rows 1202 --cols 4172 --blocks 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from stages.coregister import Grid, aligned
from stages.io.raster import BLOCK, GDAL_CACHE_BYTES, block_windows

CRS_UTM15N = CRS.from_epsg(26915)


def write_pix(path: Path, bands: int, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    with rasterio.open(
        path,
        "w",
        driver="PCIDSK",
        width=cols,
        height=rows,
        count=bands,
        dtype="uint16",
        crs=CRS_UTM15N,
        transform=Affine(1.0, 0, 0, 0, -1.0, rows),
    ) as dst:
        for row in range(0, rows, 128):
            h = min(128, rows - row)
            block = rng.integers(0, 10000, (bands, h, cols), dtype=np.uint16)
            dst.write(block, window=Window(0, row, cols, h))


def warp_seconds(path: Path, cache_bytes: int, blocks: int) -> float:
    """Seconds to warp the first ``blocks`` output blocks of the x2 grid (nearest), as coregister does."""
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes), rasterio.open(path) as ds:
        grid = Grid(2 * ds.height, 2 * ds.width, ds.transform * Affine.scale(0.5), ds.crs, True, False)
        windows = list(block_windows(grid.height, grid.width))[:blocks]
        with aligned(ds, grid, "nearest") as (src, _):
            start = time.perf_counter()
            for window in windows:
                src.read(window=window)
            return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=50)
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--cols", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=10, help=f"{BLOCK} x {BLOCK} output blocks to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hsi.pix"
        write_pix(path, args.bands, args.rows, args.cols)
        naive = warp_seconds(path, 256, args.blocks)  # the old setting: 256 bytes
        ours = warp_seconds(path, GDAL_CACHE_BYTES, args.blocks)
    print(f"{args.bands} bands, {args.rows} x {args.cols} .pix -> x2, {args.blocks} blocks of {BLOCK}^2")
    print(f"  256-byte cache (baseline): {naive:8.2f} s")
    print(f"  {GDAL_CACHE_BYTES >> 20} MiB cache (stages):    {ours:8.2f} s")
    print(f"  speed-up: {naive / ours:.1f}x")


if __name__ == "__main__":
    main()
