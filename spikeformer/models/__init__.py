"""Model families, one file each; importing this package registers every configuration."""

import importlib
import pkgutil

from .registry import ModelInfo, create_model, get_model_info, list_models, register_model

# Every family module in this package registers its configurations on import.
for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]
