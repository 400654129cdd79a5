"""Name -> class registry of patch classifiers, and the one factory the pipeline calls.

``params/models/<name>.yaml`` names a model and gives its ``architecture`` mapping; the training stage
calls :func:`build_model` with that mapping and the dataset's geometry. Keys are passed to the
constructor as keyword arguments, so a typo in a params file fails loudly instead of being ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from stages.models.base import FusionModel

MODELS: dict[str, type[FusionModel]] = {}

_GEOMETRY = ("in_channels", "n_classes", "patch_size")

M = TypeVar("M", bound=type[FusionModel])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`PatchClassifier` subclass buildable as ``name``."""

    def decorator(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, FusionModel)):
            raise TypeError(f"@register({name!r}) needs a PatchClassifier or Segmenter subclass, got {cls!r}")
        existing = MODELS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"model name {name!r} is already registered to {existing.__qualname__}")
        MODELS[name] = cls
        return cls

    return decorator


def build_model(
    name: str,
    *,
    in_channels: tuple[int, int],
    n_classes: int,
    patch_size: int,
    architecture: dict[str, Any],
) -> FusionModel:
    """Instantiate the registered model ``name``.

    Args:
        name: a key of :data:`MODELS` (the params file's ``name``).
        in_channels: ``(C1, C2)`` band counts of the primary and auxiliary inputs (after role filling).
        n_classes: number of classes.
        patch_size: patch edge ``P`` (patch classifiers) or training tile edge (segmenters).
        architecture: the preset's ``architecture`` mapping, passed as keyword arguments.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
        TypeError: ``architecture`` has a key the model's constructor does not take.
    """
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}") from None
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in architecture:
        if key in _GEOMETRY:
            raise TypeError(
                f"model {name!r}: architecture key {key!r} is set by the dataset, not the params file"
            )
        if not takes_any and (key not in params or key == "self"):
            allowed = sorted(k for k in params if k not in ("self", *_GEOMETRY))
            raise TypeError(f"model {name!r}: unknown architecture key {key!r}; it accepts {allowed}")
    return cls(
        in_channels=tuple(in_channels),
        n_classes=n_classes,
        patch_size=patch_size,
        **architecture,
    )
