"""The patch store of a tile dataset: the same Zarr layout as scene datasets, with tiles as samples.

::

    /                      attrs: classes, palette, tile size, modalities, normalisation, split, tiles
    train/label            (sample, y, x)          uint8 class ids, 0 = no label
    train/tile             (sample,)               index into attrs["tiles"]["train"] ("set/id")
    train/<mod>/data       (sample, band, y, x)    float32, normalised (NaN -> 0, the training mean)
    val/..., test/...      as train

Honesty rules as for scenes: ``val`` is a seeded fraction of the training tiles, stratified by each
tile's majority class; per-band statistics come from the remaining training tiles' finite pixels only.
Tiles are read from the downloaded files one dask block (one shard) at a time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
import xarray as xr
import zarr

from stages import __version__
from stages.config import DatasetSpec
from stages.data.splits import carve_validation
from stages.io.atomic import atomic_dir
from stages.io.hashing import sha256_tree

log = logging.getLogger("landfuse.patches")

Tile = tuple[str, str]  # (set, id)


def read_tile(raw: Path, spec: DatasetSpec, tile: Tile, kind: str) -> np.ndarray:
    """One tile file: modalities as float32 ``(C, H, W)``; labels as class ids (``labels.remap`` applied)."""
    with rasterio.open(raw / spec.tile_path(tile[0], kind, tile[1])) as ds:
        if kind != spec.labels["train"]:
            return ds.read(out_dtype=np.float32)
        labels = ds.read(1)
    lut = spec.label_lut()
    if lut is None:
        return labels
    if labels.dtype != np.uint8:
        raise ValueError(
            f"{raw / spec.tile_path(tile[0], kind, tile[1])}: labels are {labels.dtype}; labels.remap maps "
            "uint8 codes. Check the file (is it the label tile?) or drop labels.remap from the params."
        )
    return lut[labels]  # raw codes -> class ids; 0 = no label, 255 = an unlisted code (rejected later)


def split_tiles(
    index: dict[str, Any], raw: Path, spec: DatasetSpec, fraction: float, seed: int
) -> dict[str, list[Tile]]:
    """Train/val/test tiles: val is a stratified (by majority class), seeded fraction of training tiles."""
    train = [(s, i) for s in index["splits"]["train"] for i in index["sets"][s]]
    test = [(s, i) for s in index["splits"]["test"] for i in index["sets"][s]]
    majority = np.array(
        [np.bincount(read_tile(raw, spec, t, spec.labels["train"]).ravel()).argmax() for t in train]
    )
    is_val = carve_validation(majority, fraction, seed)
    return {
        "train": [t for t, v in zip(train, is_val, strict=True) if not v],
        "val": [t for t, v in zip(train, is_val, strict=True) if v],
        "test": test,
    }


def tile_statistics(
    raw: Path, spec: DatasetSpec, tiles: list[Tile], kind: str, bands: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std over the finite pixels of ``tiles`` (float64 accumulation)."""
    total, sq, n = np.zeros(bands), np.zeros(bands), np.zeros(bands)
    for tile in tiles:
        x = read_tile(raw, spec, tile, kind).reshape(bands, -1).astype(np.float64)
        ok = np.isfinite(x)
        total += np.where(ok, x, 0).sum(axis=1)
        sq += np.where(ok, x * x, 0).sum(axis=1)
        n += ok.sum(axis=1)
    if (n == 0).any():
        raise ValueError(f"{kind}: a band has no finite training pixel")
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return mean, np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)


def _tiles_array(read, n: int, shape: tuple[int, ...], dtype: Any, shard: int) -> da.Array:
    def block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
        (i0, i1), *_ = block_info[None]["array-location"]
        return np.stack([read(i) for i in range(i0, i1)])

    chunks = (tuple(min(shard, n - i) for i in range(0, n, shard)), *((s,) for s in shape))
    return da.map_blocks(block, dtype=dtype, chunks=chunks, meta=np.empty((0,) * (len(shape) + 1), dtype))


def build_tile_store(
    spec: DatasetSpec,
    coreg: Path,
    raw: Path,
    out: Path,
    *,
    val_fraction: float,
    split_seed: int,
    tile_chunk: int = 1,
    tile_shard: int = 32,
    compressors: Any = None,
) -> dict[str, Any]:
    """Write the tile store to ``out`` (atomically); returns a summary with its sha256 digest."""
    index = json.loads((coreg / "tiles.json").read_text())
    size = index["tile_size"]
    label_kind = spec.labels["train"]
    tiles = split_tiles(index, raw, spec, val_fraction, split_seed)
    class_ids = {c.id for c in spec.classes}
    stats = {}
    for name, m in spec.modalities.items():
        mean, std = tile_statistics(raw, spec, tiles["train"], m.file, m.bands)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}

    counts: dict[str, dict[str, int]] = {}
    with atomic_dir(out) as tmp:
        for split, members in tiles.items():

            def read_label(i: int, members: list[Tile] = members) -> np.ndarray:
                label = read_tile(raw, spec, members[i], label_kind)
                unknown = set(np.unique(label).tolist()) - class_ids - {spec.labels.get("unlabelled", 0)}
                if unknown:
                    raise ValueError(
                        f"tile {members[i]}: label values {sorted(unknown)} are not declared classes"
                    )
                return label.astype(np.uint8)

            labels = _tiles_array(read_label, len(members), (size, size), np.uint8, tile_shard)
            meta = xr.Dataset(
                {
                    "label": (("sample", "y", "x"), labels),
                    "tile": ("sample", np.arange(len(members), dtype=np.int64)),
                }
            )
            meta.to_zarr(
                tmp,
                group=split,
                mode="w",
                zarr_format=3,
                consolidated=False,
                encoding={
                    "label": {
                        "chunks": (tile_chunk, size, size),
                        "shards": (tile_shard, size, size),
                        "compressors": compressors,
                    }
                },
            )
            hist = np.zeros(256, np.int64)
            for part in np.asarray(zarr.open_array(tmp / split / "label", mode="r")[:]).reshape(
                len(members), -1
            ):
                hist += np.bincount(part, minlength=256)
            counts[split] = {str(c.id): int(hist[c.id]) for c in spec.classes}
            for name, m in spec.modalities.items():
                mean32 = np.asarray(stats[name]["mean"], np.float32)[:, None, None]
                std32 = np.asarray(stats[name]["std"], np.float32)[:, None, None]

                def read_data(
                    i: int, members: list[Tile] = members, kind: str = m.file, mean=mean32, std=std32
                ):
                    x = read_tile(raw, spec, members[i], kind)
                    x -= mean
                    x /= std
                    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

                arr = _tiles_array(read_data, len(members), (m.bands, size, size), np.float32, tile_shard)
                enc = {
                    "data": {
                        "chunks": (tile_chunk, m.bands, size, size),
                        "shards": (tile_shard, m.bands, size, size),
                        "compressors": compressors,
                    }
                }
                log.info("writing %s/%s %s", split, name, arr.shape)
                xr.Dataset({"data": (("sample", "band", "y", "x"), arr)}).to_zarr(
                    tmp, group=f"{split}/{name}", mode="w", zarr_format=3, consolidated=False, encoding=enc
                )
        attrs = {
            "landfuse_version": __version__,
            "dataset": spec.name,
            "task": "tiles",
            "tile_size": size,
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
                for name, m in spec.modalities.items()
            },
            "normalisation": {
                "method": "zscore over the training tiles' finite pixels (val excluded)",
                **stats,
            },
            "split": {"val_fraction": val_fraction, "seed": split_seed, "unit": "tile", "counts": counts},
            "tiles": {split: [f"{s}/{i}" for s, i in members] for split, members in tiles.items()},
            "nan_fraction": index["nan_fraction"],
        }
        zarr.open_group(tmp, mode="r+").attrs.update(attrs)
    digest, files = sha256_tree(out)
    return {
        "dataset": spec.name,
        "store": out.name,
        "sha256": digest,
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "counts": counts,
        "tiles": {split: len(members) for split, members in tiles.items()},
        "normalisation": attrs["normalisation"]["method"],
    }
