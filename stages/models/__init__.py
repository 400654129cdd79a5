"""Patch-classifier models: the registry, the shared contract and every registered model.

Importing this package registers all models, so ``build_model(name, ...)`` works for any ``name`` in
``params/models/``. See :mod:`stages.models.base` for the input/output contract and the role-filling rule.
"""

from stages.models.base import PatchClassifier
from stages.models.registry import MODELS, build_model, register

# Imported for their @register side effect.
from stages.models import fusatnet, two_branch_cnn  # noqa: F401  isort: skip

__all__ = ["MODELS", "PatchClassifier", "build_model", "register"]
