"""Checkpoints: a task interrupted on spot resumes where it stopped instead of restarting.

A spot interruption makes Prefect retry the *same task run* (same id, next attempt), so a
checkpoint keyed by the task run id is found by the retry. Save progress as you go, load it
at the start:

Example:
    ```python
    from prefect_cloudsched import checkpoint, requires

    @requires(gpus=1, spot_ok=True, checkpointable=True)
    @task
    def train(epochs: int) -> float:
        state = checkpoint.load(default={"epoch": 0, "weights": None})
        for epoch in range(state["epoch"], epochs):
            state = {"epoch": epoch + 1, "weights": fit_one_epoch(state["weights"])}
            checkpoint.save(state)
        checkpoint.clear()
        return score(state["weights"])
    ```

Files live under ``$PREFECT_CLOUDSCHED_CHECKPOINT_DIR`` (default
``$PREFECT_CLOUDSCHED_HOME/checkpoints``), written atomically with pickle. A body that runs
on a remote worker (``executor="dask"``) must point that directory at storage the retry can
read (a shared mount) and pass ``key=`` explicitly if it has no Prefect task-run context.
Only load checkpoints your own tasks wrote: pickle runs code on load.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

DIR_ENV = "PREFECT_CLOUDSCHED_CHECKPOINT_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def checkpoint_dir() -> Path:
    """Where checkpoints are kept."""
    from prefect_cloudsched.adapters.ledger import default_home

    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser() if configured else default_home() / "checkpoints"


def _path(key: str | None) -> Path:
    if key is None:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        if context is None:
            raise RuntimeError(
                "checkpoint: no Prefect task run here; call it inside a task or pass key="
            )
        key = str(context.task_run.id)
    return checkpoint_dir() / f"{_SAFE.sub('_', key)}.pkl"


def save(state: Any, *, key: str | None = None) -> Path:
    """Store ``state`` for this task run (or ``key``), replacing the previous checkpoint."""
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temp, path)  # a crash mid-write leaves the old checkpoint intact
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load(default: Any = None, *, key: str | None = None) -> Any:
    """The last state saved for this task run (or ``key``), else ``default``."""
    path = _path(key)
    if not path.is_file():
        return default
    with path.open("rb") as file:
        return pickle.load(file)


def clear(*, key: str | None = None) -> None:
    """Delete this task run's checkpoint (call it when the task is done)."""
    _path(key).unlink(missing_ok=True)
