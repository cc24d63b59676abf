"""WSOL methods, one module each, registered by name (`model.name`) in `METHODS`.

Every module of this package is imported here, so a new method is one new file (see `base.Method`
and docs/methods.md, "Adding a method").
"""
import importlib
import pkgutil

from acol.methods.base import METHODS, Method, build_method, build_model

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "build_method", "build_model"]
