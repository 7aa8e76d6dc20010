"""The ``CloudSchedLedger`` block: the database a team's flow runs record costs in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

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

    url: SecretStr = Field(
        description="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host/db.",
    )

    def get_ledger(self) -> Ledger:
        """Open (and migrate if needed) the ledger at this URL."""
        from prefect_cloudsched.adapters.ledger import Ledger

        return Ledger(self.url.get_secret_value())
