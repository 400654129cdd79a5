"""Where the project lives: the repository root, params/ and the JSON schemas."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """The landfuse checkout that holds ``params/`` and ``workflow/``.

    ``LANDFUSE_ROOT`` wins; otherwise the first parent of the working directory with
    ``params/pipeline.yaml``; otherwise the checkout this package was installed from (editable).
    """
    env = os.environ.get("LANDFUSE_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params" / "pipeline.yaml").is_file():
            return candidate
    return _PACKAGE_ROOT


def params_dir() -> Path:
    return project_root() / "params"


def schema_path(name: str) -> Path:
    """``name`` is ``pipeline``, ``dataset`` or ``model``."""
    return project_root() / "workflow" / "schemas" / f"{name}.schema.yaml"
