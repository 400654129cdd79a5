"""Params files: every file validates, twins inherit from their dataset, experiments resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stages.config import (
    ParamsError,
    list_datasets,
    load_dataset,
    load_model,
    load_pipeline,
    resolve_experiments,
)
from tests.conftest import copy_project, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_datasets())
def test_every_dataset_file_validates(name: str) -> None:
    spec = load_dataset(name)
    assert spec.name == name
    for m in spec.modalities.values():
        assert len(m.band_names) == m.bands


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "params" / "models").glob("*.yaml")))
@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_every_model_file_validates(name: str, preset: str) -> None:
    spec = load_model(name, preset)
    assert spec.training["epochs"] >= 1


def test_pipeline_defaults_are_filled() -> None:
    pipeline = load_pipeline()
    assert 0 < pipeline["split"]["val_fraction"] < 1
    assert pipeline["patches"]["shard_samples"] % pipeline["patches"]["chunk_samples"] == 0


def test_twin_inherits_the_real_datasets_facts() -> None:
    real, twin = load_dataset("houston2013"), load_dataset("houston2013-twin")
    assert twin.class_names == real.class_names
    assert twin.modalities["hsi"].wavelengths_nm == real.modalities["hsi"].wavelengths_nm
    assert twin.modalities["hsi"].file == real.modalities["hsi"].file
    assert twin.is_twin and not real.is_twin
    # the full twin keeps the official split counts; 2832 / 12197 is the standard GRSS split
    assert sum(twin.expected_counts("train").values()) == 2832
    assert sum(twin.expected_counts("test").values()) == 12197


def test_small_twin_scales_counts_with_floors() -> None:
    real, small = load_dataset("houston2013"), load_dataset("houston2013-twin-small")
    scale, floor = small.twin["count_scale"], small.twin["min_test"]
    for c in real.classes:
        assert small.expected_counts("test")[c.id] == max(floor, int(c.test * scale + 0.5))
    assert (small.height, small.width) == (128, 512)


def test_experiment_names_derive_from_roles() -> None:
    pipeline = {
        "preset": "quick",
        "experiments": [
            {"model": "fusatnet"},
            {"model": "fusatnet", "modalities": ["primary"]},
            {"model": "fusatnet", "modalities": ["auxiliary"], "augmented": True},
            {"model": "two_branch_cnn", "preset": "paper"},
        ],
    }
    names = [e.name for e in resolve_experiments(pipeline, load_dataset("houston2013"))]
    assert names == ["fusatnet", "fusatnet-hsi", "fusatnet-lidar-gan", "two_branch_cnn-paper"]


def test_duplicate_experiment_names_are_rejected() -> None:
    pipeline = {
        "preset": "quick",
        "experiments": [{"model": "fusatnet"}, {"model": "fusatnet", "modalities": ["all"]}],
    }
    with pytest.raises(ParamsError, match="neither a role"):
        resolve_experiments(pipeline, load_dataset("houston2013"))
    pipeline["experiments"][1] = {"model": "fusatnet", "modalities": ["hsi", "lidar"]}
    with pytest.raises(ParamsError, match="duplicate names"):
        resolve_experiments(pipeline, load_dataset("houston2013"))


def test_schema_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "params" / "datasets" / "houston2013.yaml").read_text())
    data["name"] = "broken"
    data["classes"][0]["color"] = [0, 300, 0]
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "broken.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ParamsError) as err:
        load_dataset("broken", root=tmp_path)
    assert "broken.yaml" in str(err.value) and "classes/0/color/1" in str(err.value)


def test_missing_file_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="no such params file"):
        load_dataset("nope", root=tmp_path)


def test_experiment_overrides_apply_to_the_preset_and_need_a_name() -> None:
    from stages.config import model_for

    pipeline = {
        "preset": "quick",
        "experiments": [
            {
                "model": "fusatnet",
                "name": "fusatnet-narrow",
                "architecture": {"width": 8},
                "training": {"optimizer": {"lr": 0.01}},
                "augmented": True,
            },
        ],
    }
    (exp,) = resolve_experiments(pipeline, load_dataset("houston2013"))
    spec = model_for(exp)
    base = load_model("fusatnet", "quick")
    assert spec.architecture == {**base.architecture, "width": 8}
    assert spec.training["optimizer"] == {**base.training["optimizer"], "lr": 0.01}
    assert spec.training["use_augmented"] is True and spec.training["epochs"] == base.training["epochs"]
    del pipeline["experiments"][0]["name"]
    with pytest.raises(ParamsError, match="give it a `name:`"):
        resolve_experiments(pipeline, load_dataset("houston2013"))


def test_experiments_follow_the_dataset_task_and_their_dataset_list() -> None:
    pipeline = {
        "preset": "quick",
        "experiments": [
            {"model": "fusatnet"},
            {"model": "unet"},
            {"model": "unet", "modalities": ["auxiliary"], "datasets": ["dfc20"]},
        ],
    }
    scene = [e.name for e in resolve_experiments(pipeline, load_dataset("houston2013"))]
    tiles = [e.name for e in resolve_experiments(pipeline, load_dataset("dfc20"))]
    twin = [e.name for e in resolve_experiments(pipeline, load_dataset("dfc20-twin"))]
    assert scene == ["fusatnet", "unet"]  # the dfc20-only experiment is left out
    assert tiles == twin == ["unet", "unet-s1"]  # FusAtNet classifies patch centres: not on tiles


REAL_DATASETS = [
    name
    for name in list_datasets()
    if load_dataset(name).source["kind"] in ("http", "manual")  # twins run end to end elsewhere
]


def test_snakemake_plans_every_real_dataset_end_to_end(tmp_path: Path) -> None:
    """`snakemake -n results/<ds>/all` plans the whole DAG for every real dataset, from the download."""
    assert {"houston2013", "houston2018", "berlin", "augsburg", "dfc20", "hunan", "trento", "muufl"} <= set(
        REAL_DATASETS
    )
    root = copy_project(tmp_path / "project")
    targets = [f"results/{name}/all" for name in REAL_DATASETS]
    proc = run(["snakemake", "-n", "--cores", "2", *targets], cwd=root)
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", proc.stdout, flags=re.MULTILINE))
    for stage in ("download", "coregister", "patches", "augment", "index_runs", "report"):
        assert int(stats[stage]) == len(REAL_DATASETS), (stage, stats)
    assert int(stats["train"]) == int(stats["evaluate"]) >= 2 * len(REAL_DATASETS)
    for name in REAL_DATASETS:
        assert f"results/{name}/coreg" in proc.stdout and f"data/raw/{name}" in proc.stdout
