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

For each ``.submit()``/``.map()``: resolve the task's needs → ``decide()`` → (provision) →
run → record a ledger row. The Prefect engine still runs every task locally (state, retries,
UI graph unchanged); only the body is dispatched to the chosen placement. Direct calls
(``train(cfg)``) bypass every task runner, ours included.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prefect.context import FlowRunContext, TagsContext, tags
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_cloudsched.adapters.execute.base import Executor
from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.needs import current_overrides, resolve_needs
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig
from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.errors import NoFeasibleOffer
from prefect_cloudsched.prefect.placed_task import PlacedTask, failing_copy, spot_retry_condition
from prefect_cloudsched.runtime.session import RunContext, make_executor, resolve_policy
from prefect_cloudsched.runtime.shared import MapBatch


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
        use_plan: Also take reserved capacity from the latest capacity plan in the ledger.
        spot_retries: Extra attempts granted to a task after spot interruptions.
        provisioners: Provisioners per cloud (``None`` = accounting only: run locally and
            account as if on the chosen instance).
        executor: Where bodies run: ``"local"`` (``None``, in this process), ``"dask"`` (on
            the Dask worker each provisioned instance boots; a fresh
            :class:`~prefect_cloudsched.adapters.execute.dask.DaskExecutor` per flow run), or an
            ``Executor`` instance.
        executor_options: Keyword arguments of ``DaskExecutor`` for ``executor="dask"``
            (``address``, ``cluster_kwargs``, ``join_timeout``, ``idle_timeout``, ...).
        label_task_runs: Which task runs get one tag naming the choice
            (``cloudsched:aws-spot``): ``"declared"`` (default) the tasks that declared needs
            (``@requires`` or need tags), ``"all"`` (or ``True``) every task, ``"none"`` (or
            ``False``) none. Tasks without needs run exactly as before — no tag, ``chose``
            log line or decision event (``"all"`` announces them too) — but are still in
            the ledger: a tag costs Prefect an API round trip per task run and every log
            line and event loads the API server (docs/benchmarks.md).
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

    A ``CloudSchedPolicy`` block also brings budget caps (hard: a placement that would
    cross one fails with ``BudgetExceeded``; soft: it runs and a
    ``cloudsched.budget.exceeded`` event is emitted), the spot share and a default
    deadline. At the end of each flow run the runner publishes its cost artifacts.

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
        label_task_runs: bool | str = "declared",
        live_prices: bool = True,
        pack_maps: bool = True,
        pools: Sequence[str | Any] | None = None,
        ledger: str | Any | None = None,
    ) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if spot_retries < 0:
            raise ValueError(f"spot_retries must be >= 0, got {spot_retries}")
        bad = {k: v for k, v in (reserved or {}).items() if not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"reserved counts must be whole numbers >= 0: {bad}")
        if ledger is not None and ledger_url is not None:
            raise ValueError("give either ledger (a block) or ledger_url, not both")
        if isinstance(pools, str) or any(
            not isinstance(p, str) and not hasattr(p, "build_provisioner") for p in pools or ()
        ):
            raise ValueError(
                f"pools must be a list of pool block names or AwsComputePool/GcpComputePool "
                f"blocks, got {pools!r}"
            )
        label_mode = _label_mode(label_task_runs)
        super().__init__(max_workers=max_workers)
        self._config: dict[str, Any] = dict(
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
            label_task_runs=label_mode,
            live_prices=live_prices,
            pack_maps=pack_maps,
            pools=tuple(pools or ()),
            ledger=ledger,
        )
        make_executor(executor, self._config["executor_options"])  # fail fast on bad options
        self.records: list[PlacementRecord] = []
        self._run: RunContext | None = None

    # ------------------------------------------------------------------ Prefect plumbing
    def duplicate(self) -> CloudSchedTaskRunner:
        """A fresh runner with the same configuration (the engine starts only duplicates)."""
        return type(self)(**self._config)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._config == self._config  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_run"] = None  # clients, threads and locks never travel
        return state

    def __enter__(self) -> CloudSchedTaskRunner:
        super().__enter__()
        try:
            self._run = RunContext.open(self._config, self.logger)
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)  # waits for running tasks first
        finally:
            if self._run is not None:
                run, self._run = self._run, None
                self.records = run.close()
                run.publish(self.records)

    @property
    def placement_state(self) -> PlacementState | None:
        """This run's dynamic state (reserved capacity, interruptions, blocked offers)."""
        return self._run.state if self._run else None

    # ------------------------------------------------------------------ submit
    def map(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> Any:
        """Submit one task per item; GPU tasks of the map may be packed onto shared instances."""
        run = self._run
        if run is None or not self._config["pack_maps"] or run.budget is not None:
            return super().map(task, parameters, wait_for)
        batch = MapBatch(run.pack)
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
        if not self._started or self._run is None:
            raise RuntimeError("The task runner must be started before submitting work.")
        run = self._run
        context_tags = TagsContext.get().current_tags
        resolved = resolve_needs(task.fn, task.tags, context_tags, current_overrides())
        needs = run.with_default_deadline(resolved.needs)
        submitted_at = datetime.now(UTC)
        flow_ctx = FlowRunContext.get()
        run_id = str(flow_ctx.flow_run.id) if flow_ctx and flow_ctx.flow_run else "no-flow-run"
        flow_name = flow_ctx.flow.name if flow_ctx and flow_ctx.flow else "unknown-flow"
        try:
            decision = run.decide_new(needs, submitted_at=submitted_at)
        except NoFeasibleOffer as err:
            return super().submit(failing_copy(task, err), parameters, wait_for, dependencies)
        batch = _MAP_BATCH.get() if needs.gpus else None
        label = self._config["label_task_runs"]
        # tasks that declared nothing "run as before": no tag, event or log line; a ledger row
        announce = label == "all" or resolved.declared
        placed = PlacedTask(
            run,
            task.name,
            needs,
            decision,
            submitted_at,
            run_id,
            flow_name,
            batch=batch,
            announce=announce,
        )
        remote = copy.copy(task)
        remote.fn = placed.wrap(task.fn, is_async=task.isasync)
        if decision.offer.option is PurchaseOption.SPOT and run.spot_retries:
            remote.retries = task.retries + run.spot_retries
            remote.retry_condition_fn = spot_retry_condition(task.retry_condition_fn, task.retries)
        if label == "none" or not announce:
            return super().submit(remote, parameters, wait_for, dependencies)
        with tags(decision.tag):
            return super().submit(remote, parameters, wait_for, dependencies)


#: The ``.map()`` call being submitted in this context, whose members may share instances.
_MAP_BATCH: ContextVar[MapBatch | None] = ContextVar("cloudsched_map_batch", default=None)


def _label_mode(value: bool | str) -> str:
    """``True``/``False`` are kept for old configurations: they mean "all"/"none"."""
    if isinstance(value, bool):
        return "all" if value else "none"
    if value not in ("declared", "all", "none"):
        raise ValueError(
            f'label_task_runs must be "declared", "all" or "none" (or a bool), got {value!r}'
        )
    return value


__all__ = ["CloudSchedTaskRunner", "resolve_policy"]
