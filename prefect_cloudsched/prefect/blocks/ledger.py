"""The ``CloudSchedLedger`` block: the database a team's flow runs record costs in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator

from prefect_cloudsched.prefect.blocks._common import _CloudSchedBlock

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.ledger import Ledger


class CloudSchedLedger(_CloudSchedBlock, Block):
    """The database every flow run records its placements and costs in.

    Point every flow of a team at one PostgreSQL database (``postgresql+psycopg://...``;
    ``pip install 'prefect-cloudsched[postgres]'``) to get one cost report and budgets that
    count all runs. The URL is a secret: it usually carries a password.

    Example:
        ```python
        from prefect_cloudsched import CloudSchedLedger
        ledger_block = CloudSchedLedger.load("BLOCK_NAME")
        ledger = ledger_block.get_ledger()
        ```
    """

    _block_type_name = "CloudSched Ledger"
    _block_type_slug = "cloudsched-ledger"

    #: A refused URL must not be echoed back: it usually carries a password.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: SecretStr = Field(
        description="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host/db.",
    )

    @field_validator("url")
    @classmethod
    def _parseable_url(cls, value: SecretStr) -> SecretStr:
        """A URL SQLAlchemy cannot parse (or with a non-numeric port) is refused at save."""
        from prefect_cloudsched.adapters.ledger import check_url
        from prefect_cloudsched.errors import LedgerError

        try:
            check_url(value.get_secret_value(), "the URL")
        except LedgerError as err:
            raise ValueError(str(err)) from None
        return value

    def get_ledger(self) -> Ledger:
        """Open (and migrate if needed) the ledger at this URL."""
        from prefect_cloudsched.adapters.ledger import Ledger

        return Ledger(self.url.get_secret_value(), source=f"{type(self).__name__} block url")
