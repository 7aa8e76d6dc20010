"""One flow run's session: the sole owner of its state, its ledger writer and its budget.

The Prefect layer calls four things, in this order, and nothing else:

1. :meth:`Session.submit` — at ``.submit()``/``.map()``: decide where the task runs.
2. :meth:`Session.place` — when an attempt starts: admission (spot share, budget), start or
   share an instance with capacity fallback, attach the executor, announce the placement
   that really started → an :class:`~prefect_cloudsched.runtime.attempt.Attempt`.
3. :meth:`Session.run` — the body, on the attempt's placement.
4. :meth:`Session.finish` — check for a spot loss, release the instance and capacity,
   write one ledger row; whatever fails on the way, the instance is released.

:meth:`Session.close` releases whatever the run still holds, flushes the ledger and stops
the executor, so nothing outlives the flow run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from prefect_cloudsched.adapters.execute.base import Executor, Placement
from prefect_cloudsched.adapters.ledger import BufferedWriter, Ledger
from prefect_cloudsched.adapters.provision.base import InstanceHandle, Provisioner
from prefect_cloudsched.adapters.reservations import HeldReservations
from prefect_cloudsched.core.budget import BudgetExceeded, BudgetPolicy, BudgetTracker
from prefect_cloudsched.core.catalog import Catalog, PurchaseOption, load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision, PlacementState, PolicyConfig, cost_of
from prefect_cloudsched.core.policy.admission import (
    OfferUnavailable,
    admit,
    needs_for_attempt,
    start_with_fallback,
)
from prefect_cloudsched.core.records import PlacementRecord, to_micro
from prefect_cloudsched.errors import CapacityError, DeadlineAtRisk, MoveRequested, SpotInterrupted
from prefect_cloudsched.runtime import build
from prefect_cloudsched.runtime.attempt import Attempt, TaskIds, TaskSpec
from prefect_cloudsched.runtime.budget_watch import BudgetWatch, launch_floor_micro, open_budget
from prefect_cloudsched.runtime.config import SessionSettings
from prefect_cloudsched.runtime.deciding import RunDecisions
from prefect_cloudsched.runtime.observer import LoggingObserver, RunObserver
from prefect_cloudsched.runtime.recording import (
    attempt_record,
    interruption_row,
    transfer_record,
)
from prefect_cloudsched.runtime.shared import MapBatch
from prefect_cloudsched.runtime.spot_live import SpotControlSettings, SpotLive

#: Solver time limit of the online packing program (the first mapped task waits for it).
PACK_TIME_LIMIT_S = 2.0

R = TypeVar("R")


class Session:
    """Everything one flow run owns: ledger writer, placement state, budget, instances."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        policy: PolicyConfig,
        ledger: Ledger,
        state: PlacementState,
        spot_retries: int,
        provisioners: dict[str, Provisioner],
        executor: Executor,
        observer: RunObserver | None = None,
        budget: BudgetTracker | None = None,
        default_slack: timedelta | None = None,
        reserved: HeldReservations | None = None,
        on_deadline_risk: str = "warn",
        spot_control: SpotControlSettings | None = None,
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.ledger = ledger
        self.writer = BufferedWriter(ledger)
        self.state = state
        self.spot_retries = spot_retries
        self.provisioners = provisioners
        self.executor = executor
        self.observer = observer or LoggingObserver()
        self.budget = budget
        self.default_slack = default_slack
        self.reserved = reserved or HeldReservations({})
        self.on_deadline_risk = on_deadline_risk
        self.records: list[PlacementRecord] = []
        self.flow_names: dict[str, str] = {}
        self.refusals: list[str] = []
        self.decisions = RunDecisions(catalog, policy, state)
        self._lock = threading.Lock()
        self._watch = BudgetWatch(budget, self._stop_over_budget) if budget else None
        # spot control (issue 12): checkpointable spot tasks with a deadline run under a
        # SpotController (runtime/spot_live.py); the Prefect layer sets spot_live.mover
        self.spot_live = SpotLive(self)
        (spot_control or SpotControlSettings()).apply(self.spot_live)

    @classmethod
    def open(cls, settings: SessionSettings, observer: RunObserver | None = None) -> Session:
        """Build a session from resolved settings; the executor starts last."""
        observer = observer or LoggingObserver()
        provisioners = dict(settings.provisioners)
        if settings.execution == "accounting":
            provisioners = {}  # accounting only: no instance is ever started
        executor = build.make_executor(
            settings.executor,
            settings.executor_options,
            provisioners=provisioners,
            execution=settings.execution,
        )
        ledger = settings.ledger
        catalog = load_catalog(settings.catalog_path)
        reserved = build.reserved_capacity(
            settings.reserved, provisioners, ledger, use_plan=settings.use_plan,
            observer=observer, catalog=catalog, policy=settings.policy,
        )  # fmt: skip
        if settings.live_prices:
            catalog = build.with_live_prices(catalog, provisioners, observer)
        session = cls(
            catalog=catalog,
            policy=settings.policy,
            ledger=ledger,
            state=PlacementState(reserved_free=dict(reserved.counts)),
            spot_retries=settings.spot_retries,
            provisioners=provisioners,
            executor=executor,
            observer=observer,
            budget=open_budget(settings.budget, ledger),
            default_slack=settings.default_slack,
            reserved=reserved,
            on_deadline_risk=settings.on_deadline_risk,
            spot_control=settings.spot_control,
        )
        executor.start()  # last: nothing after it can fail and leak a cluster
        return session

    # ------------------------------------------------------------------ deciding
    def decide(
        self, needs: TaskNeeds, *, submitted_at: datetime | None = None, any_spot_band: bool = False
    ) -> Decision:
        """``decide()`` in this run's current state (idle reservations, blocked offers)."""
        return self.decisions.decide(needs, submitted_at=submitted_at, any_spot_band=any_spot_band)

    def with_default_deadline(self, needs: TaskNeeds) -> TaskNeeds:
        """Give a task without a deadline the policy's: its runtime plus the default slack."""
        if self.default_slack is None or needs.deadline is not None:
            return needs
        return needs.merged({"deadline": needs.est_runtime + self.default_slack})

    def submit(
        self,
        task_name: str,
        needs: TaskNeeds,
        *,
        flow_run_id: str,
        flow_name: str,
        announce: bool,
        batch: MapBatch | None = None,
    ) -> TaskSpec:
        """Decide where a submitted task runs (raises ``NoFeasibleOffer`` when nothing fits)."""
        submitted_at = datetime.now(UTC)
        needs = self.with_default_deadline(needs)
        decision = self.decisions.fresh(needs, submitted_at=submitted_at)
        with self._lock:
            self.flow_names[flow_run_id] = flow_name
        if self.budget is not None:
            self.budget.bind_run(flow_run_id)  # the run its shared budget holds are kept under
        spec = TaskSpec(task_name, needs, decision, submitted_at, flow_run_id, flow_name, announce)
        if batch is not None and needs.gpus:
            spec.batch, spec.batch_index = batch, batch.add(needs, submitted_at)
        return spec

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
        self.observer.log(
            f"packing {len(tasks)} mapped tasks ({result.status}, {result.solve_seconds:.2f} s): "
            f"{result.reason}"
        )
        return result

    @property
    def packs_maps(self) -> bool:
        """Maps are packed only without a budget (budgets are admitted per task)."""
        return self.budget is None

    # ------------------------------------------------------------------ one attempt
    def place(self, spec: TaskSpec, *, task_run_id: str, attempt: int) -> Attempt:
        """Admit, start (or share) and attach the placement of one attempt.

        Raises:
            BudgetExceeded: a hard cap refuses the attempt.
            DeadlineAtRisk: ``on_deadline_risk="fail"`` and the deadline cannot be met.
            NoFeasibleOffer: every fallback offer failed to start.
            SpotInterrupted: the instance was reclaimed before its worker joined.
        """
        needs = needs_for_attempt(spec.needs, attempt, self.spot_retries)
        decision = spec.decision
        if attempt > 1:
            decision = self.decide(needs, submitted_at=spec.submitted_at)
        # spot control hook (issue 12): the controller picks spot / on-demand, or the task
        # waits here with no instance; a refused launch re-asks it (see _start_alone)
        controlled = SpotLive.controls(spec.needs)
        if controlled:
            needs, decision = spec.needs, self.spot_live.choose(spec, task_run_id, decision)
        self._check_deadline(spec, decision, task_run_id)
        shared = (
            spec.batch.instance_for(spec.batch_index)
            if spec.batch and attempt <= 1 and not controlled
            else None
        )
        handle: InstanceHandle | None = None
        hold: int | None = None
        launch_t0: float | None = None
        if shared is not None:
            shared_decision = shared.decision_for(spec.decision)
            try:
                handle = shared.claim(lambda: self._start(shared_decision, spec))
                decision = shared_decision
            except OfferUnavailable:  # the shared instance could not start: go alone
                shared = None
        if shared is None:
            decision, (handle, hold, launch_t0) = self._start_alone(
                decision, needs, spec, task_run_id, controlled=controlled
            )
        placement = Placement(
            decision, spec.flow_run_id, task_run_id, attempt, handle.instance_id if handle else None
        )
        started = Attempt(
            spec, placement, handle, datetime.now(UTC), time.perf_counter(), hold, shared
        )
        if decision.offer.option is PurchaseOption.RESERVED:
            started.reservation_source = self._reservation_source(decision, shared is not None)
        if controlled:  # a move to another region pays its checkpoint's transfer
            started.checkpoint_from, started.egress_micro = self.spot_live.transfer(
                task_run_id, decision.offer
            )
        if handle is not None and launch_t0 is not None:
            started.launch_t0 = launch_t0
            started.tail_s = self.provisioners[decision.offer.cloud].warm_seconds
        if self._watch is not None:  # from before the worker joins: that time is billed too
            self._watch.add(started)
        try:
            if spec.announce or attempt > 1 or handle is not None:
                self.observer.log(f"{spec.task_name}: {decision.explanation()}")
                self.observer.decided(decision, task=started, attempt=attempt)
            if handle is not None:
                self.executor.attach(handle, placement)
        except BaseException as err:  # the instance is running: never leave it behind
            if self._watch is not None:
                self._watch.remove(started)
            if started.stopped_by is not None:  # the cap stopped it while its worker joined
                self._end(started, started.stopped_by, attached=False)
                raise started.stopped_by from err
            lost = self._interrupted(handle)  # reclaimed before its worker joined?
            self._end(started, lost or err, attached=False)
            if lost is not None:
                raise lost from err  # a spot loss: retried and re-placed like any other
            raise
        if controlled:  # spot control hook (issue 12): re-evaluate while the body runs
            self.spot_live.started(started)
        return started

    def run(self, attempt: Attempt, call: Callable[[], R]) -> R:
        """Run the body on the attempt's placement."""
        return self.executor.run(call, attempt.placement)

    def finish(self, attempt: Attempt, error: BaseException | None) -> None:
        """End an attempt: release what it held and record it.

        Raises:
            SpotInterrupted: the instance was reclaimed while the body ran (its result is
                lost); the task is retried and re-placed.
            BudgetExceeded: the attempt was stopped before it crossed a hard cap.
        """
        if self._watch is not None:
            self._watch.remove(attempt)
        stopped = attempt.stopped_by
        if stopped is not None:
            error = stopped
        try:
            # a body that yielded for a move (issue 12) may also have lost its spot instance
            if error is None or isinstance(error, MoveRequested):
                self._check_instance(attempt)
                self.spot_live.check_lost(attempt)  # a loss its monitor saw while it ran
        except SpotInterrupted as lost:
            error = lost
            raise
        finally:
            self._end(attempt, error)
            self.spot_live.ended(attempt, error)  # spot control hook (issue 12)
        if stopped is not None:
            raise stopped

    def _start_alone(
        self,
        decision: Decision,
        needs: TaskNeeds,
        spec: TaskSpec,
        task_run_id: str,
        *,
        controlled: bool = False,
    ) -> tuple[Decision, tuple[InstanceHandle | None, int | None, float]]:
        """Admit and start ``decision``, falling back to the next offer on capacity errors.

        Returns:
            The decision that really started (admission may have changed it), and its
            instance (``None`` without a provisioner) with its budget hold and the
            ``perf_counter()`` of the launch request.
        """

        tried = [decision]

        def admit_and_start(
            choice: Decision,
        ) -> tuple[Decision, tuple[InstanceHandle | None, int | None, float]]:
            tried[0] = choice
            admitted = self._admit(choice, needs, spec, task_run_id)
            try:
                launch_t0 = time.perf_counter()
                handle = self._start(admitted.decision, spec)
                return admitted.decision, (handle, admitted.hold, launch_t0)
            except BaseException:
                self._release_hold(admitted.hold)
                raise

        return start_with_fallback(
            decision,
            needs,
            admit_and_start,
            # spot control hook (issue 12): a refused launch is an observation, re-ask
            (lambda _: self.spot_live.refused(spec, task_run_id, tried[0]))
            if controlled
            else (lambda n: self.decide(n, submitted_at=spec.submitted_at)),
            what=spec.task_name,
            blocked=lambda: sorted(self.state.blocked),
        )

    def _admit(self, decision: Decision, needs: TaskNeeds, spec: TaskSpec, task_run_id: str):
        ids = TaskIds(spec.task_name, spec.flow_run_id, task_run_id)
        try:
            admitted = admit(
                decision,
                needs,
                self.budget,
                lambda n, any_spot_band=False: self.decide(
                    n, submitted_at=spec.submitted_at, any_spot_band=any_spot_band
                ),
                task_name=spec.task_name,
                floor=lambda d: launch_floor_micro(self.provisioners, d, self.budget),
            )
        except BudgetExceeded as refused:
            self.observer.budget_exceeded(
                refused.overrun, refused=True, decision=decision, task=ids
            )
            with self._lock:
                self.refusals.append(str(refused))
            raise
        for overrun in admitted.to_report:
            self.observer.budget_exceeded(
                overrun, refused=False, decision=admitted.decision, task=ids
            )
            self.observer.log(f"{spec.task_name}: soft budget cap: {overrun.describe()}", "warning")
        return admitted

    def _start(self, decision: Decision, spec: TaskSpec) -> InstanceHandle | None:
        """Take reserved capacity and start an instance (``None``: accounting only).

        Raises:
            OfferUnavailable: the reservation is taken or the cloud has no capacity; the
                offer is blocked for this run, so the next decision avoids it.
        """
        offer = decision.offer
        reserved = offer.option is PurchaseOption.RESERVED
        if reserved and not self.state.take_reserved(offer.capacity_key):
            raise OfferUnavailable(offer.key)
        provisioner = self.provisioners.get(offer.cloud)
        if provisioner is None:
            return None
        run_id = spec.flow_run_id
        try:
            return provisioner.ensure(
                offer,
                run_id=run_id,
                task_name=spec.task_name,
                startup_script=self.executor.startup_script(offer, run_id),
            )
        except CapacityError as err:
            if reserved:
                self.state.release_reserved(offer.capacity_key)
            self.state.block(offer.key, f"{err.code}")
            self.observer.log(f"{spec.task_name}: {err}; falling back to the next offer", "warning")
            raise OfferUnavailable(offer.key) from err

    def _reservation_source(self, decision: Decision, shared: bool) -> str | None:
        """Which reservation pays for this placement (owned, declared, a bought plan).

        A lone placement takes a unit (given back when it ends); members of a shared
        instance name the source that unit came from without taking another.
        """
        key = decision.offer.capacity_key
        if shared:
            return next(iter(self.reserved.sources(key)), None)
        return self.reserved.take(key)

    def _check_deadline(self, spec: TaskSpec, decision: Decision, task_run_id: str) -> None:
        if not decision.deadline_at_risk:
            return
        message = (
            f"{spec.task_name}: deadline at risk: {spec.needs.est_runtime} of work estimated "
            f"and the deadline is {decision.deadline.isoformat() if decision.deadline else '?'}"
        )
        if self.on_deadline_risk == "fail":
            raise DeadlineAtRisk(message + "; failed before start (on_deadline_risk='fail')")
        self.observer.log(message + "; running on the fastest safe placement", "warning")

    def _check_instance(self, attempt: Attempt) -> None:
        handle = attempt.handle
        provisioner = self.provisioners.get(handle.cloud) if handle else None
        if handle is not None and provisioner is not None:
            provisioner.check(handle)  # an interrupted instance loses the work

    def _interrupted(self, handle: InstanceHandle | None) -> SpotInterrupted | None:
        """The interruption that explains a failed attach, if the cloud reports one."""
        provisioner = self.provisioners.get(handle.cloud) if handle else None
        if handle is None or provisioner is None:
            return None
        try:
            provisioner.check(handle)
        except SpotInterrupted as err:
            return err
        except Exception:  # the check itself failed: keep the original error
            return None
        return None

    def _release_hold(self, hold: int | None) -> None:
        if self.budget is not None:
            self.budget.release(hold)

    def _end(self, attempt: Attempt, error: BaseException | None, *, attached: bool = True) -> None:
        """Release the instance and capacity, then record the attempt (never raises).

        Bookkeeping errors are logged, never raised: an error here would replace the
        body's own outcome (e.g. a ``SpotInterrupted`` that must be retried).
        """
        decision, handle = attempt.decision, attempt.handle
        provisioner = self.provisioners.get(decision.offer.cloud) if handle else None
        billed_s = attempt.billed_seconds(time.perf_counter())
        cost, last = to_micro(cost_of(decision.offer, billed_s)), True
        if attempt.shared is not None:  # the last member out releases the instance
            cost, last = attempt.shared.leave(attempt.spec.needs, billed_s)
        try:
            if handle is not None and provisioner is not None and attached:
                self.executor.detach(handle)
        except Exception as err:
            self.observer.log(
                f"{attempt.task_name}: detaching the executor failed: {err}", "warning"
            )
        finally:
            try:
                if handle is not None and provisioner is not None and last and not attempt.released:
                    provisioner.release(handle)
                    attempt.released_t = time.perf_counter()
            except Exception as err:  # the run's close() and the reaper are the backup
                self.observer.log(
                    f"{attempt.task_name}: could not release {handle.instance_id if handle else ''}"
                    f": {err} (it is released when the run closes, or by `reap`)",
                    "error",
                )
            if decision.offer.option is PurchaseOption.RESERVED and last:
                self.state.release_reserved(decision.offer.capacity_key)
                if attempt.reservation_source and attempt.shared is None:
                    self.reserved.give_back(decision.offer.capacity_key, attempt.reservation_source)
            self._record(attempt, billed_s, error, cost)

    def _record(
        self, attempt: Attempt, runtime: float, error: BaseException | None, cost: int
    ) -> None:
        hold_id = self.budget.shared_hold_id(attempt.hold) if self.budget is not None else None
        record = attempt_record(attempt, runtime, error, cost, hold_id)
        if isinstance(error, SpotInterrupted):
            self.state.record_interruption(attempt.decision.offer.capacity_key)
            self._record_interruption(attempt, error, cost)
            self.observer.log(f"{attempt.task_name}: {error}; will re-place", "warning")
            self.observer.interrupted(
                attempt.decision,
                task=attempt,
                instance_id=attempt.placement.instance_id,
                wasted_usd=cost / 1_000_000,
            )
        transfer = transfer_record(attempt)
        rows = [record] if transfer is None else [record, transfer]
        with self._lock:
            self.records.extend(rows)
        if self.budget is not None:
            counted = record.cost_micro + attempt.egress_micro
            if attempt.launch_t0 is not None:  # the instance's boot, minimum and warm tail
                counted = max(counted, attempt.counted_micro(time.perf_counter()))
            self.budget.settle(attempt.hold, counted)
        for row in rows:
            self.writer.put(row)

    def _record_interruption(self, attempt: Attempt, error: SpotInterrupted, cost: int) -> None:
        """The interruption's own row; a failed write is logged, never raised (it would
        replace the ``SpotInterrupted`` that makes Prefect retry the task)."""
        try:
            self.writer.put_interruption(**interruption_row(attempt, error, cost))
        except Exception as err:
            self.observer.log(
                f"{attempt.task_name}: interruption row not written ({err}); the placement "
                "row still records the interruption and its cost",
                "error",
            )

    def _stop_over_budget(self, attempt: Attempt, refused: BudgetExceeded) -> None:
        """The budget watch stops an attempt before its cost crosses a hard cap."""
        attempt.stopped_by = refused
        handle = attempt.handle
        provisioner = self.provisioners.get(handle.cloud) if handle else None
        if handle is not None and provisioner is not None and attempt.shared is None:
            try:
                provisioner.release(handle)
                attempt.released = True
                attempt.released_t = time.perf_counter()
            except Exception as err:
                self.observer.log(f"{attempt.task_name}: release failed: {err}", "error")
        self.observer.budget_exceeded(
            refused.overrun, refused=True, decision=attempt.decision, task=attempt
        )
        self.observer.log(f"{refused}; stopped", "error")
        with self._lock:
            self.refusals.append(str(refused))

    # ------------------------------------------------------------------ closing
    def close(self) -> list[PlacementRecord]:
        """Release every instance of this run, flush the ledger, stop the executor."""
        try:
            if self._watch is not None:
                self._watch.close()
            for provisioner in self.provisioners.values():
                for run_id in list(self.flow_names):
                    self._release_run(provisioner, run_id)
        finally:
            self.executor.stop()
            self._close_budget()
            self.writer.close()
            for problem in self.writer.errors:
                self.observer.log(problem, "error")
            if self.writer.deferred_rows:
                self.observer.rows_deferred(
                    self.writer.deferred_rows,
                    f"kept in the journal {self.writer.journal_path}; inserted when the ledger "
                    "is next opened",
                )
        return list(self.records)

    def _close_budget(self) -> None:
        if self.budget is None:
            return
        try:
            self.budget.close()
        except Exception as err:  # holds of a dead run are released by `reap`
            self.observer.log(f"could not release this run's budget holds: {err}", "warning")

    def _release_run(self, provisioner: Provisioner, run_id: str) -> None:
        try:
            released = provisioner.release_run(run_id)
        except Exception as err:  # keep closing the others; the reaper is backup
            self.observer.log(
                f"could not release {provisioner.cloud} instances of run {run_id}: {err} "
                "(run `prefect-cloudsched reap`)",
                "error",
            )
            return
        if released:
            self.observer.log(
                f"released {released} leftover {provisioner.cloud} instance(s) of run {run_id}"
            )


__all__ = ["BudgetPolicy", "Session"]
