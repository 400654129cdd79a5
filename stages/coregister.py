"""Stage ``coregister``: put every modality and the labels on one reference grid.

``python -m stages.coregister --dataset NAME --raw data/raw/NAME --out results/NAME/coreg``

The reference grid is the ``grid.reference`` modality's own grid, or with ``reference: labels`` the
train label GeoTIFF's (Houston 2018: the 0.5 m ground truth, onto which the 1 m HSI goes x2 and the
LiDAR, which covers a larger area, is cropped). Each other modality is resampled onto it through a
``WarpedVRT`` (bilinear for continuous bands unless the params file says otherwise; nearest for
labels), streamed tile by tile so memory stays bounded by one 256 x 256 block of all bands. A
modality already on the reference grid is copied unchanged in its own dtype; a resampled one becomes
float32 with NaN outside its footprint.

Residual misalignment is then *estimated*, not corrected: phase correlation (upsampled DFT, no
spectral normalisation, which fails on smooth cross-modal windows) between edge images of the
reference and each modality over a central window (see :func:`_structure_image`). The shift is
recorded in the sidecar; shifts above half a pixel are logged as warnings.

Tile datasets (``task: tiles``) come co-registered per tile: the stage verifies that and writes
``tiles.json`` (the tile index) instead.

Outputs in ``--out``: ``<modality>.tif`` per modality, ``labels_train.tif`` and ``labels_test.tif``
(uint8 class ids with a colour table, 0 = unlabelled), ``valid.tif`` (1 where every modality has
data) and ``grid.json`` (grid, CRS, per-modality provenance, band names, wavelengths, shifts and
label counts).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy import ndimage

from stages.config import DatasetSpec, Modality, load_dataset
from stages.datasets.readers import SourceError, band_centres, open_modality, open_reference, read_labels
from stages.datasets.tiles import index_tiles
from stages.io.atomic import atomic_dir, write_json
from stages.io.hashing import sha256_file
from stages.io.logs import progress, setup_logging
from stages.io.raster import (
    GDAL_CACHE_BYTES,
    block_windows,
    crs_to_str,
    profile,
    transform_to_list,
    write_class_map,
)

log = logging.getLogger("landfuse.coregister")

SIDECAR = "grid.json"
SHIFT_WINDOW = 512  # edge of the window used for phase correlation (bounded memory)
# GDAL needs *a* CRS to warp; for data without one, both sides get the same stand-in.
_PIXEL_CRS = CRS.from_epsg(3857)


@dataclass(frozen=True)
class Grid:
    height: int
    width: int
    transform: Affine
    crs: CRS | None
    georeferenced: bool
    crs_assumed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "transform": transform_to_list(self.transform),
            "crs": crs_to_str(self.crs),
            "georeferenced": self.georeferenced,
            "crs_assumed": self.crs_assumed,
            "gsd": [abs(self.transform.a), abs(self.transform.e)],
        }


def _has_geotransform(ds: DatasetReader) -> bool:
    return not ds.transform.is_identity


def reference_grid(ds: DatasetReader, spec: DatasetSpec) -> Grid:
    """The grid of the reference raster, with params fallbacks for missing georeferencing.

    Custom data may leave grid.height/width out: the reference modality's own size is then the grid.
    """
    declared = spec.declared_shape
    if declared is not None and (ds.height, ds.width) != declared:
        raise SourceError(
            f"{ds.name}: the reference raster is {ds.height} x {ds.width} but {spec.path} declares "
            f"grid {declared[0]} x {declared[1]}. Fix grid.height/width or check the file."
        )
    height, width = ds.height, ds.width
    georef = _has_geotransform(ds)
    if georef:
        transform = ds.transform
    else:
        gsd = float(spec.grid.get("gsd_m", 1.0))
        transform = Affine(gsd, 0, 0, 0, -gsd, height * gsd)
    crs, assumed = ds.crs, False
    if crs is None and spec.grid.get("fallback_crs") and georef:
        crs, assumed = CRS.from_user_input(spec.grid["fallback_crs"]), True
    return Grid(height, width, transform, crs, georef, assumed)


def source_transform(ds: DatasetReader, grid: Grid) -> Affine:
    """A raster without georeferencing is assumed to cover the reference footprint exactly."""
    if _has_geotransform(ds):
        return ds.transform
    return grid.transform @ Affine.scale(grid.width / ds.width, grid.height / ds.height)


def on_grid(ds: DatasetReader, grid: Grid) -> bool:
    """True when ``ds`` already has the reference grid (same shape, transform and CRS)."""
    if (ds.height, ds.width) != (grid.height, grid.width):
        return False
    tol = 1e-6 * max(abs(grid.transform.a), 1e-9)
    same_transform = np.allclose(
        transform_to_list(source_transform(ds, grid)), transform_to_list(grid.transform), atol=tol
    )
    same_crs = ds.crs is None or grid.crs is None or ds.crs == grid.crs
    return bool(same_transform and same_crs)


@contextlib.contextmanager
def aligned(ds: DatasetReader, grid: Grid, resampling: str):
    """A reader with the reference grid: the dataset itself, or a WarpedVRT onto the grid."""
    if on_grid(ds, grid):
        yield ds, "none"
        return
    src_crs = ds.crs or grid.crs or _PIXEL_CRS
    dst_crs = grid.crs or _PIXEL_CRS
    with WarpedVRT(
        ds,
        src_crs=src_crs,
        src_transform=source_transform(ds, grid),
        crs=dst_crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling[resampling],
        dtype="float32",
        nodata=np.nan,
    ) as vrt:
        yield vrt, resampling


def _valid(block: np.ndarray, nodata: float | None) -> np.ndarray:
    ok = np.ones(block.shape[1:], bool)
    if block.dtype.kind == "f":
        ok &= np.isfinite(block).all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        ok &= (block != nodata).all(axis=0)
    return ok


def declared_nodata(block: np.ndarray, modality: Modality) -> np.ndarray:
    """``(h, w)`` bool: where the ``(bands, h, w)`` block holds the params' ``nodata`` value.

    ``nodata_rule: all_bands`` flags a pixel only when every band equals it (a zero-filled border of a
    spectrum; a single zero band is a legitimate value), ``any_band`` when any band does.
    """
    if modality.nodata is None:
        return np.zeros(block.shape[1:], bool)
    hit = block == modality.nodata
    return hit.all(axis=0) if modality.nodata_rule == "all_bands" else hit.any(axis=0)


def write_modality(
    ds: DatasetReader, modality: Modality, grid: Grid, path: Path, valid: np.ndarray
) -> dict[str, Any]:
    """Stream ``ds`` onto ``grid`` into ``path`` block by block; AND its coverage into ``valid``.

    Coverage is the source's own nodata / NaN, and the params' declared ``nodata`` (checked on the
    aligned block: for a resampled modality, pixels that blend no-data with data count as data).
    """
    with aligned(ds, grid, modality.resampling) as (src, method):
        dtype = ds.dtypes[0] if method == "none" else "float32"
        nodata = ds.nodata if method == "none" else np.nan
        extra = {} if np.dtype(dtype).kind == "f" else {"nodata": nodata}
        prof = profile(grid.height, grid.width, ds.count, dtype, grid.transform, grid.crs, **extra)
        windows = list(block_windows(grid.height, grid.width))
        with rasterio.open(path, "w", **prof) as dst:
            dst.descriptions = modality.band_names
            for win in progress(windows, desc=f"coregister {modality.name}", unit="block"):
                block = src.read(window=win)
                dst.write(block.astype(dtype, copy=False), window=win)
                rows, cols = win.toslices()
                valid[rows, cols] &= _valid(block, nodata) & ~declared_nodata(block, modality)
    out = {"resampling": method, "dtype": dtype, "nodata": None if nodata is None else float(nodata)}
    if modality.nodata is not None:  # only then: sidecars of datasets without it stay as they were
        out["declared_nodata"] = {"value": modality.nodata, "rule": modality.nodata_rule}
    return out


def _structure_image(path: Path, window: Window) -> np.ndarray:
    """An edge image for cross-sensor registration.

    Multi-band modalities are first normalised per pixel (spectrum / its L2 norm) and reduced to
    their top three principal components: that removes illumination, so cast shadows (whose edges
    sit beside, not on, the height edges of a DSM) do not bias the shift. Single bands are z-scored.
    """
    with rasterio.open(path) as ds:
        block = ds.read(window=window).astype(np.float32)
    block = np.nan_to_num(block, nan=float(np.nanmean(block)) if np.isfinite(block).any() else 0.0)
    if block.shape[0] >= 3:
        unit = block / np.maximum(np.linalg.norm(block, axis=0, keepdims=True), 1e-12)
        flat = unit.reshape(unit.shape[0], -1)
        flat = flat - flat.mean(axis=1, keepdims=True)
        eigvecs = np.linalg.eigh(flat @ flat.T)[1][:, ::-1][:, :3]
        images = (eigvecs.T @ flat).reshape(3, *block.shape[1:])
    else:
        std = block.std(axis=(1, 2), keepdims=True)
        images = (block - block.mean(axis=(1, 2), keepdims=True)) / np.where(std > 0, std, 1)
    return sum(np.hypot(ndimage.sobel(im, 0), ndimage.sobel(im, 1)) for im in images)


def estimate_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 20) -> dict[str, float]:
    """Sub-pixel ``(row, col)`` shift that aligns ``moving`` to ``reference`` (skimage's convention)."""
    from skimage.registration import phase_cross_correlation

    if reference.std() == 0 or moving.std() == 0:
        return {"dy": 0.0, "dx": 0.0, "error": float("nan"), "textured": False}
    shift, error, _ = phase_cross_correlation(reference, moving, upsample_factor=upsample, normalization=None)
    return {"dy": float(shift[0]), "dx": float(shift[1]), "error": float(error), "textured": True}


def central_window(grid: Grid, size: int = SHIFT_WINDOW) -> Window:
    h, w = min(size, grid.height), min(size, grid.width)
    return Window((grid.width - w) // 2, (grid.height - h) // 2, w, h)


def coregister(spec: DatasetSpec, raw_dir: Path, out: Path, threads: int = 2) -> dict[str, Any]:
    """Run the stage; returns the sidecar written to ``out/grid.json`` (``out/tiles.json`` for tiles)."""
    if spec.task == "tiles":
        return coregister_tiles(spec, raw_dir, out)
    modalities = spec.modalities
    ref_name = spec.registration_reference
    sidecar: dict[str, Any] = {"dataset": spec.name, "reference": spec.reference_modality, "modalities": {}}
    with rasterio.Env(GDAL_NUM_THREADS=str(threads), GDAL_CACHEMAX=GDAL_CACHE_BYTES), atomic_dir(out) as tmp:
        with open_reference(raw_dir, spec) as ref_ds:
            grid = reference_grid(ref_ds, spec)
        valid = np.ones((grid.height, grid.width), bool)
        for name, modality in modalities.items():
            with open_modality(raw_dir, modality) as ds:
                if spec.is_custom and not _has_geotransform(ds) and ds.shape != (grid.height, grid.width):
                    raise SourceError(
                        f"{raw_dir / modality.file}: `{name}` is {ds.height} x {ds.width} without "
                        f"georeferencing; custom data like this must already be on the {grid.height} x "
                        f"{grid.width} reference grid. Resample it first, or give a georeferenced GeoTIFF."
                    )
                written = write_modality(ds, modality, grid, tmp / f"{name}.tif", valid)
                source_grid = {
                    "height": ds.height,
                    "width": ds.width,
                    "transform": transform_to_list(ds.transform),
                    "crs": crs_to_str(ds.crs),
                }
            sidecar["modalities"][name] = {
                "file": f"{name}.tif",
                "source": list(modality.stack) if modality.stack else modality.file,
                "source_sha256": (
                    [sha256_file(raw_dir / p) for p in modality.stack]
                    if modality.stack
                    else sha256_file(raw_dir / modality.file)
                ),
                "source_grid": source_grid,
                "role": modality.role,
                "bands": modality.bands,
                "band_names": list(modality.band_names),
                "wavelengths_nm": list(centres) if (centres := band_centres(raw_dir, modality)) else None,
                "units": modality.units,
                **written,
            }
        window = central_window(grid)
        ref_edges = _structure_image(tmp / f"{ref_name}.tif", window)
        for name in modalities:
            shift = {"dy": 0.0, "dx": 0.0, "error": 0.0, "textured": True}
            if name != ref_name:
                shift = estimate_shift(ref_edges, _structure_image(tmp / f"{name}.tif", window))
                if abs(shift["dy"]) > 0.5 or abs(shift["dx"]) > 0.5:
                    log.warning(
                        "%s: residual shift (%.2f, %.2f) px against %s",
                        name,
                        shift["dy"],
                        shift["dx"],
                        ref_name,
                    )
            shift["window"] = [window.row_off, window.col_off, window.height, window.width]
            sidecar["modalities"][name]["shift_px"] = shift

        shape = (grid.height, grid.width)
        labels = {split: read_labels(raw_dir, spec, split, shape) for split in ("train", "test")}
        overlap = int(((labels["train"] > 0) & (labels["test"] > 0)).sum())
        if overlap:
            raise SourceError(f"{spec.name}: {overlap} pixels are labelled in both the train and test split.")
        label_counts = {}
        for split, image in labels.items():
            dropped = int(((image > 0) & ~valid).sum())
            if dropped:
                log.warning(
                    "%s: %d %s labels fall on pixels without data; dropped", spec.name, dropped, split
                )
                image[~valid] = 0
            write_class_map(
                tmp / f"labels_{split}.tif", image, grid.transform, grid.crs, spec.palette, spec.class_names
            )
            ids, counts = np.unique(image[image > 0], return_counts=True)
            label_counts[split] = {int(i): int(n) for i, n in zip(ids, counts, strict=True)}

        prof = profile(grid.height, grid.width, 1, "uint8", grid.transform, grid.crs, nodata=None)
        with rasterio.open(tmp / "valid.tif", "w", **prof) as dst:
            dst.write(valid.astype(np.uint8), 1)
        sidecar.update(
            grid=grid.as_dict(),
            labels=label_counts,
            classes=[
                {"id": c.id, "key": c.key, "name": c.name, "color": list(c.color)} for c in spec.classes
            ],
            valid_fraction=float(valid.mean()),
        )
        write_json(tmp / SIDECAR, sidecar)
    log.info("coregistered %s onto a %d x %d grid", spec.name, grid.height, grid.width)
    return sidecar


def coregister_tiles(spec: DatasetSpec, raw_dir: Path, out: Path) -> dict[str, Any]:
    """Tile datasets come co-registered: verify every tile's modalities share its grid, and index them."""
    index = index_tiles(raw_dir, spec)
    with atomic_dir(out) as tmp:
        write_json(tmp / "tiles.json", index)
    log.info("%s: %s tiles, all co-registered", spec.name, {k: len(v) for k, v in index["sets"].items()})
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--raw", required=True, type=Path, help="the downloaded data, data/raw/<dataset>")
    parser.add_argument("--out", required=True, type=Path, help="results/<dataset>/coreg")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--params-root", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging()
    coregister(load_dataset(args.dataset, root=args.params_root), args.raw, args.out, args.threads)


if __name__ == "__main__":
    main()
