"""Optional dependencies: import them, or fail with the ``pip install`` that fixes it."""

from __future__ import annotations

import importlib
from types import ModuleType

from leanmq_async.exceptions import ConfigurationError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'leanmq-async[{extra}]'"
        ) from exc
