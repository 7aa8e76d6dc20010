"""One flow run's scheduling context: catalog, policy, ledger writer, provisioners, executor.

Built when the runner starts (the engine enters a fresh duplicate per flow run) and closed when
it exits: closing releases every instance the run still holds, flushes the ledger and stops
the executor, so nothing outlives the flow run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prefect_cloudsched.adapters.execute.base import Executor, LocalExecutor
from prefect_cloudsched.adapters.ledger import BufferedWriter, Ledger
from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.core.budget import (
    BudgetExceeded,
    BudgetPolicy,
    BudgetTracker,
    month_start,
    spend_windows,
)
from prefect_cloudsched.core.catalog import Catalog, PurchaseOption, load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision, PlacementState, PolicyConfig, decide
from prefect_cloudsched.core.records import PlacementRecord, to_micro
from prefect_cloudsched.prefect import visibility
from prefect_cloudsched.prefect.run_log import log

#: Decisions remembered per run for identical needs (see ``RunContext.decide_new``).
MEMO_SIZE = 1024
#: Solver time limit of the online packing program (the first mapped task waits for it).
PACK_TIME_LIMIT_S = 2.0

if TYPE_CHECKING:
    from prefect_cloudsched.prefect.placed_task import PlacedTask


class RunContext:
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
        self._memo: dict[tuple[TaskNeeds, int], Decision] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: Mapping[str, Any], logger: Any) -> RunContext:
        policy, budget_policy, default_slack = _policy_parts(config["policy"])
        ledger = _open_ledger(config["ledger"], config["ledger_url"])
        provisioners = _provisioners(config["provisioners"], config["pools"], ledger.url)
        reserved = dict(config["reserved"])
        held = [_owned_reservations(provisioners, logger)]
        if config["use_plan"]:
            held.append(_plan_reservations(ledger))
        for source in held:
            for key, count in source.items():
                reserved[key] = reserved.get(key, 0) + count
        catalog = load_catalog(config["catalog_path"])
        if config["live_prices"]:
            catalog = _with_live_prices(catalog, provisioners, logger)
        executor = make_executor(config["executor"], config["executor_options"])
        context = cls(
            catalog=catalog,
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

    def decide_new(self, needs: TaskNeeds, *, submitted_at: datetime) -> Decision:
        """The decision for a fresh submission, reused for identical needs.

        A ``.map()`` submits many tasks with the same needs; while this run's state (idle
        reservations, interruptions, blocked offers) is unchanged and the deadline is
        relative to submission, ``decide()`` would return the same choice for each, so it
        runs once. An absolute deadline depends on the clock and is always decided afresh.
        """
        if isinstance(needs.deadline, datetime):
            return self.decide(needs, submitted_at=submitted_at)
        key = (needs, self.state.version)
        cached = self._memo.get(key)
        if cached is None:
            cached = self.decide(needs, submitted_at=submitted_at)
            with self._lock:
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[key] = cached
            return cached
        return replace(cached, decided_at=submitted_at, deadline=needs.deadline_at(submitted_at))

    def decide(self, needs: TaskNeeds, *, submitted_at: datetime) -> Decision:
        return decide(
            needs,
            self.catalog,
            now=datetime.now(UTC),
            submitted_at=submitted_at,
            state=self.state,
            config=self.policy,
        )

    def pack(self, tasks: Sequence[Any]) -> Any:
        """Pack a ``.map()``'s tasks onto instances (idle reserved capacity first)."""
        from prefect_cloudsched.core.planning.packing import pack_tasks

        result = pack_tasks(
            tasks,
            self.catalog,
            reserved_free=self.state.idle_reserved(),
            config=self.policy,
            time_limit_s=PACK_TIME_LIMIT_S,
        )
        self.logger.info(
            "packing %d mapped tasks: %s, expected $%.4f vs $%.4f one instance each (%.2f s)",
            len(tasks),
            result.status,
            result.cost,
            result.alone_cost,
            result.solve_seconds,
        )
        return result

    def with_default_deadline(self, needs: TaskNeeds) -> TaskNeeds:
        """Give a task without a deadline the policy's: its runtime plus the default slack."""
        if self.default_slack is None or needs.deadline is not None:
            return needs
        return needs.merged({"deadline": needs.est_runtime + self.default_slack})

    def admit(
        self, decision: Decision, needs: TaskNeeds, placed: PlacedTask, task_run_id: str
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
            log(f"{placed.task_name}: soft budget cap: {overrun.describe()}", level="warning")
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
        from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

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
        from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

        spec = CloudSchedPolicy.load_named(spec)
    config = resolve_policy(spec)
    to_budget = getattr(spec, "to_budget", None)
    slack = getattr(spec, "default_deadline_slack", None)
    return config, to_budget() if to_budget else None, slack() if slack else None


def _open_ledger(block: str | Any | None, url: str | None) -> Ledger:
    if block is None:
        return Ledger(url)
    if isinstance(block, str):
        from prefect_cloudsched.prefect.blocks import CloudSchedLedger

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
        from prefect_cloudsched.prefect.blocks import load_pool

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


def make_executor(spec: Executor | str | None, options: Mapping[str, Any]) -> Executor:
    """The executor for one flow run: new for the string forms, the given one otherwise."""
    if spec == "dask":
        from prefect_cloudsched.adapters.execute.dask import DaskExecutor

        return DaskExecutor(**options)
    if options:
        raise ValueError('executor_options apply only to executor="dask"')
    if spec is None or spec == "local":
        return LocalExecutor()
    if isinstance(spec, str):
        raise ValueError(f'executor must be "local", "dask" or an Executor, got {spec!r}')
    return spec


def _owned_reservations(provisioners: Mapping[str, Provisioner], logger: Any) -> dict[str, int]:
    """Reservations / committed use the clouds (or the pool settings) say we own."""
    owned: dict[str, int] = {}
    for cloud, provisioner in provisioners.items():
        read = getattr(provisioner, "owned_reservations", None)
        if read is None:
            continue
        try:
            found = read()
        except Exception as err:  # a planning aid, never a reason to fail the flow
            logger.warning("could not read %s reservations (%s); assuming none", cloud, err)
            continue
        for key, count in found.items():
            owned[key] = owned.get(key, 0) + int(count)
    if owned:
        logger.info("owned reservations used first: %s", owned)
    return owned


def _with_live_prices(
    catalog: Catalog, provisioners: Mapping[str, Provisioner], logger: Any
) -> Catalog:
    """AWS spot prices re-read from ``describe_spot_price_history`` when it answers.

    Re-priced offers carry ``source="live:..."``, which every decision records; offers the
    API did not price keep the snapshot's price and source.
    """
    aws = provisioners.get("aws")
    if aws is None or not hasattr(aws, "spot_prices"):
        return catalog
    from prefect_cloudsched.adapters.provision.aws import LIVE_SOURCE, refresh_spot_prices

    refreshed = refresh_spot_prices(catalog, aws)  # type: ignore[arg-type]
    live = sum(o.source == LIVE_SOURCE for o in refreshed.offers)
    logger.info("live AWS spot prices for %d offers; the rest from the snapshot", live)
    return refreshed


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


__all__ = ["RunContext", "make_executor", "resolve_policy"]
