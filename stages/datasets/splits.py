"""Train/test splits for sources that ship one labelled map instead of a split.

The params file says ``labels.split: {kind: per_class_counts, seed: N}`` and lists each class's
``train`` count. Every class draws exactly that many training pixels (scaled for a small twin, see
:meth:`stages.config.DatasetSpec.expected_counts`) uniformly at random from its labelled pixels;
every other labelled pixel is test. Each class has its own generator seeded by ``(seed, class id)``,
so a class's draw does not depend on the others, and the same map and seed give the same split.
"""

from __future__ import annotations

import numpy as np

from stages.config import DatasetSpec


class SplitError(ValueError):
    """The labelled map cannot give the declared split."""


def per_class_counts_mask(labels: np.ndarray, train_counts: dict[int, int], seed: int) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the training pixels drawn from the ``(H, W)`` map ``labels``.

    ``labels`` holds class ids with 0 = unlabelled; ``train_counts`` maps class id -> pixels to draw.
    """
    flat = labels.ravel()
    train = np.zeros(flat.shape, bool)
    for cid in sorted(train_counts):
        want = train_counts[cid]
        pixels = np.flatnonzero(flat == cid)  # row-major order: the draw is independent of dtype
        if len(pixels) < want:
            raise SplitError(f"class {cid}: {len(pixels)} labelled pixels, fewer than {want} to train on.")
        rng = np.random.default_rng([seed, cid])
        train[pixels[rng.permutation(len(pixels))[:want]]] = True
    return train.reshape(labels.shape)


def apply_split(labels: np.ndarray, spec: DatasetSpec, split: str) -> np.ndarray:
    """The ``split`` part of a whole labelled ``(H, W)`` uint8 map (0 = unlabelled) per ``labels.split``."""
    rule = spec.labels["split"]
    if rule["kind"] != "per_class_counts":
        raise SplitError(f"{spec.path}: unknown labels.split.kind {rule['kind']!r}.")
    counts = spec.expected_counts("train")
    if counts is None:
        raise SplitError(f"{spec.path}: labels.split per_class_counts needs a `train` count for every class.")
    train = per_class_counts_mask(labels, counts, rule["seed"])
    if split == "train":
        return np.where(train, labels, 0).astype(labels.dtype)
    return np.where(train, 0, labels).astype(labels.dtype)
