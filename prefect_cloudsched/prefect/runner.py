"""``CloudSchedTaskRunner``: a Prefect task runner that places every task on a cloud offer.

Before:

```python
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

@task
def train(cfg): ...

@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def pipeline(): train.map(configs)
```

After:

```python
from prefect import flow, task
from prefect_cloudsched import CloudSchedTaskRunner, requires

@requires(gpus=1, gpu_type="A10G", spot_ok=True, deadline=timedelta(hours=2))
@task
def train(cfg): ...

@flow(task_runner=CloudSchedTaskRunner(max_workers=4))
def pipeline(): train.map(configs)
```

For each ``.submit()``/``.map()``: resolve the task's needs → ``Session.submit`` (decide) →
a thin wrapper whose call is ``Session.place`` → ``Session.run`` → ``Session.finish`` (one
ledger row). The Prefect engine still runs every task (state, retries, UI graph unchanged);
only the body is dispatched to the chosen placement. Direct calls (``train(cfg)``) bypass
every task runner, ours included. Everything about placement lives in
:mod:`prefect_cloudsched.runtime`; this module only speaks Prefect.

When tasks are re-evaluated: a task is decided at submission and again at each retry (after
a spot interruption, with the run's interruptions counted). A **spot-tolerant,
checkpointable task with a deadline** (``@requires(spot_ok=True, checkpointable=True,
deadline=...)``) also runs under the spot controller (:mod:`prefect_cloudsched.runtime.spot_live`):
it may wait with no instance for spot to return, and while it runs it is re-evaluated on a
timer and on capacity changes; a move (to spot, to on-demand before an interruption, or
idle while ahead of its deadline) makes its next ``checkpoint.save()`` raise
``MoveRequested``, and the retry resumes from the checkpoint on the new placement. Tasks
that cannot checkpoint are decided at start and at each retry only.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from prefect.context import FlowRunContext, TagsContext, tags
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_cloudsched.adapters.execute.base import Executor
from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.core.needs import current_overrides, resolve_needs
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig
from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.errors import NoFeasibleOffer
from prefect_cloudsched.prefect import checkpoint, visibility
from prefect_cloudsched.prefect.resolve import resolve_policy, resolve_settings
from prefect_cloudsched.prefect.wrapper import failing_copy, spot_retry_condition, wrap_body
from prefect_cloudsched.runtime.config import DeadlineRisk, ExecutionMode, RunnerConfig
from prefect_cloudsched.runtime.recording import instance_overhead
from prefect_cloudsched.runtime.session import Session
from prefect_cloudsched.runtime.shared import MapBatch
from prefect_cloudsched.runtime.spot_live import SpotLive
from prefect_cloudsched.runtime.spot_settings import SpotControlSettings

_logger = logging.getLogger(__name__)

#: Extra retries of a spot-controlled task: each move or interruption is one attempt.
SPOT_CONTROL_MOVES = 50


class CloudSchedTaskRunner(ThreadPoolTaskRunner):
    """Cost-aware task runner: each task runs on the cheapest offer that meets its needs.

    Args:
        max_workers: Concurrent tasks (threads), as for ``ThreadPoolTaskRunner``.
        policy: A :class:`~prefect_cloudsched.core.policy.PolicyConfig`, a ``CloudSchedPolicy``
            block, or the name of a saved one (``None`` = defaults).
        catalog_path: A price catalog CSV (``None`` = the shipped snapshot).
        ledger_url: SQLAlchemy URL of the ledger (``None`` = ``$PREFECT_CLOUDSCHED_LEDGER_URL``
            or SQLite under ``$PREFECT_CLOUDSCHED_HOME``).
        reserved: Reserved/committed instances you own, ``{"aws/us-east-1/g5.xlarge": 2}``;
            used first at zero marginal cost.
        use_plan: Also take reserved capacity from the latest capacity plan in the ledger
            that ``plan apply --yes`` bought (a draft is never counted on).
        spot_retries: Extra attempts granted to a task after spot interruptions.
        provisioners: Provisioners per cloud (``None`` = accounting only: no instance is
            started, bodies run here and are accounted as if on the chosen instance).
        executor: Where bodies run: ``None`` (on the instances when there are provisioners
            or pools, else here), ``"dask"`` (on the Dask worker each provisioned instance
            boots; a fresh :class:`~prefect_cloudsched.adapters.execute.dask.DaskExecutor`
            per flow run), ``"local"`` (here), or an ``Executor``. "Never both": a body
            never runs here while an instance is started and billed for it — that
            combination is refused with a one-line error.
        executor_options: Keyword arguments of ``DaskExecutor`` for ``executor="dask"``
            (``address``, ``cluster_kwargs``, ``join_timeout``, ``idle_timeout``, ...).
        label_task_runs: Which task runs get one tag naming the choice made at submission
            (``cloudsched:aws-spot``): ``"none"`` (default), ``"declared"`` (tasks that
            declared needs) or ``"all"`` (``True``/``False`` mean "all"/"none"). A tag is
            fixed when the task run is created, before admission, capacity fallback or map
            packing may move the task, and it costs Prefect a concurrency-lease round trip
            per task run; the ``cloudsched.placement.decided`` event and the log line of
            each attempt always name the placement that really started.
            Tasks without needs run as before (no log line or event) but are in the ledger.
        live_prices: With an AWS provisioner, re-read AWS spot prices from
            ``describe_spot_price_history`` when a flow run starts (the snapshot where it does
            not answer); each decision records its price source. Reservations the
            provisioners report (``owned_reservations``) are always used first.
        pack_maps: Pack the GPU tasks of one ``.map()`` onto shared instances (e.g. four
            1-GPU tasks on one 4-GPU instance, or an idle reserved host) when that is cheaper
            than one instance each; each member is billed its share. Off when the policy has
            a budget (budgets are admitted per task).
        pools: ``AwsComputePool`` / ``GcpComputePool`` blocks or their saved names
            (``"aws-main"`` or ``"aws-compute-pool/aws-main"``); each becomes the
            provisioner of its cloud. Loaded when a flow run starts, never at import.
        ledger: A ``CloudSchedLedger`` block or its saved name (instead of ``ledger_url``).
        on_deadline_risk: ``"warn"`` (default: a warning, and ``deadline_at_risk`` in the
            decided event and the ledger row) or ``"fail"``: a task whose deadline cannot be
            met even on-demand fails before it starts (``DeadlineAtRisk``).
        execution: ``"auto"`` (default), ``"remote"`` (bodies on the instances; needs
            provisioners), ``"local"`` (bodies here; refused with provisioners) or
            ``"accounting"`` (start no instance even with provisioners; account only).
        spot_control: How spot-tolerant, checkpointable tasks with a deadline are controlled:
            a :class:`~prefect_cloudsched.runtime.spot_settings.SpotControlSettings` or a
            mapping of its fields (``{"change_over": timedelta(minutes=20)}``); ``None`` =
            the ``CloudSchedPolicy`` block's ``spot_control_*`` fields, else the defaults (a
            12 min change-over, a decision every 5 min, the instance checked every minute).
            The deadline guarantee holds only if ``change_over`` covers what your tasks
            really take to get going again on a new instance.

    A ``CloudSchedPolicy`` block also brings budget caps (hard: a placement that would
    cross one fails with ``BudgetExceeded``, and a running task is stopped — its instance
    released — before its cost crosses one; soft: it runs and a
    ``cloudsched.budget.exceeded`` event is emitted), the spot share and a default
    deadline. At the end of each flow run the runner publishes its cost artifacts.

    The run's session opens at the first submission: a configuration that cannot open
    (a missing block, a bad ledger URL) fails the flow run with its one-line reason.

    Example:
        ```python
        from prefect import flow
        from prefect_cloudsched import CloudSchedTaskRunner

        @flow(task_runner=CloudSchedTaskRunner(max_workers=4))
        def pipeline(): ...
        ```
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        policy: PolicyConfig | Any | str | None = None,
        catalog_path: str | None = None,
        ledger_url: str | None = None,
        reserved: Mapping[str, int] | None = None,
        use_plan: bool = True,
        spot_retries: int = 2,
        provisioners: Mapping[str, Provisioner] | None = None,
        executor: Executor | str | None = None,
        executor_options: Mapping[str, Any] | None = None,
        label_task_runs: bool | str = "none",
        live_prices: bool = True,
        pack_maps: bool = True,
        pools: Sequence[str | Any] | None = None,
        ledger: str | Any | None = None,
        on_deadline_risk: DeadlineRisk = "warn",
        execution: ExecutionMode = "auto",
        spot_control: SpotControlSettings | Mapping[str, Any] | None = None,
    ) -> None:
        self.config = RunnerConfig(
            max_workers=max_workers,
            policy=policy,
            catalog_path=catalog_path,
            ledger_url=ledger_url,
            reserved=dict(reserved or {}),
            use_plan=use_plan,
            spot_retries=spot_retries,
            provisioners=dict(provisioners or {}),
            executor=executor,
            executor_options=dict(executor_options or {}),
            label_task_runs=label_task_runs,
            live_prices=live_prices,
            pack_maps=pack_maps,
            pools=pools if pools is not None else (),
            ledger=ledger,
            on_deadline_risk=on_deadline_risk,
            execution=execution,
            spot_control=spot_control,
        )
        if executor == "dask":  # fail fast on options DaskExecutor does not take
            from prefect_cloudsched.adapters.execute.dask import DaskExecutor

            DaskExecutor(**self.config.executor_options)
        super().__init__(max_workers=max_workers)
        self.records: list[PlacementRecord] = []
        self._session: Session | None = None
        self._open_error: BaseException | None = None
        self._open_lock = threading.Lock()

    # ------------------------------------------------------------------ Prefect plumbing
    def duplicate(self) -> CloudSchedTaskRunner:
        """A fresh runner with the same configuration (the engine starts only duplicates)."""
        return type(self)(**self.config.as_kwargs())

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_session"] = None  # clients, threads and locks never travel
        state["_open_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._open_lock = threading.Lock()

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # waits for running tasks first
        finally:
            if self._session is not None:
                session, self._session = self._session, None
                self.records = session.close()
                _publish(session, self.records)

    def session(self) -> Session:
        """This flow run's session, opened at the first submission.

        Raises:
            Exception: the reason the session cannot open (the same at every call), which
                fails the flow run with that one line.
        """
        with self._open_lock:
            if self._session is None:
                if self._open_error is not None:
                    raise self._open_error
                try:
                    self._session = Session.open(
                        resolve_settings(self.config), visibility.PrefectObserver()
                    )
                    # spot control hook (issue 12): moves yield through checkpoint.save()
                    self._session.spot_live.mover = _Mover(self._session.executor)
                except Exception as err:
                    self._open_error = err
                    raise
            return self._session

    @property
    def placement_state(self) -> PlacementState | None:
        """This run's dynamic state (reserved capacity, interruptions, blocked offers)."""
        return self._session.state if self._session else None

    # ------------------------------------------------------------------ submit
    def map(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> Any:
        """Submit one task per item; GPU tasks of the map may be packed onto shared instances."""
        session = self.session() if self._started else None
        if session is None or not self.config.pack_maps or not session.packs_maps:
            return super().map(task, parameters, wait_for)
        batch = MapBatch(session.pack)
        token = _MAP_BATCH.set(batch)
        try:
            return super().map(task, parameters, wait_for)
        finally:
            _MAP_BATCH.reset(token)
            batch.close()

    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[Any]] | None = None,
    ) -> PrefectConcurrentFuture[Any]:
        """Decide where ``task`` runs, then submit a copy whose body runs there."""
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        session = self.session()
        resolved = resolve_needs(
            task.fn, task.tags, TagsContext.get().current_tags, current_overrides()
        )
        flow_ctx = FlowRunContext.get()
        label = self.config.label_task_runs
        announce = label == "all" or resolved.declared
        try:
            spec = session.submit(
                task.name,
                resolved.needs,
                flow_run_id=str(flow_ctx.flow_run.id)
                if flow_ctx and flow_ctx.flow_run
                else "no-flow-run",
                flow_name=flow_ctx.flow.name if flow_ctx and flow_ctx.flow else "unknown-flow",
                announce=announce,
                batch=_MAP_BATCH.get(),
            )
        except NoFeasibleOffer as err:
            return super().submit(failing_copy(task, err), parameters, wait_for, dependencies)
        remote = copy.copy(task)
        remote.fn = wrap_body(session, spec, task.fn, is_async=task.isasync)
        if spec.needs.spot_ok and session.spot_retries:
            # any attempt of a spot-tolerant task may land on spot (a capacity fallback
            # included), so each gets the spot retries; only SpotInterrupted uses them
            remote.retries = task.retries + session.spot_retries
            remote.retry_condition_fn = spot_retry_condition(task.retry_condition_fn, task.retries)
        if SpotLive.controls(spec.needs):  # spot control hook (issue 12): each move is a retry
            remote.retries += SPOT_CONTROL_MOVES
            remote.retry_condition_fn = spot_retry_condition(task.retry_condition_fn, task.retries)
        if label == "none" or not announce:
            return super().submit(remote, parameters, wait_for, dependencies)
        with tags(spec.decision.tag):
            return super().submit(remote, parameters, wait_for, dependencies)


class _Mover:
    """Move requests for the spot controller: to a body here through ``checkpoint``'s
    request, and to a body on an instance's worker through the executor's cluster-wide
    flag, which its ``checkpoint.save()`` reads."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def request_move(self, key: str, reason: str) -> None:
        checkpoint.request_move(key, reason)
        self._flag("raise_flag", key)

    def cancel_move(self, key: str) -> None:
        checkpoint.cancel_move(key)
        self._flag("lower_flag", key)

    def _flag(self, action: str, key: str) -> None:
        flag = getattr(self.executor, action, None)
        if flag is None:  # bodies run here: checkpoint's own request reaches them
            return
        try:
            flag(checkpoint.move_signal(key))
        except Exception as err:  # the controller asks again at its next decision
            _logger.warning("could not signal a move to task run %s: %s", key, err)


#: The ``.map()`` call being submitted in this context, whose members may share instances.
_MAP_BATCH: ContextVar[MapBatch | None] = ContextVar("cloudsched_map_batch", default=None)


def _publish(session: Session, records: list[PlacementRecord]) -> None:
    """Cost artifacts of each flow run this session served (only real, API-backed runs),
    with the instance time no task row paid (boot, idle), as ``report`` counts it."""
    runs = {k: v for k, v in session.flow_names.items() if visibility.is_run_id(k)}
    if not runs:
        return
    try:
        records = records + instance_overhead(session.ledger, records)
    except Exception as err:  # the artifact still shows the task rows; the report has all
        _logger.warning(
            "cost artifact: could not read instance boot and idle time from the ledger (%s); "
            "it counts the task rows only (`prefect-cloudsched report` counts both)",
            err,
        )
    for run_id, flow_name in runs.items():
        visibility.publish_cost_artifacts(
            [r for r in records if r.flow_run_id == run_id],
            flow_run_id=run_id,
            flow_name=flow_name,
            refusals=session.refusals,
        )


__all__ = ["CloudSchedTaskRunner", "resolve_policy"]
