"""The thin wrapper the runner puts around a task's body: place → run → finish.

Everything a placement involves lives in the runtime session; this module only reads the
Prefect task run's identity (id, attempt number), hands the body to the session and turns
spot losses into Prefect retries.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

from prefect.context import TaskRunContext

from prefect_cloudsched.errors import MoveRequested, NoFeasibleOffer, SpotInterrupted
from prefect_cloudsched.prefect import checkpoint
from prefect_cloudsched.runtime.attempt import TaskSpec, run_and_finish
from prefect_cloudsched.runtime.session import Session


def _task_run() -> tuple[str, int]:
    """The current task run's id and attempt number (1 outside a task run)."""
    ctx = TaskRunContext.get()
    if ctx is None:
        return "no-task-run", 1
    return str(ctx.task_run.id), ctx.task_run.run_count


def wrap_body(session: Session, spec: TaskSpec, fn: Callable[..., Any], *, is_async: bool):
    """``fn`` wrapped so each call is one attempt on (and billed to) its placement.

    Async bodies are awaited here when the executor runs bodies in this process; on a
    remote executor they run to completion in their own event loop on the instance. A
    checkpointable body sent to an instance carries its task run's id as its checkpoint key
    (:func:`~prefect_cloudsched.prefect.checkpoint.run_as`): Prefect's context stays here.
    """
    remote = bool(getattr(session.executor, "runs_on_instance", False))
    keyed = remote and spec.needs.checkpointable
    if is_async:

        @functools.wraps(fn)
        async def dispatch_async(*args: Any, **kwargs: Any) -> Any:
            task_run_id, number = _task_run()
            attempt = await asyncio.to_thread(
                session.place, spec, task_run_id=task_run_id, attempt=number
            )
            try:
                if remote:
                    call = functools.partial(_run_coroutine, fn, args, kwargs)
                    if keyed:
                        call = functools.partial(checkpoint.run_as, task_run_id, call)
                    result = await asyncio.to_thread(session.run, attempt, call)
                else:
                    result = await fn(*args, **kwargs)
            except BaseException as err:
                session.finish(attempt, err)
                raise
            await asyncio.to_thread(session.finish, attempt, None)
            return result

        return dispatch_async

    @functools.wraps(fn)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        task_run_id, number = _task_run()
        attempt = session.place(spec, task_run_id=task_run_id, attempt=number)
        call = functools.partial(fn, *args, **kwargs)
        if keyed:
            call = functools.partial(checkpoint.run_as, task_run_id, call)
        return run_and_finish(session, attempt, call)

    return dispatch


def _run_coroutine(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run an async body to completion in its own loop (on a remote worker)."""
    return asyncio.run(fn(*args, **kwargs))


def spot_retry_condition(
    user_condition: Callable[..., Any] | None, user_retries: int
) -> Callable[..., bool]:
    """Retry spot interruptions and spot-control moves always; others as configured.

    ``MoveRequested`` (issue 12): the body saved its checkpoint and stopped because the
    spot controller moves it; the retry resumes from that checkpoint on the new placement.
    """
    other_failures: Counter[Any] = Counter()

    def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except (SpotInterrupted, MoveRequested):  # MoveRequested: spot-control hook (issue 12)
            return True
        except BaseException:
            pass
        if user_condition is not None:
            return bool(user_condition(task, task_run, state))
        other_failures[task_run.id] += 1
        return other_failures[task_run.id] <= user_retries

    return retry_condition


def failing_copy(task: Any, error: Exception) -> Any:
    """A copy of ``task`` that fails at once with ``error``'s one line (a clean Failed state)."""
    message = f"{task.name}: cannot be placed: {error}"
    error_type = type(error) if isinstance(error, NoFeasibleOffer) else NoFeasibleOffer

    @functools.wraps(task.fn)
    def fail(*_: Any, **__: Any) -> Any:
        raise error_type(message)

    @functools.wraps(task.fn)
    async def fail_async(*_: Any, **__: Any) -> Any:
        raise error_type(message)

    failing = copy.copy(task)
    failing.fn = fail_async if task.isasync else fail
    failing.retries = 0
    return failing


__all__ = ["failing_copy", "spot_retry_condition", "wrap_body"]
