"""Readers for the native formats of the source datasets, all opened as rasterio datasets.

* GeoTIFF, ENVI (``.hdr`` + binary) and PCIDSK (``.pix``, Houston 2018's HSI) go straight through
  rasterio/GDAL, windowed. A ``files:`` modality stacks single-band GeoTIFFs on one grid through a
  VRT, so it is still read window by window.
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
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader, MemoryFile

from stages.config import DatasetSpec, Modality
from stages.datasets.envi_roi import read_envi_roi, roi_label_image
from stages.datasets.splits import SplitError, apply_split


class SourceError(ValueError):
    """A source file is missing or unreadable; the message names it and says what to do."""


@contextlib.contextmanager
def open_modality(raw_dir: Path, modality: Modality) -> Iterator[DatasetReader]:
    """Open one modality's file (or ``files:`` stack) under ``raw_dir`` as a windowed rasterio dataset."""
    for rel in modality.paths:
        if not (raw_dir / rel).is_file():
            key = "files" if modality.stack else "file"
            raise SourceError(
                f"{raw_dir / rel}: the {modality.name} file is missing. Run the download stage, or check "
                f"`modalities.{modality.name}.{key}` in the dataset's params file."
            )
    path = raw_dir / modality.file
    if modality.format in ("geotiff", "envi", "pcidsk"):
        source = stack_vrt([raw_dir / p for p in modality.stack]) if modality.stack else path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                ds = rasterio.open(source)
            except rasterio.errors.RasterioIOError as err:
                raise SourceError(f"{path}: rasterio cannot read it as {modality.format} ({err}).") from err
        with ds:
            if ds.count != modality.bands:
                raise SourceError(
                    f"{path}: has {ds.count} bands but the params file declares {modality.bands} for "
                    f"`{modality.name}`. Is this the right file?"
                )
            yield ds
    elif modality.format in ("mat", "npy"):
        with as_dataset(read_modality_array(path, modality)) as ds:
            yield ds
    else:
        raise SourceError(f"{path}: unsupported format {modality.format!r}.")


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def stack_vrt(paths: list[Path]) -> str:
    """A VRT (XML, openable by rasterio) whose band ``i`` is band 1 of ``paths[i]``.

    Every file must be single-band and share the first file's size, transform and CRS; the bands take
    the dtype that holds them all, and each keeps its file's no-data value.
    """
    metas = []
    for path in paths:
        try:
            with rasterio.open(path) as ds:
                metas.append((ds.count, ds.shape, ds.transform, ds.crs, ds.dtypes[0], ds.nodata))
        except rasterio.errors.RasterioIOError as err:
            raise SourceError(f"{path}: rasterio cannot read it as a GeoTIFF ({err}).") from err
    _, shape, transform, crs, _, _ = metas[0]
    for path, (n, other_shape, other_transform, other_crs, _, _) in zip(paths, metas, strict=True):
        if n != 1:
            raise SourceError(f"{path}: has {n} bands; a `files:` stack takes single-band rasters.")
        if (other_shape, other_transform, other_crs) != (shape, transform, crs):
            raise SourceError(
                f"{path}: its grid ({other_shape[0]} x {other_shape[1]}, {other_transform.to_gdal()}, "
                f"{other_crs}) differs from {paths[0]}'s ({shape[0]} x {shape[1]}, {transform.to_gdal()}, "
                f"{crs}); the files of one modality must share a grid."
            )
    dtype = np.result_type(*[m[4] for m in metas]).name
    bands = []
    for i, (path, meta) in enumerate(zip(paths, metas, strict=True), start=1):
        nodata = "" if meta[5] is None else f"<NoDataValue>{meta[5]!r}</NoDataValue>"
        bands.append(
            f'<VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{i}">{nodata}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(str(path.resolve()))}</SourceFilename>'
            "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
        )
    srs = f"<SRS>{escape(crs.to_wkt())}</SRS>" if crs else ""
    geo = ", ".join(repr(float(v)) for v in transform.to_gdal())
    return (
        f'<VRTDataset rasterXSize="{shape[1]}" rasterYSize="{shape[0]}">{srs}'
        f"<GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )


@contextlib.contextmanager
def open_reference(raw_dir: Path, spec: DatasetSpec) -> Iterator[DatasetReader]:
    """The raster whose grid is the dataset's grid: ``grid.reference``'s modality, or with
    ``reference: labels`` the train label GeoTIFF (a ground truth finer than some sensors)."""
    if spec.reference_modality != "labels":
        with open_modality(raw_dir, spec.modalities[spec.reference_modality]) as ds:
            yield ds
        return
    path = raw_dir / spec.labels["train"]
    if not path.is_file():
        raise SourceError(
            f"{path}: the train labels (the reference grid) are missing. Run the download stage."
        )
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise SourceError(f"{path}: rasterio cannot read the label GeoTIFF ({err}).") from err
    with ds:
        if ds.transform.is_identity:
            raise SourceError(
                f"{path}: grid.reference is `labels` but the label raster has no georeferencing, so "
                "nothing can be resampled onto it. Name a georeferenced modality as grid.reference."
            )
        yield ds


def band_centres(raw_dir: Path, modality: Modality) -> tuple[float, ...] | None:
    """Band centres (nm): the params file's ``wavelengths_nm``, else those a ``.mat`` stores at
    ``wavelengths_key`` (MUUFL's ``hsi.info.wavelength``), else None."""
    if modality.wavelengths_nm or not modality.wavelengths_key:
        return modality.wavelengths_nm
    path = raw_dir / modality.file
    centres = np.asarray(read_mat(path, modality.wavelengths_key), dtype=np.float64).ravel()
    if centres.size != modality.bands:
        raise SourceError(
            f"{path}: `{modality.wavelengths_key}` holds {centres.size} band centres for the "
            f"{modality.bands} bands of `{modality.name}`. Check wavelengths_key / bands in the params file."
        )
    return tuple(float(c) for c in centres)


def read_npy(path: Path) -> np.ndarray:
    """A NumPy ``.npy`` array, memory-mapped (no pickles: they can run code)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SourceError(
            f"{path}: cannot read it as a .npy array ({err}). Save it with numpy.save (no object arrays)."
        ) from err


def read_modality_array(path: Path, modality: Modality) -> np.ndarray:
    """A ``.mat``/``.npy`` modality as a ``(C, H, W)`` array, its band count checked against the params.

    2-D arrays are one band; 3-D arrays follow ``layout`` (``chw`` or ``hwc``; ``.mat`` defaults to
    ``hwc``, MATLAB's usual order).
    """
    if modality.format == "mat":
        array = read_mat(path, modality.key or modality.name)
        layout = modality.layout or "hwc"
    else:
        array = read_npy(path)
        layout = modality.layout or "chw"
    where = f"modalities.{modality.name}"
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, -1, 0) if layout == "hwc" else array
    else:
        raise SourceError(
            f"{path}: the {modality.name} array has shape {array.shape}; expected H x W or a 3-D array "
            f"({where}.layout says which axis holds the bands)."
        )
    if array.shape[0] != modality.bands:
        raise SourceError(
            f"{path}: read with layout {layout} the {modality.name} array {tuple(array.shape)} has "
            f"{array.shape[0]} bands, but {where}.bands is {modality.bands}. Fix `bands:` or `layout:` "
            "(chw = bands first, hwc = bands last) in the params file."
        )
    if array.dtype.kind not in "biuf":
        raise SourceError(f"{path}: the {modality.name} array has dtype {array.dtype}; expected numbers.")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def read_mat(path: Path, key: str) -> np.ndarray:
    """Read ``key`` from a MATLAB v5 or v7.3 file.

    ``key`` is a variable or a dotted struct path; a part may carry a 0-based index into a struct
    array, as ``hsi.Lidar[0].z`` reads MATLAB's ``hsi.Lidar(1).z`` (a 1 x 1 struct array loads
    squeezed to a single struct, which index 0 also accepts).
    """
    parts = [_mat_part(p) for p in key.split(".")]
    try:
        try:
            return _read_mat_v5(path, parts)
        except NotImplementedError:  # v7.3 is HDF5
            return _read_mat_v73(path, parts)
    except (KeyError, AttributeError, IndexError) as err:
        raise SourceError(f"{path}: no variable `{key}` ({err}). Check `key:` in the params file.") from err


def _read_mat_v5(path: Path, parts: list[tuple[str, int | None]]) -> np.ndarray:
    import scipy.io

    data = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    value = data[parts[0][0]]
    for i, (name, index) in enumerate(parts):
        value = value if i == 0 else getattr(value, name)
        single = isinstance(value, scipy.io.matlab.mat_struct)  # a squeezed 1 x 1 struct array
        if index is not None and not (single and index == 0):
            value = value[index]
    return np.asarray(value)


def _read_mat_v73(path: Path, parts: list[tuple[str, int | None]]) -> np.ndarray:
    """A v7.3 (HDF5) variable. A 1 x 1 struct is a group, so index 0 is the group itself; larger
    struct arrays are stored as object references, which this reader does not follow."""
    import h5py

    if any(index not in (None, 0) for _, index in parts):
        raise SourceError(
            f"{path}: a v7.3 .mat stores struct arrays of more than one element as references; only "
            "index [0] of a 1 x 1 struct is supported. Re-save the file with `save -v7`."
        )
    with h5py.File(path, "r") as fh:
        value = fh["/".join(name for name, _ in parts)][()]
    # MATLAB stores column-major: HDF5 sees the axes reversed
    return np.asarray(value).T


def _mat_part(part: str) -> tuple[str, int | None]:
    """``"Lidar[0]"`` -> ``("Lidar", 0)``; ``"Data"`` -> ``("Data", None)``."""
    if part.endswith("]") and "[" in part:
        name, index = part[:-1].split("[", 1)
        return name, int(index)
    return part, None


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
        labels = read_mat(path, spec.label_key(split))
    elif fmt == "npy":
        labels = read_npy(path)
        if labels.dtype.kind not in "biu":
            raise SourceError(f"{path}: {split} labels are {labels.dtype}; expected integer class ids.")
        labels = np.asarray(labels)
    else:
        raise SourceError(f"{path}: unsupported label format {fmt!r}.")
    if labels.shape != tuple(shape):
        raise SourceError(
            f"{path}: the {split} labels are {labels.shape}, the reference grid is {tuple(shape)}. Label "
            "arrays without georeferencing (.npy, .mat) must be H x W on the reference modality's grid."
        )
    lut = spec.label_lut()
    if lut is not None:  # raw codes -> class ids (0 = no label; 255 = an unlisted code, rejected below)
        if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 255:
            raise SourceError(
                f"{path}: the {split} labels hold {labels.dtype} values outside 0..255; labels.remap maps "
                "8-bit codes. Check the file, or drop labels.remap from the params."
            )
        labels = lut[labels]
    labels = _check_label_values(labels, spec, path, remapped=lut is not None)
    if "split" in spec.labels:  # one labelled map: the split is drawn from it (stages/datasets/splits.py)
        try:
            labels = apply_split(labels, spec, split)
        except SplitError as err:
            raise SourceError(f"{path}: {err}") from err
    return labels


def _check_label_values(labels: np.ndarray, spec: DatasetSpec, path: Path, remapped: bool) -> np.ndarray:
    unlabelled = 0 if remapped else spec.labels.get("unlabelled", 0)
    valid = {c.id for c in spec.classes} | {unlabelled}
    found = set(np.unique(labels).tolist())
    if not found <= valid:
        if remapped:
            raise SourceError(
                f"{path}: raw label codes that labels.remap does not list (now {sorted(found - valid)})."
            )
        raise SourceError(f"{path}: label values {sorted(found - valid)} are not declared classes.")
    out = labels.astype(np.int64)
    out[out == unlabelled] = 0
    return out.astype(np.uint8)
