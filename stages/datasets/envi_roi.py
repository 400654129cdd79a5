"""ENVI ROI ASCII files (``; ENVI Output of ROIs``), as distributed with Houston 2013.

Layout::

    ; ENVI Output of ROIs (4.8) [<date>]
    ; Number of ROIs: 15
    ; File Dimension: 1905 x 349          <- width x height
    ;
    ; ROI name: grass_healthy
    ; ROI rgb value: {0, 205, 0}
    ; ROI npts: 1053
    ;                                     <- one header block per ROI
    ;    ID     X     Y                   <- column header (extra columns may follow)
           1   370   158                  <- one point block per ROI, in header order,
    ...                                      separated by blank lines; IDs restart at 1

X is the column and Y the row, both **1-based**. One popular loader forgets to subtract 1 and shifts
every label by a pixel; :func:`read_envi_roi` returns 0-based ``(row, col)`` and checks every point
against the file dimension.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class RoiFormatError(ValueError):
    """The file is not a well-formed ENVI ROI ASCII export."""


@dataclass(frozen=True)
class Roi:
    name: str
    color: tuple[int, int, int]
    rows: np.ndarray  # 0-based, int64
    cols: np.ndarray  # 0-based, int64


@dataclass(frozen=True)
class RoiFile:
    width: int
    height: int
    rois: list[Roi]


_NUM_ROIS = re.compile(r";\s*Number of ROIs:\s*(\d+)", re.I)
_DIMENSION = re.compile(r";\s*File Dimension:\s*(\d+)\s*x\s*(\d+)", re.I)
_NAME = re.compile(r";\s*ROI name:\s*(.*?)\s*$", re.I)
_RGB = re.compile(r";\s*ROI rgb value:\s*\{\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\}", re.I)
_NPTS = re.compile(r";\s*ROI npts:\s*(\d+)", re.I)


def read_envi_roi(path: str | Path) -> RoiFile:
    """Parse an ENVI ROI ASCII file into 0-based pixel coordinates per ROI."""
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as err:
        raise RoiFormatError(f"{path}: cannot read the ROI file ({err}).") from err
    if not text.lstrip().startswith("; ENVI Output of ROIs"):
        raise RoiFormatError(
            f"{path}: not an ENVI ROI ASCII export (first line should start with '; ENVI Output of ROIs'). "
            "Export the ROIs from ENVI as ASCII, or check that the right file was downloaded."
        )
    lines = text.splitlines()
    n_rois = width = height = None
    names: list[str] = []
    colors: list[tuple[int, int, int]] = []
    npts: list[int] = []
    blocks: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] | None = None
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith(";"):
            if m := _NUM_ROIS.match(stripped):
                n_rois = int(m.group(1))
            elif m := _DIMENSION.match(stripped):
                width, height = int(m.group(1)), int(m.group(2))
            elif m := _NAME.match(stripped):
                names.append(m.group(1))
            elif m := _RGB.match(stripped):
                colors.append((int(m.group(1)), int(m.group(2)), int(m.group(3))))
            elif m := _NPTS.match(stripped):
                npts.append(int(m.group(1)))
            continue
        if not stripped:
            current = None
            continue
        fields = stripped.split()
        try:
            x, y = int(fields[1]), int(fields[2])
        except (IndexError, ValueError) as err:
            raise RoiFormatError(
                f"{path}:{lineno}: expected 'ID X Y ...' integers, found {stripped[:60]!r}."
            ) from err
        if current is None:
            current = []
            blocks.append(current)
        current.append((y - 1, x - 1))  # 1-based (X=col, Y=row) -> 0-based (row, col)

    if n_rois is None or width is None or height is None:
        raise RoiFormatError(f"{path}: header lacks '; Number of ROIs:' or '; File Dimension: W x H'.")
    if not (len(names) == len(colors) == len(npts) == n_rois):
        raise RoiFormatError(
            f"{path}: header declares {n_rois} ROIs but lists {len(names)} names, {len(colors)} colours "
            f"and {len(npts)} point counts."
        )
    # ROIs with zero points have no block; align the non-empty ones in header order.
    expected_blocks = [i for i, n in enumerate(npts) if n > 0]
    if len(blocks) != len(expected_blocks):
        raise RoiFormatError(
            f"{path}: {len(expected_blocks)} ROIs have points but {len(blocks)} point blocks were found."
        )
    rois = []
    block_iter = iter(blocks)
    for i in range(n_rois):
        pts = next(block_iter) if npts[i] > 0 else []
        if len(pts) != npts[i]:
            raise RoiFormatError(f"{path}: ROI '{names[i]}' declares {npts[i]} points but has {len(pts)}.")
        arr = np.asarray(pts, dtype=np.int64).reshape(-1, 2)
        bad = (arr[:, 0] < 0) | (arr[:, 0] >= height) | (arr[:, 1] < 0) | (arr[:, 1] >= width)
        if bad.any():
            r, c = arr[np.argmax(bad)]
            raise RoiFormatError(
                f"{path}: ROI '{names[i]}' has point X={c + 1} Y={r + 1} outside the declared "
                f"{width} x {height} image (coordinates are 1-based)."
            )
        rois.append(Roi(names[i], colors[i], arr[:, 0].copy(), arr[:, 1].copy()))
    return RoiFile(width=width, height=height, rois=rois)


def write_envi_roi(
    path: str | Path, rois: list[Roi], width: int, height: int, date: str = "Tue Mar 26 10:43:09 2013"
) -> None:
    """Write ROIs in ENVI 4.8's ASCII layout. ``rows``/``cols`` are 0-based; the file is 1-based.

    The date is a parameter so that twins are byte-for-byte reproducible.
    """
    out = [
        f"; ENVI Output of ROIs (4.8) [{date}]",
        f"; Number of ROIs: {len(rois)}",
        f"; File Dimension: {width} x {height}",
        ";",
    ]
    for roi in rois:
        r, g, b = roi.color
        out += [
            f"; ROI name: {roi.name}",
            f"; ROI rgb value: {{{r}, {g}, {b}}}",
            f"; ROI npts: {len(roi.rows)}",
        ]
    out.append(";    ID     X     Y")
    first = True
    for roi in rois:
        if len(roi.rows) == 0:
            continue
        if not first:
            out.append("")
        first = False
        for i, (row, col) in enumerate(zip(roi.rows.tolist(), roi.cols.tolist(), strict=True), 1):
            out.append(f"{i:8d} {col + 1:5d} {row + 1:5d}")
    Path(path).write_text("\n".join(out) + "\n", encoding="latin-1")


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def roi_label_image(
    roi_file: RoiFile, class_ids: dict[str, int], shape: tuple[int, int], source: str
) -> np.ndarray:
    """Burn ROIs into a ``uint8`` label image (0 = unlabelled) of ``shape`` (rows, cols).

    ROI names are matched to class keys case- and punctuation-insensitively. ``source`` names the
    file in errors.
    """
    if (roi_file.height, roi_file.width) != tuple(shape):
        raise RoiFormatError(
            f"{source}: the ROI file is for a {roi_file.width} x {roi_file.height} image but the scene is "
            f"{shape[1]} x {shape[0]}. Is this ROI file from the same dataset?"
        )
    lookup = {_normalise(k): v for k, v in class_ids.items()}
    labels = np.zeros(shape, dtype=np.uint8)
    for roi in roi_file.rois:
        cid = lookup.get(_normalise(roi.name))
        if cid is None:
            raise RoiFormatError(
                f"{source}: ROI '{roi.name}' matches no class key in the params file "
                f"({', '.join(class_ids)}). Add it to `classes:` or fix the key."
            )
        clash = labels[roi.rows, roi.cols]
        if (clash != 0).any():
            raise RoiFormatError(
                f"{source}: ROI '{roi.name}' overlaps another ROI at {int((clash != 0).sum())} pixels."
            )
        labels[roi.rows, roi.cols] = cid
    return labels
