"""GAN augmentation: trained on the training split only; synthetic patches usable by the trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from stages.augment import augment, train_gan
from stages.config import load_model
from stages.data.store import ModalityBinding, PatchStore, TrainingBatches
from tests.conftest import SmallTwin


@pytest.fixture(scope="module")
def augmented(small_twin: SmallTwin, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("aug")
    augment(
        small_twin.store,
        out / "augmented.zarr",
        out / "augment" / "quality.json",
        samples_per_class=6,
        preset="quick",
        seed=0,
        threads=1,
        steps=20,
    )
    return out / "augmented.zarr", out / "augment" / "quality.json"


def test_synthetic_store_matches_the_training_layout(
    small_twin: SmallTwin, augmented: tuple[Path, Path]
) -> None:
    real, syn = PatchStore(small_twin.store), PatchStore(augmented[0])
    assert syn.attrs["synthetic"] is True and syn.classes == real.classes
    labels = syn.labels("train")
    assert np.bincount(labels, minlength=16)[1:].tolist() == [6] * 15
    for name, meta in real.modalities.items():
        data = syn.patches("train", name)
        assert data.shape == (90, meta["bands"], real.patch_size, real.patch_size)
        assert np.isfinite(np.asarray(data[:])).all()
    binding = ModalityBinding.build(real.modalities, ["hsi", "lidar"])
    both = TrainingBatches([(real, "train"), (syn, "train")], binding, real.class_ids, 64)
    assert len(both) == len(real.labels("train")) + 90
    assert sum(len(t) for _, _, t in both.epoch(np.random.default_rng(0))) == len(both)


def test_quality_report(augmented: tuple[Path, Path]) -> None:
    quality = json.loads(augmented[1].read_text())
    assert set(quality["spectral_angle_deg"]) == {"hsi"}  # a 1-band DSM has no spectral angle
    angles = quality["spectral_angle_deg"]["hsi"]
    assert len(angles) == 15 and all(0 <= a < 90 for a in angles.values())
    assert 0 <= quality["tstr_val_accuracy"] <= 1 and quality["trtr_val_accuracy"] > 0.5
    assert quality["trained_on"] == "train split only" and quality["generator_steps"] == 20
    assert (augmented[1].parent / "spectra.png").stat().st_size > 10_000


def test_the_gan_never_reads_validation_patches(small_twin: SmallTwin, tmp_path: Path) -> None:
    """Poison the validation patches: a GAN that touched them would learn NaN weights."""
    poisoned = tmp_path / "store.zarr"
    shutil.copytree(small_twin.store, poisoned)
    for name in ("hsi", "lidar"):
        array = zarr.open_array(poisoned / "val" / name / "data", mode="r+")
        array[:] = np.full(array.shape, np.nan, dtype=np.float32)
    spec = load_model("wgan_gp", "quick")
    gen = train_gan(
        PatchStore(poisoned), spec.architecture, {**spec.training, "epochs": 5}, 0, torch.device("cpu")
    )
    assert all(torch.isfinite(p).all() for p in gen.parameters())
