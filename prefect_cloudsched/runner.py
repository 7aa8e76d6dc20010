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
import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.context import FlowRunContext, TagsContext, TaskRunContext, tags
from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_cloudsched import visibility
from prefect_cloudsched.budget import (
    BudgetExceeded,
    BudgetPolicy,
    BudgetTracker,
    month_start,
    spend_windows,
)
from prefect_cloudsched.catalog import Catalog, PurchaseOption, load_catalog
from prefect_cloudsched.errors import CapacityError, NoFeasibleOffer, SpotInterrupted
from prefect_cloudsched.execute.base import Executor, LocalExecutor, Placement
from prefect_cloudsched.ledger import BufferedWriter, Ledger
from prefect_cloudsched.needs import TaskNeeds, current_overrides, resolve_needs
from prefect_cloudsched.policy import Decision, PlacementState, PolicyConfig, cost_of, decide
from prefect_cloudsched.provision.base import InstanceHandle, Provisioner
from prefect_cloudsched.records import PlacementRecord, to_micro, to_usd

MAX_FALLBACKS = 6


class CloudSchedTaskRunner(ThreadPoolTaskRunner):
    """Cost-aware task runner: each task runs on the cheapest offer that meets its needs.

    Args:
        max_workers: Concurrent tasks (threads), as for ``ThreadPoolTaskRunner``.
        policy: A :class:`~prefect_cloudsched.policy.PolicyConfig`, a ``CloudSchedPolicy``
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
            :class:`~prefect_cloudsched.execute.dask.DaskExecutor` per flow run), or an
            ``Executor`` instance.
        executor_options: Keyword arguments of ``DaskExecutor`` for ``executor="dask"``
            (``address``, ``cluster_kwargs``, ``join_timeout``, ``idle_timeout``, ...).
        label_task_runs: Put one tag naming the choice (``cloudsched:aws-spot``) on each
            task run. Prefect acquires a concurrency slot per tag per task run (an API round
            trip), so flows of thousands of tiny tasks may prefer ``False``.
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
        label_task_runs: bool = True,
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
            label_task_runs=label_task_runs,
            pools=tuple(pools or ()),
            ledger=ledger,
        )
        _make_executor(executor, self._config["executor_options"])  # fail fast on bad options
        self.records: list[PlacementRecord] = []
        self._run: _RunContext | None = None

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
            self._run = _RunContext.open(self._config, self.logger)
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
            decision = run.decide(needs, submitted_at=submitted_at)
        except NoFeasibleOffer as err:
            return super().submit(_failing_copy(task, err), parameters, wait_for, dependencies)
        placed = _PlacedTask(run, task.name, needs, decision, submitted_at, run_id, flow_name)
        remote = copy.copy(task)
        remote.fn = placed.wrap(task.fn, is_async=task.isasync)
        if decision.offer.option is PurchaseOption.SPOT and run.spot_retries:
            remote.retries = task.retries + run.spot_retries
            remote.retry_condition_fn = _spot_retry_condition(task.retry_condition_fn, task.retries)
        if not self._config["label_task_runs"]:
            return super().submit(remote, parameters, wait_for, dependencies)
        with tags(decision.tag):
            return super().submit(remote, parameters, wait_for, dependencies)


class _RunContext:
    """Everything one flow run's runner owns: ledger writer, state, provisioners, executor."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        policy: PolicyConfig,
        ledger: Ledger,
        state: PlacementState,
        spot_retries: int,
        provisioners: Mapping[str, Provisioner],
        executor: Executor,
        logger: Any,
        budget: BudgetTracker | None = None,
        default_slack: timedelta | None = None,
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.ledger = ledger
        self.writer = BufferedWriter(ledger)
        self.state = state
        self.spot_retries = spot_retries
        self.provisioners = dict(provisioners)
        self.executor = executor
        self.logger = logger
        self.records: list[PlacementRecord] = []
        self.run_ids: set[str] = set()
        self.flow_names: dict[str, str] = {}
        self.budget = budget
        self.default_slack = default_slack
        self.refusals: list[str] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: Mapping[str, Any], logger: Any) -> _RunContext:
        policy, budget_policy, default_slack = _policy_parts(config["policy"])
        ledger = _open_ledger(config["ledger"], config["ledger_url"])
        provisioners = _provisioners(config["provisioners"], config["pools"], ledger.url)
        reserved = dict(config["reserved"])
        if config["use_plan"]:
            for key, count in _plan_reservations(ledger).items():
                reserved[key] = reserved.get(key, 0) + count
        executor = _make_executor(config["executor"], config["executor_options"])
        context = cls(
            catalog=load_catalog(config["catalog_path"]),
            policy=policy,
            ledger=ledger,
            state=PlacementState(reserved_free=reserved),
            spot_retries=config["spot_retries"],
            provisioners=provisioners,
            executor=executor,
            logger=logger,
            budget=_budget_tracker(budget_policy, ledger),
            default_slack=default_slack,
        )
        executor.start()  # last: nothing after it can fail and leak a cluster
        return context

    def decide(self, needs: TaskNeeds, *, submitted_at: datetime) -> Decision:
        return decide(
            needs,
            self.catalog,
            now=datetime.now(UTC),
            submitted_at=submitted_at,
            state=self.state,
            config=self.policy,
        )

    def with_default_deadline(self, needs: TaskNeeds) -> TaskNeeds:
        """Give a task without a deadline the policy's: its runtime plus the default slack."""
        if self.default_slack is None or needs.deadline is not None:
            return needs
        return needs.merged({"deadline": needs.est_runtime + self.default_slack})

    def admit(
        self, decision: Decision, needs: TaskNeeds, placed: _PlacedTask, task_run_id: str
    ) -> tuple[Decision, int | None]:
        """Apply the spot share and the budget caps to a decision before it provisions.

        Returns:
            The decision to run (possibly on-demand instead of spot, or a cheaper fallback)
            and the budget hold to settle when it ends.

        Raises:
            BudgetExceeded: a hard cap refuses it (the task fails with this message).
        """
        budget = self.budget
        if budget is None:
            return decision, None
        spot_ok = budget.spot_allowed()
        if decision.offer.option is PurchaseOption.SPOT and not spot_ok:
            decision = self.decide(
                needs.merged({"spot_ok": False}), submitted_at=placed.submitted_at
            )
            decision = replace(
                decision,
                reasons=(
                    *decision.reasons,
                    f"spot share cap {budget.policy.spot_max_share:.0%} reached: on-demand",
                ),
            )
        hold, overruns = budget.admit(to_micro(decision.expected_cost))
        if hold is None and budget.policy.fallback_cheapest:
            relaxed = needs.merged(
                {"deadline": None} if spot_ok else {"deadline": None, "spot_ok": False}
            )
            cheaper = decide(
                relaxed,
                self.catalog,
                now=datetime.now(UTC),
                state=self.state,
                config=replace(self.policy, max_spot_band=None),
            )
            if cheaper.expected_cost < decision.expected_cost:
                hold, fallback_overruns = budget.admit(to_micro(cheaper.expected_cost))
                if hold is not None:
                    overruns = fallback_overruns
                    decision = replace(
                        cheaper,
                        reasons=(
                            *cheaper.reasons,
                            f"budget: cheapest fallback (deadline risk accepted) instead of "
                            f"{decision.offer.describe()}",
                        ),
                    )
        ids = dict(task_name=placed.task_name, flow_run_id=placed.run_id, task_run_id=task_run_id)
        if hold is None:
            error = BudgetExceeded(placed.task_name, overruns[0])
            visibility.emit_budget_exceeded(overruns[0], refused=True, decision=decision, **ids)
            with self._lock:
                self.refusals.append(str(error))
            raise error
        for overrun in budget.first_report(overruns):
            visibility.emit_budget_exceeded(overrun, refused=False, decision=decision, **ids)
            _log(f"{placed.task_name}: soft budget cap: {overrun.describe()}", level="warning")
        budget.count_placement(spot=decision.offer.option is PurchaseOption.SPOT)
        return decision, hold

    def release_hold(self, hold: int | None) -> None:
        """Drop a budget hold of a placement that never started."""
        if self.budget is not None:
            self.budget.release(hold)

    def add(self, record: PlacementRecord, hold: int | None = None) -> None:
        with self._lock:
            self.records.append(record)
        if self.budget is not None:
            self.budget.settle(hold, record.cost_micro)
        self.writer.put(record)

    def publish(self, records: list[PlacementRecord]) -> None:
        """Cost artifacts of each flow run this runner served (only real, API-backed runs)."""
        for run_id, flow_name in self.flow_names.items():
            if visibility.is_run_id(run_id):
                visibility.publish_cost_artifacts(
                    [r for r in records if r.flow_run_id == run_id],
                    flow_run_id=run_id,
                    flow_name=flow_name,
                    refusals=self.refusals,
                )

    def close(self) -> list[PlacementRecord]:
        """Release every instance of this run, flush the ledger, stop the executor."""
        try:
            for provisioner in self.provisioners.values():
                for run_id in self.run_ids:
                    try:
                        released = provisioner.release_run(run_id)
                    except Exception as err:  # keep closing the others; the reaper is backup
                        self.logger.error(
                            "could not release %s instances of run %s: %s (run "
                            "`prefect-cloudsched reap`)",
                            provisioner.cloud,
                            run_id,
                            err,
                        )
                    else:
                        if released:
                            self.logger.info(
                                "released %d leftover %s instance(s) of run %s",
                                released,
                                provisioner.cloud,
                                run_id,
                            )
        finally:
            self.executor.stop()
            self.writer.close()
            for error in self.writer.errors:
                self.logger.error(error)
        return list(self.records)


def resolve_policy(policy: PolicyConfig | Any | str | None) -> PolicyConfig:
    """Accept a ``PolicyConfig``, a ``CloudSchedPolicy`` block, or a saved block's name."""
    if policy is None:
        return PolicyConfig()
    if isinstance(policy, PolicyConfig):
        return policy
    if isinstance(policy, str):
        from prefect_cloudsched.blocks import CloudSchedPolicy

        policy = CloudSchedPolicy.load_named(policy)
    to_config = getattr(policy, "to_policy_config", None)
    if to_config is None:
        raise TypeError(
            f"policy must be a PolicyConfig, a CloudSchedPolicy or a block name; "
            f"got {type(policy).__name__}"
        )
    return to_config()


def _policy_parts(
    spec: PolicyConfig | Any | str | None,
) -> tuple[PolicyConfig, BudgetPolicy | None, timedelta | None]:
    """Placement knobs, budget and default deadline slack of a policy (block loaded once)."""
    if isinstance(spec, str):
        from prefect_cloudsched.blocks import CloudSchedPolicy

        spec = CloudSchedPolicy.load_named(spec)
    config = resolve_policy(spec)
    to_budget = getattr(spec, "to_budget", None)
    slack = getattr(spec, "default_deadline_slack", None)
    return config, to_budget() if to_budget else None, slack() if slack else None


def _open_ledger(block: str | Any | None, url: str | None) -> Ledger:
    if block is None:
        return Ledger(url)
    if isinstance(block, str):
        from prefect_cloudsched.blocks import CloudSchedLedger

        block = CloudSchedLedger.load_named(block)
    return block.get_ledger()


def _provisioners(
    explicit: Mapping[str, Provisioner], pools: Sequence[str | Any], ledger_url: str
) -> dict[str, Provisioner]:
    """Explicit provisioners plus one per pool block; two for one cloud is an error.

    Pool provisioners record their instance rows in the run's ledger.
    """
    provisioners = dict(explicit)
    if pools:
        from prefect_cloudsched.blocks import load_pool

        for spec in pools:
            pool = load_pool(spec)
            if pool.cloud in provisioners:
                raise ValueError(
                    f"two provisioners for {pool.cloud}: keep one pool per cloud "
                    "(and no explicit provisioner for a cloud that has a pool)"
                )
            provisioners[pool.cloud] = pool.build_provisioner(ledger_url=ledger_url)
    return provisioners


def _budget_tracker(policy: BudgetPolicy | None, ledger: Ledger) -> BudgetTracker | None:
    """This run's budget view; the ledger's day/month spend is read once, here."""
    if policy is None or (not policy.caps_micro() and policy.spot_max_share >= 1):
        return None
    today = month = 0
    if policy.needs_history:
        now = datetime.now(UTC)
        today, month = spend_windows(ledger.placements(since=month_start(now)), now)
    return BudgetTracker(policy, spent_today_micro=today, spent_month_micro=month)


def _make_executor(spec: Executor | str | None, options: Mapping[str, Any]) -> Executor:
    """The executor for one flow run: new for the string forms, the given one otherwise."""
    if spec == "dask":
        from prefect_cloudsched.execute.dask import DaskExecutor

        return DaskExecutor(**options)
    if options:
        raise ValueError('executor_options apply only to executor="dask"')
    if spec is None or spec == "local":
        return LocalExecutor()
    if isinstance(spec, str):
        raise ValueError(f'executor must be "local", "dask" or an Executor, got {spec!r}')
    return spec


def _plan_reservations(ledger: Ledger) -> dict[str, int]:
    plan = ledger.latest_plan()
    if not plan:
        return {}
    reserved: dict[str, int] = {}
    for item in plan.get("reserved", []):
        key, count = item.get("capacity_key"), int(item.get("count", 0))
        if key and count > 0:
            reserved[key] = reserved.get(key, 0) + count
    return reserved


class _PlacedTask:
    """The body of one submitted task, wrapped so it runs on (and is billed to) a placement."""

    def __init__(
        self,
        run: _RunContext,
        task_name: str,
        needs: TaskNeeds,
        decision: Decision,
        submitted_at: datetime,
        run_id: str,
        flow_name: str,
    ) -> None:
        self.run = run
        self.task_name = task_name
        self.needs = needs
        self.first_decision = decision
        self.submitted_at = submitted_at
        self.run_id = run_id
        self.flow_name = flow_name
        run.run_ids.add(run_id)
        run.flow_names[run_id] = flow_name

    def wrap(self, fn: Callable[..., Any], *, is_async: bool) -> Callable[..., Any]:
        if is_async:

            @functools.wraps(fn)
            async def dispatch_async(*args: Any, **kwargs: Any) -> Any:
                attempt = self._begin()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as err:
                    self._end(attempt, err)
                    raise
                self._end(attempt, None)
                return result

            return dispatch_async

        @functools.wraps(fn)
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            attempt = self._begin()
            try:
                result = self.run.executor.run(lambda: fn(*args, **kwargs), attempt.placement)
            except BaseException as err:
                self._end(attempt, err)
                raise
            self._end(attempt, None)
            return result

        return dispatch

    # ------------------------------------------------------------------ one attempt
    def _begin(self) -> _Attempt:
        ctx = TaskRunContext.get()
        task_run_id = str(ctx.task_run.id) if ctx else "no-task-run"
        number = ctx.task_run.run_count if ctx else 1
        needs = self.needs
        if number > 1 and number > self.run.spot_retries:
            needs = needs.merged({"spot_ok": False})  # guarantee the chain terminates
        decision = (
            self.first_decision
            if number <= 1
            else self.run.decide(needs, submitted_at=self.submitted_at)
        )
        for _ in range(MAX_FALLBACKS):
            decision, hold = self.run.admit(decision, needs, self, task_run_id)
            try:
                handle = self._claim(decision)
            except BaseException:
                self.run.release_hold(hold)
                raise
            if handle is not False:
                break
            self.run.release_hold(hold)
            decision = self.run.decide(needs, submitted_at=self.submitted_at)
        else:
            raise NoFeasibleOffer(
                f"{self.task_name}: every fallback offer failed to start; "
                f"blocked: {sorted(self.run.state.blocked)}"
            )
        _log(f"{self.task_name}: {decision.explanation()}")
        visibility.emit_decided(
            decision,
            task_name=self.task_name,
            flow_run_id=self.run_id,
            task_run_id=task_run_id,
            attempt=number,
        )
        placement = Placement(
            decision=decision,
            run_id=self.run_id,
            task_run_id=task_run_id,
            attempt=number,
            instance_id=handle.instance_id if handle else None,
        )
        if handle is not None:
            self.run.executor.attach(handle, placement)
        return _Attempt(placement, handle, datetime.now(UTC), time.perf_counter(), hold)

    def _claim(self, decision: Decision) -> InstanceHandle | bool | None:
        """Reserve capacity and start an instance; False means "re-decide"."""
        offer = decision.offer
        if offer.option is PurchaseOption.RESERVED and not self.run.state.take_reserved(
            offer.capacity_key
        ):
            return False
        provisioner = self.run.provisioners.get(offer.cloud)
        if provisioner is None:
            return None
        try:
            return provisioner.ensure(
                offer,
                run_id=self.run_id,
                task_name=self.task_name,
                startup_script=self.run.executor.startup_script(offer, self.run_id),
            )
        except CapacityError as err:
            if offer.option is PurchaseOption.RESERVED:
                self.run.state.release_reserved(offer.capacity_key)
            self.run.state.block(offer.key, f"{err.code}")
            _log(f"{self.task_name}: {err}; falling back to the next offer", level="warning")
            return False

    def _end(self, attempt: _Attempt, error: BaseException | None) -> None:
        decision, handle = attempt.placement.decision, attempt.handle
        provisioner = self.run.provisioners.get(decision.offer.cloud) if handle else None
        try:
            if error is None and handle is not None and provisioner is not None:
                provisioner.check(handle)  # an interrupted instance loses the work
        except SpotInterrupted as err:
            error = err
            raise
        finally:
            runtime = time.perf_counter() - attempt.t0
            if handle is not None and provisioner is not None:
                self.run.executor.detach(handle)
                provisioner.release(handle)
            if decision.offer.option is PurchaseOption.RESERVED:
                self.run.state.release_reserved(decision.offer.capacity_key)
            self._record(attempt, runtime, error)

    def _record(self, attempt: _Attempt, runtime: float, error: BaseException | None) -> None:
        decision, placement = attempt.placement.decision, attempt.placement
        offer = decision.offer
        cost = to_micro(cost_of(offer, runtime))
        interrupted = isinstance(error, SpotInterrupted)
        if interrupted:
            self.run.state.record_interruption(offer.capacity_key)
            self.run.ledger.record_interruption(
                flow_run_id=self.run_id,
                task_run_id=placement.task_run_id,
                task_name=self.task_name,
                offer_key=offer.key,
                instance_id=placement.instance_id,
                wasted_micro=cost,
                detail=str(error),
            )
            _log(f"{self.task_name}: {error}; will re-place", level="warning")
            visibility.emit_interrupted(
                decision,
                task_name=self.task_name,
                flow_run_id=self.run_id,
                task_run_id=placement.task_run_id,
                instance_id=placement.instance_id,
                wasted_usd=float(to_usd(cost)),
            )
        state = "interrupted" if interrupted else ("failed" if error else "completed")
        self.run.add(
            PlacementRecord(
                flow_run_id=self.run_id,
                flow_name=self.flow_name,
                task_run_id=placement.task_run_id,
                task_name=self.task_name,
                cloud=offer.cloud,
                region=offer.region,
                zone=offer.zone,
                instance_type=offer.instance_type,
                option=offer.option.value,
                offer_key=offer.key,
                gpu_type=offer.gpu_type,
                gpus=offer.gpu_count,
                price_micro_per_hour=to_micro(offer.usd_per_hour),
                started_at=attempt.started_at,
                ended_at=datetime.now(UTC),
                runtime_s=runtime,
                cost_micro=cost,
                baseline_micro=0
                if interrupted
                else to_micro(cost_of(decision.baseline_offer, runtime)),
                interruptions=int(interrupted),
                wasted_micro=cost if interrupted else 0,
                state=state,
                instance_id=placement.instance_id,
                explanation=decision.explanation(),
                decision_json=json.dumps({**decision.to_dict(), "attempt": placement.attempt}),
            ),
            attempt.hold,
        )


class _Attempt:
    __slots__ = ("handle", "hold", "placement", "started_at", "t0")

    def __init__(
        self,
        placement: Placement,
        handle: InstanceHandle | None,
        started_at: datetime,
        t0: float,
        hold: int | None = None,
    ) -> None:
        self.placement = placement
        self.handle = handle
        self.started_at = started_at
        self.t0 = t0
        self.hold = hold


def _spot_retry_condition(
    user_condition: Callable[..., Any] | None, user_retries: int
) -> Callable[..., bool]:
    """Retry spot interruptions always; other failures as the user configured."""
    other_failures: Counter[Any] = Counter()

    def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
        try:
            state.result()
        except SpotInterrupted:
            return True
        except BaseException:
            pass
        if user_condition is not None:
            return bool(user_condition(task, task_run, state))
        other_failures[task_run.id] += 1
        return other_failures[task_run.id] <= user_retries

    return retry_condition


def _failing_copy(task: Any, error: NoFeasibleOffer) -> Any:
    """A copy of ``task`` that fails at once with the placement error (a clean Failed state)."""
    message = f"{task.name}: cannot be placed: {error}"

    @functools.wraps(task.fn)
    def fail(*_: Any, **__: Any) -> Any:
        raise NoFeasibleOffer(message)

    @functools.wraps(task.fn)
    async def fail_async(*_: Any, **__: Any) -> Any:
        raise NoFeasibleOffer(message)

    failing = copy.copy(task)
    failing.fn = fail_async if task.isasync else fail
    failing.retries = 0
    return failing


def _log(message: str, level: str = "info") -> None:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        logger = get_run_logger()
    except MissingContextError:
        return
    getattr(logger, level)(message)
