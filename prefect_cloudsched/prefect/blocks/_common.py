"""What every block here shares: loading by name, one-line validation helpers, URLs."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, TypeVar

from prefect.exceptions import ObjectNotFound

from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.errors import MissingBlockError

DOCS_URL = (
    "https://github.com/prefect-cloudsched/prefect-cloudsched/blob/main/docs/configuration.md"
)
LOGO_URL = (
    "https://raw.githubusercontent.com/prefect-cloudsched/prefect-cloudsched/main/docs/img/logo.png"
)

_OWNER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: The catalog's spot interruption bands (``catalog.BAND_ORDER``; a test keeps them equal).
SpotBand = Literal["<5%", "5-10%", "10-15%", "15-20%", ">20%"]


class _CloudSchedBlock:
    """What every block here shares: the logo, the docs link and loading by name.

    A mixin, not a block type itself (Prefect would register a ``Block`` subclass).
    """

    _logo_url = LOGO_URL
    _documentation_url = DOCS_URL

    @classmethod
    def load_named(cls, name: str) -> Any:
        """Load a saved block synchronously, also from inside an async flow.

        ``Block.load`` returns a coroutine in an async context (the runner's ``__enter__``
        under an async flow), so this forces the sync path.

        Raises:
            MissingBlockError: nothing of this block type is saved under ``name``.
        """
        try:
            return cls.load(name, _sync=True)  # type: ignore[attr-defined]
        except ValueError as err:
            if not isinstance(err.__cause__, ObjectNotFound):
                raise
            kind = cls.get_block_type_name()  # type: ignore[attr-defined]
            raise MissingBlockError(
                f"{kind} block {name!r} is not saved on the Prefect API; "
                f"create it with `prefect-cloudsched blocks apply` or "
                f'`{cls.__name__}(...).save("{name}")`'
            ) from None


def _catalog_regions(cloud: str) -> set[str]:
    return {o.region for o in load_catalog().offers if o.cloud == cloud}


def _check_regions(values: list[str] | None, cloud: str | None) -> list[str] | None:
    if values is None:
        return None
    known = set(load_catalog().regions) if cloud is None else _catalog_regions(cloud)
    unknown = sorted(set(values) - known)
    if unknown:
        where = "the price catalog" if cloud is None else f"the price catalog's {cloud} offers"
        raise ValueError(f"unknown region(s) {unknown}; {where} has: {', '.join(sorted(known))}")
    return list(dict.fromkeys(values))


def _check_owner(value: str) -> str:
    if not _OWNER_RE.match(value):
        raise ValueError(
            "must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter "
            "(it becomes a tag on AWS and a label on GCP)"
        )
    return value


S = TypeVar("S")


def settings_from_fields(block: Any, settings_type: type[S], **overrides: Any) -> S:
    """The plain settings dataclass a block maps onto, filled from its same-named fields.

    Lists become tuples and dicts are copied, so the settings share nothing mutable with
    the block; ``overrides`` set fields the block names or computes differently.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings_type):  # type: ignore[arg-type]
        if field.name in overrides or field.name not in type(block).model_fields:
            continue
        value = getattr(block, field.name)
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, dict):
            value = dict(value)
        values[field.name] = value
    return settings_type(**values, **overrides)
