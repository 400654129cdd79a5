"""Shared fixtures: a small twin taken through the real stages once per session, project copies, and
the whole pipeline run locally once per session (the end-to-end tests and the SLURM test's reference).

Every fixture runs the real code paths (twin generator, loopback HTTP download, rasterio
co-registration, Zarr store); nothing is mocked. Torch is pinned to one thread in the test process:
two threads stall each other on a busy 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL = "houston2013-twin-small"
SMALL_TILES = "dfc20-twin-small"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: threads gain them nothing, and OpenMP barriers
    stall badly on a busy 2-core machine. Restores the count (a stage run in-process may change it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_one_step_is_reproducible(make_model, batch, make_optimizer) -> None:
    """Two runs of (seed, build ``make_model()``, one ``training_loss`` step with ``make_optimizer``)
    leave identical weights: every random draw (init, dropout, noise, drop-path) comes from the seed."""

    def one_step() -> dict[str, torch.Tensor]:
        torch.manual_seed(123)
        model = make_model()
        opt = make_optimizer(model.parameters())
        loss, _ = model.training_loss(*batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    a, b = one_step(), one_step()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@dataclass(frozen=True)
class SmallTwin:
    twin: Path
    raw: Path
    coreg: Path
    store: Path
    summary: Path


@pytest.fixture(scope="session")
def small_twin(tmp_path_factory: pytest.TempPathFactory) -> SmallTwin:
    """The small Houston twin: generated, served and downloaded, co-registered, and in a patch store."""
    from stages.config import load_dataset
    from stages.coregister import coregister
    from stages.download import download_dataset
    from stages.io.atomic import write_json
    from stages.patches import build_patch_store
    from stages.twin import generate_twin

    base = tmp_path_factory.mktemp("small")
    spec = load_dataset(SMALL)
    paths = SmallTwin(
        base / "twin", base / "raw", base / "coreg", base / "patches.zarr", base / "patches.json"
    )
    generate_twin(spec, paths.twin)
    download_dataset(spec, paths.raw, twin_dir=paths.twin)
    coregister(spec, paths.raw, paths.coreg, threads=1)
    summary = build_patch_store(
        spec,
        paths.coreg,
        paths.store,
        val_fraction=0.2,
        split_seed=0,
        chunk_samples=64,
        shard_samples=128,
        threads=1,
    )
    write_json(paths.summary, summary)
    return paths


@dataclass(frozen=True)
class SmallTiles:
    raw: Path
    coreg: Path
    store: Path


@pytest.fixture(scope="session")
def small_tiles(tmp_path_factory: pytest.TempPathFactory) -> SmallTiles:
    """The small DFC 2020 twin (16 tiles): generated, downloaded over loopback, indexed, in a tile store."""
    from stages.config import load_dataset
    from stages.coregister import coregister
    from stages.download import download_dataset
    from stages.patches import build_patch_store
    from stages.twin import generate_twin

    base = tmp_path_factory.mktemp("tiles")
    spec = load_dataset(SMALL_TILES)
    paths = SmallTiles(base / "raw", base / "coreg", base / "patches.zarr")
    generate_twin(spec, base / "twin")
    download_dataset(spec, paths.raw, twin_dir=base / "twin")
    coregister(spec, paths.raw, paths.coreg)
    build_patch_store(
        spec, paths.coreg, paths.store, val_fraction=0.2, split_seed=0, raw=paths.raw, threads=1
    )
    return paths


def project_files() -> list[str]:
    """The project as a clean clone would have it: tracked files plus untracked, not-ignored ones."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def copy_project(dest: Path) -> Path:
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for Snakemake/DVC subprocesses: this interpreter's bin first (rules call ``python``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SNAKEMAKE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, timeout: float = 1200, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n"
            f"{proc.stderr[-6000:]}"
        )
    return proc


def shrink_to_test_size(root: Path, experiments: list[dict], gan_steps: int, dataset: str = SMALL) -> None:
    """Shrink the copied project's configuration to test size (same code, smaller workload)."""
    pipeline_path = root / "params" / "pipeline.yaml"
    pipeline = yaml.safe_load(pipeline_path.read_text())
    pipeline.update(datasets=[dataset], seeds=[0], experiments=experiments)
    pipeline["augment"]["samples_per_class"] = 20
    pipeline_path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    gan_path = root / "params" / "models" / "wgan_gp.yaml"
    gan = yaml.safe_load(gan_path.read_text())
    gan["presets"]["quick"]["training"]["epochs"] = gan_steps
    gan_path.write_text(yaml.safe_dump(gan, sort_keys=False))


# The end-to-end configuration: one seed, five experiments (four patch classifiers and a segmentation
# model cut to three epochs, which trains on scene windows), a short GAN run.
E2E_EXPERIMENTS = [
    {"model": "two_branch_cnn"},
    {"model": "two_branch_cnn", "modalities": ["primary"]},
    {"model": "two_branch_cnn", "modalities": ["auxiliary"]},
    {"model": "fusatnet"},
    {"model": "ammfusenet", "name": "ammfusenet", "training": {"epochs": 3}},
]
E2E_RUNS = ["two_branch_cnn", "two_branch_cnn-hsi", "two_branch_cnn-lidar", "fusatnet", "ammfusenet"]
E2E_GAN_STEPS = 40


@dataclass(frozen=True)
class BuiltTwin:
    """A scene twin generated into ``base/twin``, downloaded over loopback HTTP into ``base/raw`` and
    co-registered into ``base/coreg``; ``store`` is where a test may build its patch store."""

    spec: Any
    base: Path

    @property
    def twin(self) -> Path:
        return self.base / "twin"

    @property
    def raw(self) -> Path:
        return self.base / "raw"

    @property
    def coreg(self) -> Path:
        return self.base / "coreg"

    @property
    def store(self) -> Path:
        return self.base / "patches.zarr"


def build_scene_twin(name: str, base: Path) -> BuiltTwin:
    from stages.config import load_dataset
    from stages.coregister import coregister
    from stages.download import download_dataset
    from stages.twin import generate_twin

    out = BuiltTwin(load_dataset(name), base)
    generate_twin(out.spec, out.twin)
    download_dataset(out.spec, out.raw, twin_dir=out.twin)
    coregister(out.spec, out.raw, out.coreg, threads=1)
    return out


# A dataset twin's own end-to-end run: the two-branch CNN alone, 20 epochs (a few seconds on ~100-300
# training patches), a 2-step GAN.
TWIN_E2E_EXPERIMENTS = [{"model": "two_branch_cnn", "name": "two_branch_cnn", "training": {"epochs": 20}}]


def run_twin_to_all(tmp_path: Path, name: str) -> Path:
    """Snakemake on a copy of the project: dataset ``name`` to ``results/<name>/all`` with
    :data:`TWIN_E2E_EXPERIMENTS`; returns ``results/<name>``."""
    root = copy_project(tmp_path / "project")
    shrink_to_test_size(root, TWIN_E2E_EXPERIMENTS, gan_steps=2, dataset=name)
    run(["snakemake", "--cores", "2", f"results/{name}/all"], cwd=root, timeout=900)
    return root / "results" / name


@pytest.fixture(scope="session")
def local_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy with the small twin taken through the whole pipeline by a local Snakemake run
    (``--cores 2``, :data:`E2E_EXPERIMENTS`). Tests only read it."""
    root = copy_project(tmp_path_factory.mktemp("project"))
    shrink_to_test_size(root, E2E_EXPERIMENTS, gan_steps=E2E_GAN_STEPS)
    run(["snakemake", "--cores", "2", f"results/{SMALL}/all"], cwd=root)
    return root
