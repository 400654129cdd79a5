"""ENVI ROI text: 1-based coordinates in the file, 0-based pixels in memory, strict checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.datasets.envi_roi import Roi, RoiFormatError, read_envi_roi, roi_label_image, write_envi_roi

SNIPPET = """; ENVI Output of ROIs (4.8) [Tue Mar 26 10:43:09 2013]
; Number of ROIs: 2
; File Dimension: 5 x 3
;
; ROI name: grass_healthy
; ROI rgb value: {0, 205, 0}
; ROI npts: 2
;
; ROI name: water
; ROI rgb value: {0, 255, 255}
; ROI npts: 1
;    ID     X     Y
       1     1     1
       2     5     3

       1     3     2
"""


def test_reads_one_based_points_as_zero_based_pixels(tmp_path: Path) -> None:
    path = tmp_path / "roi.txt"
    path.write_text(SNIPPET)
    roi = read_envi_roi(path)
    assert (roi.width, roi.height) == (5, 3)
    grass, water = roi.rois
    # X=1, Y=1 is the top-left pixel (0, 0); X=5, Y=3 the bottom-right (2, 4)
    assert grass.rows.tolist() == [0, 2] and grass.cols.tolist() == [0, 4]
    assert (water.rows.tolist(), water.cols.tolist()) == ([1], [2])
    assert water.color == (0, 255, 255)
    labels = roi_label_image(roi, {"grass_healthy": 1, "water": 6}, (3, 5), "roi.txt")
    expected = np.zeros((3, 5), np.uint8)
    expected[0, 0] = expected[2, 4] = 1
    expected[1, 2] = 6
    np.testing.assert_array_equal(labels, expected)


def test_round_trip_writes_one_based(tmp_path: Path) -> None:
    rois = [
        Roi("a", (1, 2, 3), np.array([0, 7]), np.array([0, 9])),
        Roi("b", (4, 5, 6), np.array([3]), np.array([4])),
    ]
    path = tmp_path / "out.txt"
    write_envi_roi(path, rois, width=10, height=8)
    assert "       1     1     1" in path.read_text().splitlines()
    back = read_envi_roi(path)
    for a, b in zip(rois, back.rois, strict=True):
        assert (a.name, a.color) == (b.name, b.color)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)


def test_a_point_outside_the_image_is_an_error(tmp_path: Path) -> None:
    # a loader that forgets the 1-based convention would accept X = 6 on a 5-wide image as column 5
    path = tmp_path / "roi.txt"
    path.write_text(SNIPPET.replace("     2     5     3", "     2     6     3"))
    with pytest.raises(RoiFormatError, match="X=6 Y=3 outside"):
        read_envi_roi(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("; ROI npts: 1", "; ROI npts: 4"), "declares 4 points but has 1"),
        (("; Number of ROIs: 2", "; Number of ROIs: 3"), "declares 3 ROIs"),
        (("; ENVI Output of ROIs", "; Something else"), "not an ENVI ROI ASCII export"),
    ],
)
def test_malformed_files_are_explained(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = tmp_path / "roi.txt"
    path.write_text(SNIPPET.replace(*change))
    with pytest.raises(RoiFormatError, match=message):
        read_envi_roi(path)


def test_label_image_checks_names_and_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "roi.txt"
    path.write_text(SNIPPET)
    roi = read_envi_roi(path)
    with pytest.raises(RoiFormatError, match="matches no class key"):
        roi_label_image(roi, {"grass_healthy": 1}, (3, 5), "roi.txt")
    with pytest.raises(RoiFormatError, match="5 x 3 image but the scene is 6 x 3"):
        roi_label_image(roi, {"grass_healthy": 1, "water": 6}, (3, 6), "roi.txt")
