"""Log to the current Prefect run's logger, and to nothing outside a run."""

from __future__ import annotations


def log(message: str, level: str = "info") -> None:
    """Task and flow run logs show up in the UI; outside a run there is no one to tell."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger = get_run_logger()
    except MissingContextError:
        return
    getattr(logger, level)(message)
