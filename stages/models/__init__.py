"""Patch-classifier models: the registry, the shared contract and every registered model.

Importing this package registers all models, so ``build_model(name, ...)`` works for any ``name`` in
``params/models/``. See :mod:`stages.models.base` for the input/output contract and the role-filling rule.
"""

from stages.models.base import IGNORE_INDEX, FusionModel, PatchClassifier, Segmenter
from stages.models.registry import MODELS, build_model, register


def _import_models() -> None:
    """Import every model module of this package for its ``@register`` side effect."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("base", "registry", "layers"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_models()

__all__ = ["IGNORE_INDEX", "MODELS", "FusionModel", "PatchClassifier", "Segmenter", "build_model", "register"]
