"""Threads, seeds and provenance (versions, git commit) shared by every stage."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import subprocess
from importlib import metadata
from typing import Any

from stages.paths import project_root

_PACKAGES = (
    "torch",
    "numpy",
    "zarr",
    "xarray",
    "dask",
    "rasterio",
    "scikit-learn",
    "mlflow",
    "snakemake",
    "dvc",
)


def set_threads(n: int) -> None:
    """Pin torch and the BLAS/OpenMP pools to ``n`` threads (a rule's ``threads:``)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    # inter-op threads can only be set before the first parallel op in the process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def environment_info() -> dict[str, Any]:
    """Versions that can change a result: Python, the platform and the key packages."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    from stages import __version__

    return {
        "landfuse": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": git_commit(),
    }
