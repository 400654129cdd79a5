"""OA, AA, kappa and per-class scores agree with scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    precision_score,
)

from stages.metrics import confusion_matrix, scores


def test_scores_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    p = np.where(rng.random(500) < 0.7, y, rng.integers(0, 5, 500))
    s = scores(confusion_matrix(y, p, 5))
    assert s["oa"] == pytest.approx((y == p).mean())
    assert s["aa"] == pytest.approx(balanced_accuracy_score(y, p))
    assert s["kappa"] == pytest.approx(cohen_kappa_score(y, p))
    np.testing.assert_allclose(s["per_class_f1"], f1_score(y, p, average=None))
    np.testing.assert_allclose(s["per_class_precision"], precision_score(y, p, average=None))
    np.testing.assert_allclose(s["per_class_iou"], jaccard_score(y, p, average=None))
    assert s["miou"] == pytest.approx(jaccard_score(y, p, average="macro"))
    assert s["support"] == np.bincount(y, minlength=5).tolist() and s["n"] == 500


def test_hand_computed_case() -> None:
    cm = np.array([[8, 2], [1, 9]])
    s = scores(cm)
    assert s["oa"] == pytest.approx(17 / 20)
    assert s["aa"] == pytest.approx((0.8 + 0.9) / 2)
    pe = (10 * 9 + 10 * 11) / 400
    assert s["kappa"] == pytest.approx((0.85 - pe) / (1 - pe))


def test_absent_class_is_left_out_of_aa() -> None:
    s = scores(confusion_matrix(np.array([0, 0, 1]), np.array([0, 2, 1]), 3))
    assert np.isnan(s["per_class_accuracy"][2])
    assert s["aa"] == pytest.approx((0.5 + 1.0) / 2)


def test_bad_indices_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"0\.\.2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
