"""Stage ``patches``: the Zarr v3 patch store, ``results/<dataset>/patches.zarr``.

``python -m stages.patches --dataset NAME --coreg results/NAME/coreg --out results/NAME/patches.zarr
--summary results/NAME/patches.json``

Store layout (every group opens with ``xarray.open_zarr(store, group=...)``)::

    /                      attrs: classes, palette, patch size, modalities, normalisation, split, grid
    scene/valid            (y, x)                   uint8, 1 where every modality has data
    scene/<mod>/data       (band, y, x)             float32, normalised, chunked spatially
    train/label, train/yx  (sample,), (sample, coord)
    train/<mod>/data       (sample, band, y, x)     float32 patches, materialised
    val/...                as train
    test/label, test/yx    (sample,), (sample, coord)  no patches: served from scene/

Why this shape: the store scales with the scene, not with labelled pixels x patch area. Berlin's
~462k test pixels as 11 x 11 x 248 float32 patches would be 55 GB; here they are ~500 KB of
coordinates read against the scene chunks at evaluation time. Train and val are small, read every
epoch, so they are materialised (in tile order, so extraction reads each scene chunk once; the
loader shuffles).

Honesty rules enforced here: ``val`` is a stratified, seeded fraction of the official training
pixels; normalisation statistics (per-band mean and std) come from the remaining training pixels
only; the test pixels are only stored, never used for any statistic. Pixels without data in any
modality are zero (the training mean) in the scene and never centre a patch.

Memory is bounded by one dask block (one shard) plus one scene tile per worker thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import rasterio
import xarray as xr
import zarr
from rasterio.windows import Window
from zarr.codecs import BloscCodec

from stages import __version__
from stages.config import DatasetSpec, load_dataset
from stages.data.splits import band_statistics, carve_validation, labelled_pixels
from stages.data.tile_store import build_tile_store
from stages.data.windows import order_by_tile, patches_at
from stages.io.atomic import atomic_dir, write_json
from stages.io.hashing import sha256_tree
from stages.io.logs import setup_logging
from stages.io.raster import BLOCK as GEOTIFF_BLOCK
from stages.io.raster import GDAL_CACHE_BYTES

log = logging.getLogger("landfuse.patches")

COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),)
SPLITS = ("train", "val", "test")


@contextlib.contextmanager
def _tif_reader(path: Path) -> Iterator[Any]:
    """``read(r0, r1, c0, c1) -> (bands, h, w) float32`` over one open GeoTIFF (one per thread/task)."""
    with rasterio.open(path) as ds:

        def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
            return ds.read(window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=np.float32)

        yield read


def _read_zarr(array: zarr.Array):
    def read(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return np.asarray(array[:, r0:r1, c0:c1], dtype=np.float32)

    return read


@contextlib.contextmanager
def dask_scheduler(address: str | None, threads: int) -> Iterator[None]:
    """``"local"`` (the pipeline's default): a ``distributed.LocalCluster`` in this process, one worker
    with ``threads`` threads and no dashboard (a batch job on a shared node serves no web page).
    ``None``: dask's threaded scheduler with ``threads`` workers (no cluster start-up cost).
    Any other string: the address of a running scheduler (e.g. a dask-jobqueue SLURMCluster).
    The store is byte-identical under all three.
    """
    zarr.config.set({"threading.max_workers": threads, "async.concurrency": max(4, 2 * threads)})
    if address is None:
        with dask.config.set(scheduler="threads", num_workers=threads):
            yield
        return
    from distributed import Client, LocalCluster

    if address == "local":
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None
            ) as cluster,
            Client(cluster),
        ):
            yield
    else:
        with Client(address):
            yield


def _scene_array(path: Path, mean: np.ndarray, std: np.ndarray, valid: np.ndarray, shard: int) -> da.Array:
    """The normalised scene ``(bands, H, W)`` as a dask array whose blocks are Zarr shards."""
    bands = len(mean)
    height, width = valid.shape
    mean32, std32 = mean.astype(np.float32)[:, None, None], std.astype(np.float32)[:, None, None]

    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (_, _), (r0, r1), (c0, c1) = block_info[None]["array-location"]
        with _tif_reader(path) as read:
            out = read(r0, r1, c0, c1)
        out -= mean32  # in place: a block is a whole shard, so temporaries would double the memory
        out /= std32
        out[:, ~valid[r0:r1, c0:c1]] = 0.0
        return out

    chunks = ((bands,), _split(height, shard), _split(width, shard))
    return da.map_blocks(block, dtype=np.float32, chunks=chunks, meta=np.empty((0, 0, 0), np.float32))


def _split(n: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, n - i) for i in range(0, n, size))


def _patch_array(scene: zarr.Array, yx: np.ndarray, patch: int, tile: int, shard: int) -> da.Array:
    """Patches ``(N, bands, P, P)`` at ``yx`` as a dask array with one shard per block."""
    bands, height, width = scene.shape
    read = _read_zarr(scene)

    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (i0, i1), *_ = block_info[None]["array-location"]
        return patches_at(read, yx[i0:i1], patch, tile, height, width, bands)

    chunks = (_split(len(yx), shard), (bands,), (patch,), (patch,))
    return da.map_blocks(block, dtype=np.float32, chunks=chunks, meta=np.empty((0, 0, 0, 0), np.float32))


def _write(ds: xr.Dataset, store: Path, group: str, encoding: dict[str, Any] | None = None) -> None:
    ds.to_zarr(store, group=group, mode="w", zarr_format=3, consolidated=False, encoding=encoding or {})


def build_patch_store(
    spec: DatasetSpec,
    coreg: Path,
    out: Path,
    *,
    val_fraction: float,
    split_seed: int,
    chunk_samples: int = 256,
    shard_samples: int = 2048,
    scene_chunk: int = 128,
    scene_shard: int = 512,
    threads: int = 2,
    scheduler: str | None = None,
    raw: Path | None = None,
    tile_chunk: int = 1,
    tile_shard: int = 32,
) -> dict[str, Any]:
    """Write the store to ``out`` (atomically) and return a summary with its sha256 digest.

    Tile datasets (:mod:`stages.data.tile_store`) read their tiles from ``raw`` (the download).
    """
    if shard_samples % chunk_samples or scene_shard % scene_chunk or tile_shard % tile_chunk:
        raise ValueError("patches: shard sizes must be multiples of chunk sizes (see params/pipeline.yaml)")
    if spec.task == "tiles":
        if raw is None:
            raise ValueError(
                f"{spec.name} is a tile dataset: the patches stage needs --raw data/raw/{spec.name}"
            )
        with dask_scheduler(scheduler, threads):
            return build_tile_store(
                spec,
                coreg,
                raw,
                out,
                val_fraction=val_fraction,
                split_seed=split_seed,
                tile_chunk=tile_chunk,
                tile_shard=tile_shard,
                compressors=COMPRESSORS,
            )
    started = time.perf_counter()
    sidecar = json.loads((coreg / "grid.json").read_text())
    height, width = sidecar["grid"]["height"], sidecar["grid"]["width"]
    patch = spec.patch_size
    with rasterio.open(coreg / "valid.tif") as ds:
        valid = ds.read(1).astype(bool)
    labels = {}
    for split in ("train", "test"):
        with rasterio.open(coreg / f"labels_{split}.tif") as ds:
            labels[split] = ds.read(1) * valid
    yx_train_all, y_train_all = labelled_pixels(labels["train"])
    is_val = carve_validation(y_train_all, val_fraction, split_seed)
    rng = np.random.default_rng(split_seed)
    points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, mask in (("train", ~is_val), ("val", is_val)):
        order = order_by_tile(yx_train_all[mask], scene_chunk, width, rng)
        points[split] = (yx_train_all[mask][order], y_train_all[mask][order])
    points["test"] = labelled_pixels(labels["test"])

    modalities = spec.modalities
    stats = {}
    for name in modalities:
        with _tif_reader(coreg / f"{name}.tif") as read:
            # tiles aligned with the GeoTIFF's own blocks, so each block is decoded once
            mean, std = band_statistics(read, points["train"][0], height, width, GEOTIFF_BLOCK)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}

    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        dask_scheduler(scheduler, threads),
        atomic_dir(out) as tmp,
    ):
        # the scene first: train/val patches are cut from its normalised chunks
        valid_ds = xr.Dataset({"valid": (("y", "x"), valid.astype(np.uint8))})
        _write(valid_ds, tmp, "scene", {"valid": {"chunks": (scene_chunk, scene_chunk)}})
        for name, m in modalities.items():
            arr = _scene_array(
                coreg / f"{name}.tif",
                np.array(stats[name]["mean"]),
                np.array(stats[name]["std"]),
                valid,
                scene_shard,
            )
            enc = {
                "data": {
                    "chunks": (m.bands, scene_chunk, scene_chunk),
                    "shards": (m.bands, scene_shard, scene_shard),
                    "compressors": COMPRESSORS,
                }
            }
            log.info("writing scene/%s %s", name, arr.shape)
            _write(xr.Dataset({"data": (("band", "y", "x"), arr)}), tmp, f"scene/{name}", enc)

        for split in SPLITS:
            yx, y = points[split]
            meta = xr.Dataset({"label": ("sample", y.astype(np.uint8)), "yx": (("sample", "coord"), yx)})
            _write(meta, tmp, split)
            if split == "test":
                continue  # served from the scene chunks
            for name, m in modalities.items():
                scene = zarr.open_array(tmp / "scene" / name / "data", mode="r")
                arr = _patch_array(scene, yx, patch, scene_chunk, shard_samples)
                enc = {
                    "data": {
                        "chunks": (chunk_samples, m.bands, patch, patch),
                        "shards": (shard_samples, m.bands, patch, patch),
                        "compressors": COMPRESSORS,
                    }
                }
                log.info("writing %s/%s %s", split, name, arr.shape)
                _write(xr.Dataset({"data": (("sample", "band", "y", "x"), arr)}), tmp, f"{split}/{name}", enc)

        counts = {
            split: {str(c.id): int((points[split][1] == c.id).sum()) for c in spec.classes}
            for split in SPLITS
        }
        attrs = {
            "landfuse_version": __version__,
            "dataset": spec.name,
            "task": spec.task,
            "patch_size": patch,
            "classes": [
                {"id": c.id, "key": c.key, "name": c.name, "color": list(c.color)} for c in spec.classes
            ],
            "modalities": {
                name: {
                    "role": m.role,
                    "bands": m.bands,
                    "band_names": list(m.band_names),
                    "wavelengths_nm": list(m.wavelengths_nm) if m.wavelengths_nm else None,
                    "units": m.units,
                }
                for name, m in modalities.items()
            },
            "normalisation": {"method": "zscore over training pixels (val excluded)", **stats},
            "split": {"val_fraction": val_fraction, "seed": split_seed, "counts": counts},
            "grid": sidecar["grid"],
            "scene_chunk": scene_chunk,
        }
        zarr.open_group(tmp, mode="r+").attrs.update(attrs)
    digest, files = sha256_tree(out)
    elapsed = time.perf_counter() - started
    n_patches = sum(len(points[s][0]) for s in SPLITS)
    summary = {
        "dataset": spec.name,
        "store": out.name,
        "sha256": digest,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "counts": counts,
        "normalisation": "zscore over training pixels (val excluded)",
    }
    # timings go to the log, not the summary: artifacts stay byte-reproducible
    log.info(
        "%s: %d files, %.1f MB, %.1f s (%.0f labelled pixels/s)",
        out,
        summary["files"],
        summary["bytes"] / 1e6,
        elapsed,
        n_patches / elapsed,
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--coreg", required=True, type=Path)
    parser.add_argument(
        "--raw", type=Path, default=None, help="the download (tile datasets read their tiles)"
    )
    parser.add_argument("--tile-chunk", type=int, default=1)
    parser.add_argument("--tile-shard", type=int, default=32)
    parser.add_argument("--out", required=True, type=Path, help="results/<dataset>/patches.zarr")
    parser.add_argument("--summary", required=True, type=Path, help="results/<dataset>/patches.json")
    parser.add_argument("--val-fraction", type=float, required=True)
    parser.add_argument("--split-seed", type=int, required=True)
    parser.add_argument("--chunk-samples", type=int, default=256)
    parser.add_argument("--shard-samples", type=int, default=2048)
    parser.add_argument("--scene-chunk", type=int, default=128)
    parser.add_argument("--scene-shard", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scheduler", default=None, help="dask scheduler address, 'local', or omit")
    parser.add_argument("--params-root", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    summary = build_patch_store(
        load_dataset(args.dataset, root=args.params_root),
        args.coreg,
        args.out,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        chunk_samples=args.chunk_samples,
        shard_samples=args.shard_samples,
        scene_chunk=args.scene_chunk,
        scene_shard=args.scene_shard,
        threads=args.threads,
        scheduler=args.scheduler,
        raw=args.raw,
        tile_chunk=args.tile_chunk,
        tile_shard=args.tile_shard,
    )
    write_json(args.summary, summary)


if __name__ == "__main__":
    main()
