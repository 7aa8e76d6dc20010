"""The body of one submitted task, wrapped so it runs on — and is billed to — its placement.

Each attempt (first run, or a Prefect retry after a spot interruption) re-decides when needed,
claims capacity with fallback, attaches the executor, runs, releases the instance and writes
one ledger row; whatever fails on the way, the instance is released.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prefect.context import TaskRunContext

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import Decision, cost_of
from prefect_cloudsched.core.records import PlacementRecord, to_micro, to_usd
from prefect_cloudsched.errors import CapacityError, NoFeasibleOffer, SpotInterrupted
from prefect_cloudsched.prefect import visibility
from prefect_cloudsched.prefect.run_log import log

if TYPE_CHECKING:
    from prefect_cloudsched.runtime.session import RunContext
    from prefect_cloudsched.runtime.shared import MapBatch, SharedInstance

#: Offers tried per attempt before giving up (each failed start blocks its offer).
MAX_FALLBACKS = 6


class PlacedTask:
    """The body of one submitted task, wrapped so it runs on (and is billed to) a placement."""

    def __init__(
        self,
        run: RunContext,
        task_name: str,
        needs: TaskNeeds,
        decision: Decision,
        submitted_at: datetime,
        run_id: str,
        flow_name: str,
        batch: MapBatch | None = None,
        announce: bool = True,
    ) -> None:
        self.run = run
        self.batch = batch
        self.announce = announce
        self.batch_index = batch.add(needs, submitted_at) if batch is not None else -1
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
    def _begin(self) -> Attempt:
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
        shared = self.batch.instance_for(self.batch_index) if self.batch and number <= 1 else None
        hold: int | None = None
        if shared is not None:
            shared_decision = shared.decision_for(self.first_decision)
            handle = shared.claim(lambda: self._claim(shared_decision))
            if handle is False:  # the shared instance could not start: go alone
                shared = None
            else:
                decision = shared_decision
        if shared is None:
            decision, handle, hold = self._start_alone(decision, needs, task_run_id)
        placement = Placement(
            decision=decision,
            run_id=self.run_id,
            task_run_id=task_run_id,
            attempt=number,
            instance_id=handle.instance_id if handle else None,
        )
        attempt = Attempt(placement, handle, datetime.now(UTC), time.perf_counter(), hold, shared)
        try:
            if self.announce or number > 1 or handle is not None:
                log(f"{self.task_name}: {decision.explanation()}")
                visibility.emit_decided(
                    decision,
                    task_name=self.task_name,
                    flow_run_id=self.run_id,
                    task_run_id=task_run_id,
                    attempt=number,
                )
            if handle is not None:
                self.run.executor.attach(handle, placement)
        except BaseException as err:  # the instance is running: never leave it behind
            lost = self._interrupted(handle)  # reclaimed before its worker joined?
            self._end(attempt, lost or err, attached=False)
            if lost is not None:
                raise lost from err  # a spot loss: retried and re-placed like any other
            raise
        return attempt

    def _start_alone(
        self, decision: Decision, needs: TaskNeeds, task_run_id: str
    ) -> tuple[Decision, InstanceHandle | None, int | None]:
        """Admit and start ``decision``, falling back to the next offer on capacity errors.

        Returns:
            The decision that started, its instance (``None`` without a provisioner) and
            its budget hold.
        """
        for _ in range(MAX_FALLBACKS):
            decision, hold = self.run.admit(decision, needs, self, task_run_id)
            try:
                handle = self._claim(decision)
            except BaseException:
                self.run.release_hold(hold)
                raise
            if handle is not False:
                return decision, handle, hold
            self.run.release_hold(hold)
            decision = self.run.decide(needs, submitted_at=self.submitted_at)
        raise NoFeasibleOffer(
            f"{self.task_name}: every fallback offer failed to start; "
            f"blocked: {sorted(self.run.state.blocked)}"
        )

    def _interrupted(self, handle: InstanceHandle | None) -> SpotInterrupted | None:
        """The interruption that explains a failed attach, if the cloud reports one."""
        if handle is None:
            return None
        provisioner = self.run.provisioners.get(handle.cloud)
        if provisioner is None:
            return None
        try:
            provisioner.check(handle)
        except SpotInterrupted as err:
            return err
        except Exception:  # the check itself failed: keep the original error
            return None
        return None

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
            log(f"{self.task_name}: {err}; falling back to the next offer", level="warning")
            return False

    def _end(self, attempt: Attempt, error: BaseException | None, *, attached: bool = True) -> None:
        """Check for interruption, release the instance and capacity, record the attempt."""
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
            cost, last = to_micro(cost_of(decision.offer, runtime)), True
            if attempt.shared is not None:  # the last member out releases the instance
                cost, last = attempt.shared.leave(self.needs, runtime)
            try:
                if handle is not None and provisioner is not None and attached:
                    self.run.executor.detach(handle)
            finally:
                if handle is not None and provisioner is not None and last:
                    provisioner.release(handle)
                if decision.offer.option is PurchaseOption.RESERVED and last:
                    self.run.state.release_reserved(decision.offer.capacity_key)
                self._record(attempt, runtime, error, cost)

    def _record(
        self, attempt: Attempt, runtime: float, error: BaseException | None, cost: int
    ) -> None:
        decision, placement = attempt.placement.decision, attempt.placement
        offer = decision.offer
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
            log(f"{self.task_name}: {error}; will re-place", level="warning")
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


@dataclass(slots=True)
class Attempt:
    """One run of a task body on one placement (a Prefect retry is a new attempt)."""

    placement: Placement
    handle: InstanceHandle | None
    started_at: datetime
    t0: float
    hold: int | None = None
    shared: SharedInstance | None = None


def spot_retry_condition(
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


def failing_copy(task: Any, error: NoFeasibleOffer) -> Any:
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


__all__ = ["MAX_FALLBACKS", "PlacedTask", "failing_copy", "spot_retry_condition"]
