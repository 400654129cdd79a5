"""Readers for the native formats of the source datasets, all opened as rasterio datasets.

* GeoTIFF and ENVI (``.hdr`` + binary) go straight through rasterio/GDAL, windowed.
* MATLAB ``.mat`` (v5 through scipy, v7.3 through h5py) holds ``H x W x C`` arrays without
  georeferencing; the array is wrapped in an in-memory GeoTIFF so the rest of the pipeline has one
  code path. ``key`` selects the variable; a dotted path reaches struct fields (``hsi.Data``).
* ENVI ROI text becomes a label image through :mod:`stages.datasets.envi_roi`.

Georeferencing: a raster without a geotransform is treated as a pixel grid of the dataset's GSD
(``grid.gsd_m``); a missing CRS is taken from ``grid.fallback_crs`` and recorded as assumed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile

from stages.config import DatasetSpec, Modality
from stages.datasets.envi_roi import read_envi_roi, roi_label_image


class SourceError(ValueError):
    """A source file is missing or unreadable; the message names it and says what to do."""


@contextlib.contextmanager
def open_modality(raw_dir: Path, modality: Modality) -> Iterator[DatasetReader]:
    """Open one modality's file under ``raw_dir`` as a (windowed) rasterio dataset."""
    path = raw_dir / modality.file
    if not path.is_file():
        raise SourceError(
            f"{path}: the {modality.name} file is missing. Run the download stage, or check "
            f"`modalities.{modality.name}.file` in the dataset's params file."
        )
    if modality.format in ("geotiff", "envi"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                ds = rasterio.open(path)
            except rasterio.errors.RasterioIOError as err:
                raise SourceError(f"{path}: rasterio cannot read it as {modality.format} ({err}).") from err
        with ds:
            if ds.count != modality.bands:
                raise SourceError(
                    f"{path}: has {ds.count} bands but the params file declares {modality.bands} for "
                    f"`{modality.name}`. Is this the right file?"
                )
            yield ds
    elif modality.format == "mat":
        array = read_mat(path, modality.key or modality.name)
        if array.ndim == 2:
            array = array[..., None]
        if array.shape[-1] != modality.bands:
            raise SourceError(
                f"{path}: `{modality.key}` has {array.shape[-1]} bands; params say {modality.bands}."
            )
        with as_dataset(np.moveaxis(array, -1, 0)) as ds:
            yield ds
    else:
        raise SourceError(f"{path}: unsupported format {modality.format!r}.")


def read_mat(path: Path, key: str) -> np.ndarray:
    """Read ``key`` (dotted struct path allowed) from a MATLAB v5 or v7.3 file."""
    parts = key.split(".")
    try:
        import scipy.io

        data = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        value = data[parts[0]]
        for part in parts[1:]:
            value = getattr(value, part)
        return np.asarray(value)
    except NotImplementedError:  # v7.3 is HDF5
        import h5py

        with h5py.File(path, "r") as fh:
            value = fh["/".join(parts)][()]
        # MATLAB stores column-major: HDF5 sees the axes reversed
        return np.asarray(value).T
    except (KeyError, AttributeError) as err:
        raise SourceError(f"{path}: no variable `{key}` ({err}). Check `key:` in the params file.") from err


@contextlib.contextmanager
def as_dataset(array: np.ndarray) -> Iterator[DatasetReader]:
    """Wrap a ``(C, H, W)`` array as an in-memory, non-georeferenced rasterio dataset."""
    count, height, width = array.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=width, height=height, count=count, dtype=array.dtype) as dst:
                dst.write(array)
            with mem.open() as ds:
                yield ds


def read_labels(raw_dir: Path, spec: DatasetSpec, split: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``split`` (``train``/``test``) label image on the reference grid: uint8, 0 = unlabelled."""
    fmt = spec.labels["format"]
    path = raw_dir / spec.labels[split]
    if not path.is_file():
        raise SourceError(f"{path}: the {split} labels are missing. Run the download stage first.")
    ids = {c.key: c.id for c in spec.classes}
    if fmt == "envi_roi":
        return roi_label_image(read_envi_roi(path), ids, shape, str(path))
    if fmt == "geotiff":
        with rasterio.open(path) as ds:
            labels = ds.read(1)
    elif fmt == "mat":
        labels = read_mat(path, spec.labels.get("key", split))
    else:
        raise SourceError(f"{path}: unsupported label format {fmt!r}.")
    if labels.shape != shape:
        raise SourceError(f"{path}: labels are {labels.shape}, the scene is {shape}.")
    return _check_label_values(labels, spec, path)


def _check_label_values(labels: np.ndarray, spec: DatasetSpec, path: Path) -> np.ndarray:
    unlabelled = spec.labels.get("unlabelled", 0)
    valid = {c.id for c in spec.classes} | {unlabelled}
    found = set(np.unique(labels).tolist())
    if not found <= valid:
        raise SourceError(f"{path}: label values {sorted(found - valid)} are not declared classes.")
    out = labels.astype(np.int64)
    out[out == unlabelled] = 0
    return out.astype(np.uint8)
