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
            checkpoint.save(state)          # raises MoveRequested when asked to move
        checkpoint.clear()
        return score(state["weights"])
    ```

**Where.** ``$PREFECT_CLOUDSCHED_CHECKPOINT_DIR`` (default
``$PREFECT_CLOUDSCHED_HOME/checkpoints``) or the ``location=`` argument: a local path,
``file://…``, ``s3://bucket/prefix`` or any other fsspec URL (``gs://`` needs ``gcsfs``,
``memory://`` is handy in tests). A retry on another instance or in another region finds
the state as long as it can read the same location. ``s3://`` goes through boto3 directly
(the usual credentials chain; ``AWS_ENDPOINT_URL`` is honoured): ``s3fs`` pins a botocore
older than the one boto3 needs here, so it cannot be installed next to it. Writes are
atomic (a temporary file then a rename locally; a single PUT on S3). Only load checkpoints
your own tasks wrote: pickle runs code on load.

**Cooperative yield.** When the spot controller decides to move a running job (to spot in
another region, back from on-demand, …), the runner calls :func:`request_move` with the
task run's key. The body's next :func:`save` stores the checkpoint *first* and then raises
:class:`MoveRequested`, so the attempt stops at a point it can resume from; the runner
treats that exception as "re-place and retry", not as a failure. :func:`move_requested`
lets a body poll without saving. Bodies that never call :func:`save` are never stopped.

**On an instance's worker** (the remote executor, the default with provisioners) there is no
Prefect task run context, so the runner sends a checkpointable body wrapped in
:func:`run_as` with its task run id as the key, and a move request travels as a
cluster-wide flag (a ``distributed.Event`` named :func:`move_signal`) that :func:`save`
reads on the worker, one scheduler round trip per save.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect_cloudsched.errors import MoveRequested

DIR_ENV = "PREFECT_CLOUDSCHED_CHECKPOINT_DIR"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_moves: dict[str, str] = {}
_moves_lock = threading.Lock()
#: The task run a body runs for where Prefect's context does not reach (a Dask worker).
_TASK_KEY: ContextVar[str | None] = ContextVar("cloudsched_checkpoint_key", default=None)


def run_as(key: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with ``key`` as the checkpoint key of its :func:`save` and :func:`load`.

    The runner wraps a checkpointable body in it when the body runs on an instance's
    worker: there is no Prefect task run context in that process, and the key must be the
    task run's id, so a retry on another instance finds the state.
    """
    token = _TASK_KEY.set(key)
    try:
        return fn(*args, **kwargs)
    finally:
        _TASK_KEY.reset(token)


def move_signal(key: str) -> str:
    """The name of the cluster-wide flag that asks the body of ``key`` on an instance's
    worker to move (a ``distributed.Event``: the request itself lives in this process)."""
    return f"cloudsched-move-{_SAFE.sub('_', key)}"


def _remote_move(safe: str) -> bool:
    """Inside a Dask worker: has the runner raised this body's move flag?"""
    if "distributed" not in sys.modules:  # not on a worker: nothing to ask
        return False
    from distributed import Event, get_worker

    try:
        get_worker()
    except ValueError:
        return False
    try:
        return bool(Event(move_signal(safe)).is_set())
    except Exception:  # the scheduler did not answer: the state is saved, keep working
        return False


def request_move(key: str, reason: str = "the spot controller moved the job") -> None:
    """Ask the task with checkpoint ``key`` to stop at its next :func:`save`."""
    with _moves_lock:
        _moves[_SAFE.sub("_", key)] = reason


def cancel_move(key: str) -> None:
    """Forget a pending move for ``key`` (a new attempt starts: an old request is void)."""
    with _moves_lock:
        _moves.pop(_SAFE.sub("_", key), None)


def move_requested(*, key: str | None = None) -> bool:
    """Whether a move is pending for this task run (or ``key``)."""
    with _moves_lock:
        return _SAFE.sub("_", _key(key)) in _moves


def checkpoint_dir() -> Path:
    """Where checkpoints are kept by default (a local directory)."""
    from prefect_cloudsched.adapters.ledger import default_home

    configured = os.environ.get(DIR_ENV)
    return Path(configured).expanduser() if configured else default_home() / "checkpoints"


def _key(key: str | None) -> str:
    if key is not None:
        return key
    given = _TASK_KEY.get()
    if given is not None:
        return given
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    if context is None:
        raise RuntimeError(
            "checkpoint: no Prefect task run here; call it inside a task or pass key="
        )
    return str(context.task_run.id)


def _target(key: str | None, location: str | None) -> str:
    """The checkpoint's URL or path: ``<location>/<safe key>.pkl``."""
    base = location or os.environ.get(DIR_ENV) or str(checkpoint_dir())
    name = f"{_SAFE.sub('_', _key(key))}.pkl"
    return f"{base.rstrip('/')}/{name}"


def save(state: Any, *, key: str | None = None, location: str | None = None) -> str:
    """Store ``state`` for this task run (or ``key``), replacing the previous checkpoint.

    Raises:
        MoveRequested: after saving, if :func:`request_move` was called for this key.
    """
    target = _target(key, location)
    data = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    scheme = urlparse(target).scheme
    if scheme == "s3":
        _s3(target).put_object(Bucket=_bucket(target), Key=_s3_key(target), Body=data)
    elif scheme in ("", "file"):
        _write_local(Path(target.removeprefix("file://")), data)
    else:
        _fsspec_write(target, data)
    safe = _SAFE.sub("_", _key(key))
    with _moves_lock:
        reason = _moves.pop(safe, None)
    if reason is None and _remote_move(safe):
        reason = "the spot controller moved the job"
    if reason is not None:
        raise MoveRequested(safe, reason)
    return target


def load(default: Any = None, *, key: str | None = None, location: str | None = None) -> Any:
    """The last state saved for this task run (or ``key``), else ``default``."""
    target = _target(key, location)
    scheme = urlparse(target).scheme
    if scheme == "s3":
        client = _s3(target)
        try:
            body = client.get_object(Bucket=_bucket(target), Key=_s3_key(target))["Body"]
        except client.exceptions.NoSuchKey:
            return default
        return pickle.loads(body.read())
    if scheme in ("", "file"):
        path = Path(target.removeprefix("file://"))
        return pickle.loads(path.read_bytes()) if path.is_file() else default
    import fsspec

    fs, path = fsspec.core.url_to_fs(target)
    if not fs.exists(path):
        return default
    with fs.open(path, "rb") as file:
        return pickle.loads(file.read())


def clear(*, key: str | None = None, location: str | None = None) -> None:
    """Delete this task run's checkpoint (call it when the task is done)."""
    target = _target(key, location)
    scheme = urlparse(target).scheme
    if scheme == "s3":
        _s3(target).delete_object(Bucket=_bucket(target), Key=_s3_key(target))
    elif scheme in ("", "file"):
        Path(target.removeprefix("file://")).unlink(missing_ok=True)
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(target)
        if fs.exists(path):
            fs.rm(path)


def _write_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)  # a crash mid-write leaves the old checkpoint intact
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _fsspec_write(url: str, data: bytes) -> None:
    """Write through fsspec: to a temporary name, then move over the old checkpoint."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temp = f"{path}.tmp"
    with fs.open(temp, "wb") as file:
        file.write(data)
    fs.mv(temp, path)


def _s3(url: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _bucket(url: str) -> str:
    return urlparse(url).netloc


def _s3_key(url: str) -> str:
    return urlparse(url).path.lstrip("/")


__all__ = [
    "DIR_ENV",
    "MoveRequested",
    "cancel_move",
    "checkpoint_dir",
    "clear",
    "load",
    "move_requested",
    "move_signal",
    "request_move",
    "run_as",
    "save",
]
