"""Training selects on validation and is reproducible; evaluation maps the scene and scores test pixels."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
import torch

from stages.config import Experiment
from stages.data.store import PatchStore, TrainingBatches
from stages.evaluate import evaluate
from stages.metrics import confusion_matrix, scores
from stages.tracking import init_experiment
from stages.train import load_checkpoint, predict, random_dihedral, train
from tests.conftest import SMALL, SmallTwin

CNN = Experiment("two_branch_cnn", "two_branch_cnn", ("hsi", "lidar"), "quick", None)


@pytest.fixture(scope="module")
def trained(small_twin: SmallTwin, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    init_experiment(uri, "test-exp", root=root)
    out = tmp_path_factory.mktemp("run")
    train(
        dataset=SMALL,
        experiment=CNN,
        seed=0,
        store_path=small_twin.store,
        out=out,
        data_summary=small_twin.summary,
        threads=1,
        tracking={"uri": uri, "experiment": "test-exp"},
    )
    evaluate(SMALL, small_twin.store, out, threads=1)
    return out, uri


def test_checkpoint_is_the_best_validation_epoch(small_twin: SmallTwin, trained: tuple[Path, str]) -> None:
    out, _ = trained
    info = json.loads((out / "train.json").read_text())
    best = max(info["history"], key=lambda h: (h["val_oa"], -h["epoch"]))
    assert info["best"]["epoch"] == best["epoch"] and info["best"]["oa"] == best["val_oa"]
    assert info["n_val"] > 0 and "validation" in info["selection"]
    # the saved weights reproduce the selected validation score
    model, binding, _ = load_checkpoint(out / "model.pt", torch.device("cpu"))
    assert (binding.primary, binding.auxiliary) == (("hsi",), ("lidar",))
    store = PatchStore(small_twin.store)
    y, p = predict(
        model,
        TrainingBatches([(store, "val")], binding, store.class_ids, 256).epoch(None),
        torch.device("cpu"),
    )
    assert scores(confusion_matrix(y, p, store.n_classes))["oa"] == pytest.approx(info["best"]["oa"])


def test_same_seed_gives_the_same_model(
    small_twin: SmallTwin, trained: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = trained
    again = tmp_path / "again"
    train(dataset=SMALL, experiment=CNN, seed=0, store_path=small_twin.store, out=again, threads=1)
    a = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(again / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (
        json.loads((out / "train.json").read_text())["history"]
        == json.loads((again / "train.json").read_text())["history"]
    )


def test_evaluation_outputs_and_scores(small_twin: SmallTwin, trained: tuple[Path, str]) -> None:
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    # measured on the small twin: ~0.79 OA for the fused quick CNN; chance is 1/15
    assert 0.65 < test["oa"] <= 1.0 and test["kappa"] > 0.6
    assert test["n"] == sum(json.loads(small_twin.summary.read_text())["counts"]["test"].values())
    cm = np.loadtxt(out / "confusion.csv", delimiter=",", skiprows=1, usecols=range(1, 16))
    assert cm.sum() == test["n"] and np.trace(cm) / cm.sum() == pytest.approx(test["oa"])
    with rasterio.open(out / "map.tif") as ds, rasterio.open(small_twin.coreg / "labels_test.tif") as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        assert ds.colormap(1)[1][:3] == (0, 205, 0)
        class_map, truth = ds.read(1), ref.read(1)
    assert class_map.min() >= 1  # every pixel of the twin is valid and classified
    labelled = truth > 0
    assert (class_map[labelled] == truth[labelled]).mean() == pytest.approx(test["oa"])


def test_mlflow_run_has_params_curves_scores_and_artifacts(trained: tuple[Path, str]) -> None:
    out, uri = trained
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["test-exp"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert (
        run.data.params["experiment"] == "two_branch_cnn" and run.data.params["training.batch_size"] == "64"
    )
    assert run.data.tags["model"] == "two_branch_cnn" and len(run.data.tags["data_sha256"]) == 64
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert run.data.metrics["test_oa"] == pytest.approx(metrics["oa"])
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "val_oa")
    assert len(history) == json.loads((out / "train.json").read_text())["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/map.png", "evaluation/confusion.csv", "evaluation/map.tif"} <= artifacts
    assert run.inputs.dataset_inputs[0].dataset.digest == run.data.tags["data_sha256"][:36]


def test_random_dihedral_applies_the_same_transform_to_both_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    p, a = random_dihedral(x, x[:, :1].clone(), gen)
    torch.testing.assert_close(p[:, :1], a)
    for i in range(2):
        candidates = [torch.rot90(x[i], k, (-2, -1)) for k in range(4)]
        candidates += [torch.rot90(x[i].flip(-1), k, (-2, -1)) for k in range(4)]
        assert any(torch.equal(p[i], c) for c in candidates)


def test_experiment_overrides_reach_the_trained_model(small_twin: SmallTwin, tmp_path: Path) -> None:
    exp = Experiment(
        "narrow",
        "two_branch_cnn",
        ("hsi", "lidar"),
        "quick",
        None,
        architecture={"hidden": 8},
        training={"epochs": 1},
    )
    info = train(dataset=SMALL, experiment=exp, seed=0, store_path=small_twin.store, out=tmp_path, threads=1)
    assert info["hyperparameters"]["architecture"]["hidden"] == 8 and info["epochs_run"] == 1
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["architecture"]["hidden"] == 8
    from stages.config import load_model
    from stages.models import build_model

    preset = load_model("two_branch_cnn", "quick").architecture
    wide = build_model(
        "two_branch_cnn", in_channels=(144, 1), n_classes=15, patch_size=11, architecture=preset
    )
    assert info["n_parameters"] < sum(p.numel() for p in wide.parameters())
