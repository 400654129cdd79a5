"""Reading the patch store: splits, role binding, shuffled training batches and scene-served patches.

All patch tensors are ``(N, bands, P, P)`` float32, normalised with the training statistics.
Labels are class ids (1..K) on disk and class indices (0..K-1) in batches.

**Role binding.** A model takes two inputs, ``primary`` and ``auxiliary`` (e.g. HSI and LiDAR).
An experiment may use a subset of modalities: selected modalities are concatenated by role, and a
role with nothing selected is filled by the other role's modalities, so "the same network fed HSI
only" keeps its architecture and sees HSI through both inputs. Single-stream models opt out
(``fills_missing_role = False``): their empty role is a ``(N, 0, P, P)`` array.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from stages.data.windows import extract, read_with_halo, tile_index, tiles


class PatchStore:
    """A read-only view of ``patches.zarr`` (or ``augmented.zarr``, which has the same layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise FileNotFoundError(f"{self.path}: not a Zarr v3 store; run the patches stage first.")
        self.root = zarr.open_group(self.path, mode="r")
        self.attrs: dict[str, Any] = dict(self.root.attrs)

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def classes(self) -> list[dict[str, Any]]:
        return self.attrs["classes"]

    @property
    def class_ids(self) -> np.ndarray:
        return np.array([c["id"] for c in self.classes])

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def patch_size(self) -> int:
        return int(self.attrs["patch_size"])

    @property
    def modalities(self) -> dict[str, dict[str, Any]]:
        return self.attrs["modalities"]

    def splits(self) -> list[str]:
        return [name for name in ("train", "val", "test") if name in self.root]

    # -- arrays -----------------------------------------------------------------------------------
    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self.root[f"{split}/label"][:])

    def targets(self, split: str) -> np.ndarray:
        """Class indices 0..K-1 of ``split``."""
        return ids_to_index(self.labels(split), self.class_ids)

    def yx(self, split: str) -> np.ndarray:
        return np.asarray(self.root[f"{split}/yx"][:])

    def patches(self, split: str, modality: str) -> zarr.Array:
        return self.root[f"{split}/{modality}/data"]

    def scene(self, modality: str) -> zarr.Array:
        return self.root[f"scene/{modality}/data"]

    def valid(self) -> np.ndarray:
        return np.asarray(self.root["scene/valid"][:]).astype(bool)


def ids_to_index(ids: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    lookup = np.full(int(class_ids.max()) + 1, -1, dtype=np.int64)
    lookup[class_ids] = np.arange(len(class_ids))
    out = lookup[ids]
    if (out < 0).any():
        raise ValueError(f"labels {sorted(set(ids[out < 0].tolist()))} are not classes of this store")
    return out


@dataclass(frozen=True)
class ModalityBinding:
    """Which modalities feed the model's ``primary`` and ``auxiliary`` inputs (see module docstring)."""

    primary: tuple[str, ...]
    auxiliary: tuple[str, ...]

    @classmethod
    def build(
        cls, modalities: dict[str, dict[str, Any]], selected: Sequence[str], fill_missing: bool = True
    ) -> ModalityBinding:
        """``fill_missing=False`` (single-stream models) leaves an unselected auxiliary role empty."""
        unknown = [m for m in selected if m not in modalities]
        if unknown:
            raise ValueError(f"modalities {unknown} are not in the store ({', '.join(modalities)})")
        ordered = [m for m in modalities if m in selected]
        primary = [m for m in ordered if modalities[m]["role"] == "primary"]
        auxiliary = [m for m in ordered if modalities[m]["role"] == "auxiliary"]
        if not ordered:
            raise ValueError("an experiment needs at least one modality")
        if not fill_missing:
            return cls(tuple(primary or auxiliary), tuple(auxiliary) if primary else ())
        return cls(tuple(primary or auxiliary), tuple(auxiliary or primary))

    @property
    def used(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.primary + self.auxiliary))

    def channels(self, modalities: dict[str, dict[str, Any]]) -> tuple[int, int]:
        return (
            sum(modalities[m]["bands"] for m in self.primary),
            sum(modalities[m]["bands"] for m in self.auxiliary),
        )

    def bind(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenate per-modality ``(N, C, P, P)`` arrays into the two model inputs."""

        def cat(names: tuple[str, ...]) -> np.ndarray:
            if not names:  # an empty role: (N, 0, P, P)
                first = next(iter(arrays.values()))
                return np.zeros((first.shape[0], 0, *first.shape[2:]), dtype=first.dtype)
            parts = [arrays[n] for n in names]
            return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

        return cat(self.primary), cat(self.auxiliary)


Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # primary, auxiliary, class indices


def read_split(store: PatchStore, split: str, modalities: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """All patches of a materialised split, modalities concatenated on the band axis, and class indices.

    For small splits only (quality reports); training streams through :class:`TrainingBatches`.
    """
    patches = np.concatenate([np.asarray(store.patches(split, m)[:]) for m in modalities], axis=1)
    return patches, store.targets(split)


class TrainingBatches:
    """Shuffled mini-batches over materialised splits (train/val, optionally GAN patches).

    Sources whose patches fit in ``cache_bytes`` are read once and kept; larger ones stream chunk by
    chunk (the Zarr read unit) in a random chunk order through a shuffle buffer of ``buffer_chunks``
    chunks, so memory stays bounded by the buffer.
    """

    def __init__(
        self,
        sources: Sequence[tuple[PatchStore, str]],
        binding: ModalityBinding,
        class_ids: np.ndarray,
        batch_size: int,
        cache_bytes: int = 1 << 30,
        buffer_chunks: int = 8,
    ) -> None:
        self.sources = list(sources)
        self.binding = binding
        self.class_ids = class_ids
        self.batch_size = batch_size
        self.buffer_chunks = buffer_chunks
        self.lengths = [store.root[f"{split}/label"].shape[0] for store, split in self.sources]
        nbytes = sum(store.patches(split, m).nbytes for store, split in self.sources for m in binding.used)
        self._cache: list[tuple[dict[str, np.ndarray], np.ndarray]] | None = None
        if nbytes <= cache_bytes:
            self._cache = [self._read(store, split, slice(None)) for store, split in self.sources]

    def __len__(self) -> int:
        return sum(self.lengths)

    def _read(self, store: PatchStore, split: str, sl: slice) -> tuple[dict[str, np.ndarray], np.ndarray]:
        arrays = {m: np.asarray(store.patches(split, m)[sl]) for m in self.binding.used}
        targets = ids_to_index(np.asarray(store.root[f"{split}/label"][sl]), self.class_ids)
        return arrays, targets

    def _pieces(self, rng: np.random.Generator | None) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        if self._cache is not None:
            yield from self._cache
            return
        jobs = []
        for store, split in self.sources:
            step = store.patches(split, self.binding.used[0]).chunks[0]
            n = store.root[f"{split}/label"].shape[0]
            jobs += [(store, split, slice(i, min(i + step, n))) for i in range(0, n, step)]
        order = rng.permutation(len(jobs)) if rng is not None else range(len(jobs))
        for i in order:
            yield self._read(*jobs[i])

    def epoch(self, rng: np.random.Generator | None = None, drop_last: bool = False) -> Iterator[Batch]:
        """One pass in random order (``rng``) or in store order (``rng=None``, for evaluation)."""
        buffer: list[tuple[dict[str, np.ndarray], np.ndarray]] = []
        limit = len(self.sources) if self._cache is not None else self.buffer_chunks

        def drain(items: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> Iterator[Batch]:
            arrays = {m: np.concatenate([a[m] for a, _ in items]) for m in self.binding.used}
            targets = np.concatenate([t for _, t in items])
            idx = rng.permutation(len(targets)) if rng is not None else np.arange(len(targets))
            stop = len(idx) - (len(idx) % self.batch_size if drop_last else 0)
            for i in range(0, stop, self.batch_size):
                sel = idx[i : i + self.batch_size]
                primary, auxiliary = self.binding.bind({m: a[sel] for m, a in arrays.items()})
                yield primary, auxiliary, targets[sel]

        for piece in self._pieces(rng):
            buffer.append(piece)
            if len(buffer) >= limit:
                yield from drain(buffer)
                buffer = []
        if buffer:
            yield from drain(buffer)


def scene_batches(
    store: PatchStore,
    binding: ModalityBinding,
    batch_size: int,
    yx: np.ndarray | None = None,
    tile_size: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Patches served from the scene chunks: ``(yx, primary, auxiliary)`` batches.

    With ``yx`` (e.g. the test pixels) only those pixels are served; without it, every valid pixel
    of the scene (a full-scene map). Each scene tile is read once with its halo; memory is one
    padded tile per used modality plus one batch.
    """
    patch = store.patch_size
    tile_size = tile_size or int(store.attrs.get("scene_chunk", 128))
    scenes = {m: store.scene(m) for m in binding.used}
    bands = {m: scenes[m].shape[0] for m in binding.used}
    height, width = next(iter(scenes.values())).shape[1:]
    valid = store.valid()
    if yx is not None:
        tid = tile_index(yx, tile_size, width)
    for t_index, tile in enumerate(tiles(height, width, tile_size)):
        if yx is None:
            rows, cols = np.nonzero(valid[tile.row0 : tile.row1, tile.col0 : tile.col1])
            points = np.stack([rows + tile.row0, cols + tile.col0], axis=1)
        else:
            points = yx[tid == t_index]
        if len(points) == 0:
            continue
        padded = {
            m: read_with_halo(
                lambda r0, r1, c0, c1, m=m: np.asarray(scenes[m][:, r0:r1, c0:c1]),
                tile,
                patch // 2,
                height,
                width,
                bands[m],
            )
            for m in binding.used
        }
        for i in range(0, len(points), batch_size):
            pts = points[i : i + batch_size]
            arrays = {
                m: extract(padded[m], pts[:, 0] - tile.row0, pts[:, 1] - tile.col0, patch) for m in padded
            }
            primary, auxiliary = binding.bind(arrays)
            yield pts, primary, auxiliary
