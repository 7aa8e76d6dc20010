"""Optional dependencies: one line naming the extra to install when one is missing.

The runtime depends only on what it imports; plots, the mock clouds, Dask, PostgreSQL and
the demo's model are extras (see ``pyproject.toml``). Code that needs one calls
:func:`require` first, so a bare install fails with ``pip install 'prefect-cloudsched[plot]'``
instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from prefect_cloudsched.errors import MissingExtraError

#: Which extra provides which top-level module.
EXTRA_OF: dict[str, str] = {
    "matplotlib": "plot",
    "moto": "mock",
    "flask": "mock",
    "distributed": "dask",
    "dask": "dask",
    "cloudpickle": "dask",
    "psycopg": "postgres",
    "sklearn": "demo",
    "playwright": "browser",
    "highspy": "highs",
    "prefect_aws": "aws",
    "prefect_gcp": "gcp",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that has it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise missing_extra(err, purpose, module) from None


def missing_extra(err: ImportError, purpose: str, module: str = "") -> MissingExtraError:
    """The one-line error for an ``ImportError`` of an optional dependency."""
    missing = (err.name or module).split(".")[0]
    extra = EXTRA_OF.get(missing) or EXTRA_OF.get(module.split(".")[0], "all")
    return MissingExtraError(
        f"{purpose} needs {missing}, which is not installed; "
        f"install it with: pip install 'prefect-cloudsched[{extra}]'"
    )
