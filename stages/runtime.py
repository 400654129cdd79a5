"""Threads, seeds and provenance (versions, git commit) shared by every stage."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
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


def tune_malloc(threshold: int = 1 << 30) -> bool:
    """Keep freed memory in the heap for reuse instead of returning it to the OS (glibc only).

    By default glibc serves each large activation tensor with a fresh ``mmap`` and unmaps it when
    freed, so every forward pass pays page faults on new memory: inference ran 2-10x slower and
    erratically on the 2-core CI machine (``benchmarks/bench_models.py --no-glibc-tune``). Raising
    the mmap and trim thresholds keeps those pages. Returns False where this does not apply.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(
            libc.mallopt(m_trim_threshold, threshold)
        )
    except (OSError, AttributeError, TypeError):
        return False


def set_threads(n: int) -> None:
    """Pin torch and the BLAS/OpenMP pools to ``n`` threads (a rule's ``threads:``), and tune malloc."""
    tune_malloc()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)
    # inter-op threads can only be set before the first parallel op in the process
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def pick_device(requested: str = "auto"):
    """``auto``: CUDA when present, else the CPU; otherwise the named torch device."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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
