"""The segmentation data path: windows that cover the labelled pixels, and exact sliding-window maps."""

from __future__ import annotations

import numpy as np
import torch

from stages.data.segmentation import SceneWindows, dihedral, mosaic, predict_scene
from stages.data.store import ModalityBinding, PatchStore
from stages.models.base import IGNORE_INDEX
from tests.conftest import SmallTwin


class ArgmaxOfBands(torch.nn.Module):
    """A fake segmenter whose per-pixel answer is known: the argmax over the first K input bands."""

    stride = 8

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, primary: torch.Tensor, auxiliary: torch.Tensor) -> torch.Tensor:
        assert primary.shape[-1] % self.stride == 0
        return primary[:, : self.k]


def test_sliding_windows_reproduce_a_per_pixel_model_exactly(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["hsi", "lidar"])
    k = store.n_classes
    out = predict_scene(ArgmaxOfBands(k), store, binding, torch.device("cpu"), tile=24, batch=3)
    scene = np.asarray(store.scene("hsi")[:k])
    expected = store.class_ids[scene.argmax(axis=0)]
    np.testing.assert_array_equal(out, expected)


def test_scene_windows_cover_every_labelled_pixel_with_its_label(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["hsi", "lidar"])
    windows = SceneWindows(store, "train", binding, window=32, batch_size=4)
    rng = np.random.default_rng(0)
    origins = windows.origins(np.random.default_rng(0))
    seen = {}
    scene = np.asarray(store.scene("hsi")[:])
    for r0, c0 in origins:
        arrays, target = windows.read(r0, c0)
        rows, cols = np.nonzero(target != IGNORE_INDEX)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            seen[(r + r0, c + c0)] = int(target[r, c])
            np.testing.assert_array_equal(arrays["hsi"][:, r, c], scene[:, r + r0, c + c0])
    truth = dict(zip(map(tuple, store.yx("train").tolist()), store.targets("train").tolist(), strict=True))
    assert seen == truth  # every training pixel, each with its class; nothing else labelled
    batches = list(windows.epoch(rng))
    assert sum(len(t) for _, _, t in batches) == len(origins)
    p, a, t = batches[0]
    assert p.shape[1:] == (144, 32, 32) and a.shape[1:] == (1, 32, 32) and t.dtype == np.int64


def test_val_windows_hold_only_validation_pixels(small_twin: SmallTwin) -> None:
    store = PatchStore(small_twin.store)
    binding = ModalityBinding.build(store.modalities, ["lidar"])
    windows = SceneWindows(store, "val", binding, window=16, batch_size=8)
    labelled = sum(int((t != IGNORE_INDEX).sum()) for _, _, t in windows.epoch(np.random.default_rng(1)))
    # windows overlap, so a pixel may be counted twice, but never fewer than the val pixels
    assert labelled >= len(store.yx("val"))
    assert not set(map(tuple, store.yx("train").tolist())) & {
        (r0 + r, c0 + c)
        for r0, c0 in windows.origins(np.random.default_rng(1))
        for r, c in zip(*np.nonzero(windows.read(r0, c0)[1] != IGNORE_INDEX), strict=True)
    }


def test_dihedral_codes_are_the_eight_symmetries() -> None:
    x = np.arange(9).reshape(3, 3)
    images = {dihedral(x, code).tobytes() for code in range(8)}
    assert len(images) == 8
    np.testing.assert_array_equal(dihedral(x, 1), np.rot90(x))


def test_mosaic_lays_tiles_on_a_grid() -> None:
    tiles = [np.full((2, 2), i + 1, np.uint8) for i in range(5)]
    m = mosaic(tiles, columns=2, gap=1)
    assert m.shape == (3 * 2 + 2, 2 * 2 + 1)
    assert m[0, 0] == 1 and m[0, 3] == 2 and m[3, 0] == 3 and m[6, 0] == 5 and m[2, 0] == 0
