"""Tile datasets (DFC 2020, Hunan): finding the tiles of each set and checking they are co-registered.

A tile is one file per modality plus one label file, named by the set's path template (see
``tiles.sets`` in the dataset's params). Tiles come on a common grid per tile; :func:`index_tiles`
verifies that (shape, transform, CRS, band counts) rather than resampling, and records what it found.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from stages.config import DatasetSpec
from stages.datasets.readers import SourceError
from stages.io.raster import crs_to_str, transform_to_list


def _id_pattern(template: str, kind: str) -> re.Pattern[str]:
    escaped = re.escape(template.replace("{kind}", kind))
    return re.compile("^" + escaped.replace(re.escape("{id}"), r"(?P<id>[A-Za-z0-9]+)") + "$")


def find_tile_ids(raw: Path, spec: DatasetSpec, tile_set: str) -> list[str]:
    """Ids of the tiles of ``tile_set`` that have a label file, in natural order (p2 before p10)."""
    template = spec.tiles["sets"][tile_set]
    label_kind = spec.labels["train"]
    pattern = _id_pattern(template, label_kind)
    ids = []
    for path in raw.glob(spec.tile_path(tile_set, label_kind, "*")):
        m = pattern.match(path.relative_to(raw).as_posix())
        if m:
            ids.append(m.group("id"))
    return sorted(ids, key=lambda i: (len(i), i))


def _open(path: Path) -> rasterio.io.DatasetReader:
    if not path.is_file():
        raise SourceError(f"{path}: missing. Each tile needs one file per modality and a label file.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def index_tiles(raw: Path, spec: DatasetSpec) -> dict[str, Any]:
    """Every tile id per set, after checking each tile's files share one grid.

    Returns the index written to ``coreg/tiles.json``: sets and ids, the split -> sets mapping, the
    tile size, per-modality band counts, NaN fractions and the CRSs found.
    """
    size = spec.tiles["size"]
    kinds = {name: m.file for name, m in spec.modalities.items()}
    label_kind = spec.labels["train"]
    sets: dict[str, list[str]] = {}
    nan_pixels = dict.fromkeys(kinds, 0)
    pixels = 0
    crss: set[str] = set()
    for tile_set in sorted({s for sets_ in spec.tiles["splits"].values() for s in sets_}):
        ids = find_tile_ids(raw, spec, tile_set)
        if not ids:
            looked = spec.tile_path(tile_set, label_kind, "*")
            raise SourceError(
                f"{raw}: no tiles of set '{tile_set}' (looked for {looked}). "
                "Run the download stage, or check `tiles.sets` in the params file."
            )
        sets[tile_set] = ids
        for tile_id in ids:
            with _open(raw / spec.tile_path(tile_set, label_kind, tile_id)) as ref:
                grid = (ref.height, ref.width, tuple(transform_to_list(ref.transform)), crs_to_str(ref.crs))
            if grid[:2] != (size, size):
                raise SourceError(
                    f"{ref.name}: {grid[0]} x {grid[1]} pixels, expected {size} x {size} tiles."
                )
            crss.add(str(grid[3]))
            for name, kind in kinds.items():
                path = raw / spec.tile_path(tile_set, kind, tile_id)
                with _open(path) as ds:
                    here = (ds.height, ds.width, tuple(transform_to_list(ds.transform)), crs_to_str(ds.crs))
                    if here != grid:
                        raise SourceError(
                            f"{path}: not on the grid of its label tile ({here[:2]}, {here[3]} vs "
                            f"{grid[:2]}, {grid[3]}). Tile datasets must come co-registered."
                        )
                    if ds.count != spec.modalities[name].bands:
                        raise SourceError(
                            f"{path}: {ds.count} bands, the params file says {spec.modalities[name].bands}."
                        )
                    if ds.dtypes[0].startswith("float"):
                        nan_pixels[name] += int(np.isnan(ds.read()).any(axis=0).sum())
            pixels += size * size
    return {
        "dataset": spec.name,
        "task": "tiles",
        "tile_size": size,
        "sets": sets,
        "splits": spec.tiles["splits"],
        "bands": {name: spec.modalities[name].bands for name in kinds},
        "nan_fraction": {name: nan_pixels[name] / max(pixels, 1) for name in kinds},
        "crs": sorted(crss),
        "check": "every modality of every tile shares its label tile's shape, transform and CRS",
    }
