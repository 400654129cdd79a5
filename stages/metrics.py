"""Classification scores from a confusion matrix: OA, AA, mIoU, Cohen's kappa, per-class accuracy, IoU and F1.

Conventions: ``cm[i, j]`` counts samples of true class ``i`` predicted as ``j``. Per-class accuracy
is the producer's accuracy (recall, ``cm[i, i] / row i``), which is what the remote-sensing
literature averages into AA; the upstream FusAtNet code calls the same quantity "usr_acc".
IoU is ``cm[i, i] / (row i + column i - cm[i, i])``. A class with no samples gets NaN accuracy and IoU
and is left out of AA and mIoU.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts; inputs are class indices ``0..K-1``."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes):
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def scores(cm: np.ndarray) -> dict[str, Any]:
    """OA, AA, kappa and per-class producer's accuracy, user's accuracy (precision) and F1."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        raise ValueError("empty confusion matrix")
    diag = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, diag / support, np.nan)
        precision = np.where(predicted > 0, diag / predicted, np.nan)
        f1 = np.where((support > 0) & (predicted + support > 0), 2 * diag / (support + predicted), np.nan)
        union = support + predicted - diag
        iou = np.where(support > 0, diag / np.where(union > 0, union, 1), np.nan)
    oa = diag.sum() / n
    expected = (support * predicted).sum() / n**2
    kappa = (oa - expected) / (1 - expected) if expected < 1 else 1.0
    return {
        "oa": float(oa),
        "aa": float(np.nanmean(recall)),
        "miou": float(np.nanmean(iou)),
        "kappa": float(kappa),
        "per_class_iou": iou.tolist(),
        "per_class_accuracy": recall.tolist(),
        "per_class_precision": precision.tolist(),
        "per_class_f1": f1.tolist(),
        "support": support.astype(int).tolist(),
        "n": int(n),
    }
