"""Batches for segmentation models, from tile stores (DFC 2020) and from scene stores (Houston 2013).

Every batch is ``(primary (B, C1, T, T), auxiliary (B, C2, T, T), target (B, T, T))`` with class
indices and :data:`~stages.models.base.IGNORE_INDEX` where a pixel carries no label of the split.

* Tile stores: random ``T x T`` crops of the split's stored tiles, one per tile per epoch (``T`` is
  the training tile size, usually smaller than the stored tiles; over a run each tile is seen many
  times at different offsets, which keeps an epoch affordable on a CPU).
* Scene stores: windows that together cover every labelled pixel of the split (the sparse training
  or validation pixels); every other pixel is ignored, so a segmentation model learns from exactly
  the pixels a patch classifier learns from. Windows may reach past the scene edge (zero-padded, ignored).
* Prediction: :func:`predict_scene` slides overlapping windows over the whole scene and keeps each
  window's centre, so every pixel is predicted with context; :func:`predict_tiles` predicts whole tiles.

With ``augment`` each sample gets one of the 8 rotations/flips, the same for inputs and labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from stages.data.store import ModalityBinding, PatchStore, ids_to_index
from stages.models.base import IGNORE_INDEX

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
MOSAIC_TILES = 16  # test tiles shown in a tile dataset's map mosaic


def dihedral(x: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 rotations/flips (``code`` 0..7) of the last two axes."""
    if code >= 4:
        x = x[..., ::-1]
    return np.rot90(x, code % 4, axes=(-2, -1))


def _labels_to_targets(labels: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """uint8 class ids (0 = none) -> int64 indices with IGNORE_INDEX for 0 and anything unknown."""
    lookup = np.full(256, IGNORE_INDEX, dtype=np.int64)
    lookup[class_ids] = np.arange(len(class_ids))
    return lookup[labels]


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches over ``n`` items; a trailing batch of one joins the batch before it.

    BatchNorm cannot normalise one sample whose map is 1 x 1 (the image-pool branch of an ASPP on a
    small window), and training dies on it: no sample is dropped, the last batch is one larger.
    """
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n][: len(starts)], strict=True)]


class TileCrops:
    """Random crops from tile-store splits (e.g. ``[(store, "train"), (gan_store, "train")]``)."""

    def __init__(
        self,
        sources: Sequence[tuple[PatchStore, str]],
        binding: ModalityBinding,
        class_ids: np.ndarray,
        crop: int,
        batch_size: int,
        augment: bool = False,
    ) -> None:
        self.binding, self.class_ids, self.crop = binding, class_ids, crop
        self.batch_size, self.augment = batch_size, augment
        # tile stores are small by construction (a few hundred MB for the twins); read once
        self.arrays = [
            {m: np.asarray(store.patches(split, m)[:]) for m in binding.used} for store, split in sources
        ]
        self.labels = [
            _labels_to_targets(np.asarray(store.root[f"{split}/label"][:]), class_ids)
            for store, split in sources
        ]
        size = self.labels[0].shape[-1]
        if crop > size:
            raise ValueError(f"crop {crop} exceeds the stored tiles ({size} px)")

    def __len__(self) -> int:
        return sum(len(lab) for lab in self.labels)

    def epoch(self, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        rng = rng or np.random.default_rng(0)
        jobs = [(s, t) for s, lab in enumerate(self.labels) for t in range(len(lab))]
        order = rng.permutation(len(jobs))
        size = self.labels[0].shape[-1]
        for batch in batch_slices(len(order), self.batch_size):
            prim, aux, tgt = [], [], []
            for j in order[batch]:
                s, t = jobs[j]
                r, c = rng.integers(0, size - self.crop + 1, size=2)
                win = (slice(r, r + self.crop), slice(c, c + self.crop))
                code = int(rng.integers(0, 8)) if self.augment else 0
                arrays = {m: dihedral(a[t][(slice(None), *win)], code) for m, a in self.arrays[s].items()}
                p, a = self.binding.bind({m: x[None] for m, x in arrays.items()})
                prim.append(p[0])
                aux.append(a[0])
                tgt.append(dihedral(self.labels[s][t][win], code))
            yield (
                np.ascontiguousarray(np.stack(prim)),
                np.ascontiguousarray(np.stack(aux)),
                np.ascontiguousarray(np.stack(tgt)),
            )


class WindowReader:
    """``window x window`` blocks of a scene store's normalised arrays, zero-padded beyond the scene."""

    def __init__(self, store: PatchStore, binding: ModalityBinding, window: int) -> None:
        # the normalised scene is cached once: windows overlap chunks, re-decoding them would dominate
        self.scenes = {m: np.asarray(store.scene(m)[:]) for m in binding.used}
        self.height, self.width = store.valid().shape
        self.window = window

    def slices(self, r0: int, c0: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(source, destination) slices of the part of the window inside the scene."""
        w = self.window
        rr0, rr1, cc0, cc1 = max(r0, 0), min(r0 + w, self.height), max(c0, 0), min(c0 + w, self.width)
        return (slice(rr0, rr1), slice(cc0, cc1)), (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))

    def read(self, r0: int, c0: int) -> dict[str, np.ndarray]:
        src, dst = self.slices(r0, c0)
        out = {}
        for m, scene in self.scenes.items():
            block = np.zeros((scene.shape[0], self.window, self.window), np.float32)
            block[(slice(None), *dst)] = scene[(slice(None), *src)]
            out[m] = block
        return out


class SceneWindows:
    """Windows over a scene store that cover the labelled pixels of one split (see module docstring)."""

    def __init__(
        self,
        store: PatchStore,
        split: str,
        binding: ModalityBinding,
        window: int,
        batch_size: int,
        augment: bool = False,
    ) -> None:
        self.reader = WindowReader(store, binding, window)
        self.binding, self.window = binding, window
        self.batch_size, self.augment = batch_size, augment
        self.yx = store.yx(split)
        self.targets = ids_to_index(store.labels(split), store.class_ids)
        self.label_image = np.full((self.reader.height, self.reader.width), IGNORE_INDEX, dtype=np.int64)
        self.label_image[self.yx[:, 0], self.yx[:, 1]] = self.targets

    def origins(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        """Window origins (top-left, may be negative) that together cover every labelled pixel."""
        covered = np.zeros(len(self.yx), bool)
        out = []
        for i in rng.permutation(len(self.yx)):
            if covered[i]:
                continue
            r, c = self.yx[i]
            r0, c0 = int(r - rng.integers(0, self.window)), int(c - rng.integers(0, self.window))
            out.append((r0, c0))
            covered |= (
                (self.yx[:, 0] >= r0)
                & (self.yx[:, 0] < r0 + self.window)
                & (self.yx[:, 1] >= c0)
                & (self.yx[:, 1] < c0 + self.window)
            )
        return out

    def __len__(self) -> int:
        return len(self.yx)

    def read(self, r0: int, c0: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Inputs and targets of one window; pixels beyond the scene are zero and ignored."""
        src, dst = self.reader.slices(r0, c0)
        target = np.full((self.window, self.window), IGNORE_INDEX, dtype=np.int64)
        target[dst] = self.label_image[src]
        return self.reader.read(r0, c0), target

    def epoch(self, rng: np.random.Generator | None = None) -> Iterator[Batch]:
        rng = rng or np.random.default_rng(0)
        origins = self.origins(rng)
        for batch in batch_slices(len(origins), self.batch_size):
            prim, aux, tgt = [], [], []
            for r0, c0 in origins[batch]:
                arrays, target = self.read(r0, c0)
                code = int(rng.integers(0, 8)) if self.augment else 0
                p, a = self.binding.bind({m: dihedral(x, code)[None] for m, x in arrays.items()})
                prim.append(p[0])
                aux.append(a[0])
                tgt.append(dihedral(target, code))
            yield (
                np.ascontiguousarray(np.stack(prim)),
                np.ascontiguousarray(np.stack(aux)),
                np.ascontiguousarray(np.stack(tgt)),
            )


def _align(n: int, stride: int) -> int:
    return -(-n // stride) * stride


@torch.inference_mode()
def predict_scene(
    model: torch.nn.Module,
    store: PatchStore,
    binding: ModalityBinding,
    device: torch.device,
    tile: int,
    batch: int = 4,
    progress: Any = None,
) -> np.ndarray:
    """Class ids (1..K, 0 where the scene has no data) for every pixel of a scene store.

    Windows of ``2 * tile`` (a multiple of the model's stride) overlap by a margin of ``tile // 4`` on
    each side; each window's centre is kept, so every pixel sees context from all directions.
    """
    model.eval()
    stride = int(getattr(model, "stride", 1))
    window = _align(max(2 * tile, 64), stride)
    margin = tile // 4
    step = window - 2 * margin
    reader = WindowReader(store, binding, window)
    valid = store.valid()
    class_ids = store.class_ids.astype(np.uint8)
    out = np.zeros(valid.shape, np.uint8)
    origins = [
        (r - margin, c - margin) for r in range(0, reader.height, step) for c in range(0, reader.width, step)
    ]
    for i in range(0, len(origins), batch):
        group = origins[i : i + batch]
        arrays = [reader.read(r0, c0) for r0, c0 in group]
        p, a = binding.bind({m: np.stack([x[m] for x in arrays]) for m in binding.used})
        pred = model(torch.from_numpy(p).to(device), torch.from_numpy(a).to(device)).argmax(1).cpu().numpy()
        for (r0, c0), tile_pred in zip(group, pred, strict=True):
            r1, c1 = min(r0 + margin + step, reader.height), min(c0 + margin + step, reader.width)
            out[r0 + margin : r1, c0 + margin : c1] = class_ids[tile_pred[margin : r1 - r0, margin : c1 - c0]]
        if progress is not None:
            progress.update(len(group))
    out[~valid] = 0
    return out


@torch.inference_mode()
def predict_tiles(
    model: torch.nn.Module,
    store: PatchStore,
    split: str,
    binding: ModalityBinding,
    device: torch.device,
    batch: int = 2,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(tile index, predicted class ids (T, T), stored label ids (T, T))`` for each tile of ``split``."""
    model.eval()
    class_ids = store.class_ids.astype(np.uint8)
    labels = store.root[f"{split}/label"]
    n = labels.shape[0]
    for i in range(0, n, batch):
        arrays = {m: np.asarray(store.patches(split, m)[i : i + batch]) for m in binding.used}
        p, a = binding.bind(arrays)
        pred = model(torch.from_numpy(p).to(device), torch.from_numpy(a).to(device)).argmax(1).cpu().numpy()
        truth = np.asarray(labels[i : i + batch])
        for k in range(len(pred)):
            yield i + k, class_ids[pred[k]], truth[k]


def mosaic(tiles: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """Tiles laid out on a grid, ``gap`` pixels of 0 (no class) between them."""
    if not tiles:
        return np.zeros((1, 1), np.uint8)
    size = tiles[0].shape[-1]
    rows = -(-len(tiles) // columns)
    cols = min(columns, len(tiles))
    out = np.zeros((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap), tiles[0].dtype)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        out[r * (size + gap) : r * (size + gap) + size, c * (size + gap) : c * (size + gap) + size] = tile
    return out
