"""The model zoo: one file per model. Importing this package imports every module in it, and each model
registers itself with `@register`."""

import importlib
import pkgutil

from msrec.models.registry import REGISTRY, ModelOptions, build_model, get_entry, list_models, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "ModelOptions", "build_model", "get_entry", "list_models", "register"]
