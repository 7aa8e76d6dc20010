"""Spot control live in the runtime session: wait, run, move on request, resume."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.accounting import dearer_reasons
from prefect_cloudsched.core.budget import BudgetPolicy, BudgetTracker
from prefect_cloudsched.core.catalog import Offer, PurchaseOption, load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.policy.spot_control import Market, SpotController
from prefect_cloudsched.core.report import build_report
from prefect_cloudsched.errors import CapacityError, MoveRequested, SpotInterrupted
from prefect_cloudsched.prefect import checkpoint
from prefect_cloudsched.runtime.spot_live import SpotLive, _Job
from prefect_cloudsched.simulate.spot import Lane, SpotTrace
from prefect_cloudsched.testing.clouds import TraceClock
from prefect_cloudsched.testing.executor import InstanceStandInExecutor
from prefect_cloudsched.testing.session import runtime_session
from prefect_cloudsched.testing.spot_job import run_controlled_job

H = 3600.0
REGION = "us-east-2"
POLICY = PolicyConfig(allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset({REGION}))
NEEDS = TaskNeeds(
    gpus=1,
    gpu_type="V100",
    spot_ok=True,
    checkpointable=True,
    est_runtime=timedelta(seconds=4),  # 4 trace hours at 1 s per trace hour
    deadline=timedelta(seconds=8),
)


class TracedProvisioner:
    """A fake AWS that follows a trace: refuses spot while down, reclaims when it goes down."""

    cloud = "aws"
    launch_timeout_seconds = 0.0
    warm_seconds = 0.0

    def __init__(self, clock: TraceClock) -> None:
        self.spot_trace_clock = clock
        self.started: list[InstanceHandle] = []
        self.released: list[str] = []
        self.refused = 0
        self._ends: dict[str, float] = {}

    def ensure(self, offer: Offer, *, run_id: str, task_name: str, startup_script=None):
        end = None
        if offer.option is PurchaseOption.SPOT:
            landed = self.spot_trace_clock.launch(offer.region)
            if landed is None:
                self.refused += 1
                raise CapacityError(offer.key, "InsufficientInstanceCapacity", "no capacity")
            end = landed[1]
        handle = InstanceHandle(
            "aws", f"i-{len(self.started)}", offer.key, offer.region, None,
            offer.option.value, run_id,
        )  # fmt: skip
        self.started.append(handle)
        if end is not None:
            self._ends[handle.instance_id] = end
        return handle

    def check(self, handle: InstanceHandle) -> None:
        end = self._ends.get(handle.instance_id)
        if end is not None and self.spot_trace_clock.now() >= end:
            raise SpotInterrupted(handle.instance_id, handle.offer_key)

    def release(self, handle: InstanceHandle) -> None:
        self.released.append(handle.instance_id)

    def release_run(self, run_id: str) -> int:
        return 0


def _trace(up: list[tuple[float, float]]) -> SpotTrace:
    lane = Lane([a * H for a, _ in up], [b * H for _, b in up])
    return SpotTrace("p3.2xlarge", 24 * H, {REGION: [f"{REGION}a"]}, {f"{REGION}a": lane})


def test_a_controlled_task_waits_moves_and_resumes_from_its_checkpoint(tmp_path) -> None:
    """Spot is down for the first trace hour, up for 0.6 h, down until 9 h, then up: the
    task waits with no instance, runs on spot until interrupted, waits, falls behind its
    progress line and runs on-demand, is moved back to spot when spot returns and it is
    ahead, and finishes there, each attempt resuming from the last checkpoint."""
    clock = TraceClock(_trace([(1.0, 1.6), (9.0, 24.0)]), seconds_per_trace_hour=0.5)
    provisioner = TracedProvisioner(clock)
    session = runtime_session(
        tmp_path,
        policy=POLICY,
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
    )
    session.spot_live.mover = checkpoint
    session.spot_live.change_over_s = 0.1 * H
    session.spot_live.horizon_s = 0.1 * H
    clock.restart()
    run = run_controlled_job(session, NEEDS, "tr-live")
    bases, attempts = run.bases, run.attempts
    records = session.close()
    job = session.spot_live.jobs["tr-live"]
    kinds = [kind for _, kind, _ in job.log]
    assert kinds[0] == "wait" and "spot" in kinds
    states = [r.state for r in records]
    assert states[-1] == "completed" and len(states) == attempts >= 2
    assert "moved" in states and set(states[:-1]) <= {"moved", "interrupted"}
    assert records[0].option == "spot" and records[-1].option == "spot"
    assert "on-demand" in [r.option for r in records]
    # each retry resumed from the checkpoint the previous attempt saved
    assert bases[0] == 0 and all(b > a for a, b in itertools.pairwise(bases))
    assert run.done_s >= 4 * H
    moved = [r for r in records if r.state == "moved"]
    assert all(r.baseline_micro == 0 and r.wasted_micro == 0 and r.cost_micro > 0 for r in moved)
    assert sorted(provisioner.released) == sorted(h.instance_id for h in provisioner.started)


def test_a_move_to_another_region_bills_its_checkpoint_transfer_in_a_row_of_its_own(
    tmp_path,
) -> None:
    """us-east-2's spot (the cheapest) is up for 1.5 trace hours, then down for the day;
    us-west-2's is up all day. The task runs on us-east-2 spot, is reclaimed, and resumes
    on us-west-2 spot: a move. The ledger bills its transfer (the replay's egress, the
    controller's ``egress_usd``) in one row of its own — no instance, no runtime, baseline
    0, the report's ``egress`` reason — and the budget counts it. Without the row the
    ledger's total was short of the replay's by the egress."""
    west = "us-west-2"
    lanes = {
        f"{REGION}a": Lane([0.0], [1.5 * H]),
        f"{west}a": Lane([0.0], [24 * H]),
    }
    trace = SpotTrace("p3.2xlarge", 24 * H, {REGION: [f"{REGION}a"], west: [f"{west}a"]}, lanes)
    clock = TraceClock(trace, seconds_per_trace_hour=0.5)
    provisioner = TracedProvisioner(clock)
    session = runtime_session(
        tmp_path,
        policy=replace(POLICY, allowed_regions=frozenset({REGION, west})),
        provisioners={"aws": provisioner},
        executor=InstanceStandInExecutor(),
        budget=BudgetTracker(BudgetPolicy(per_run_usd=50.0)),
    )
    session.spot_live.mover = checkpoint
    session.spot_live.change_over_s = 0.1 * H
    session.spot_live.horizon_s = 0.1 * H
    session.spot_live.egress_usd = 0.37
    clock.restart()
    run_controlled_job(session, NEEDS, "tr-move")
    records = session.close()
    job = session.spot_live.jobs["tr-move"]
    transfers = [r for r in records if r.state == "transfer"]
    instances = [r for r in records if r.state != "transfer"]
    assert [r.region for r in instances][:2] == [REGION, west]
    assert job.moves == len(transfers) >= 1
    row = transfers[0]
    assert (row.cost_micro, row.baseline_micro, row.runtime_s, row.instance_id) == (
        370_000,
        0,
        0.0,
        None,
    )
    assert (row.option, row.region, row.task_run_id) == ("egress", west, "tr-move")
    assert f"from {REGION} to {west}" in row.explanation
    assert dearer_reasons(row) == ("egress",)
    # the ledger holds every row the session wrote, transfer included
    stored = session.ledger.placements()
    assert sorted(r.cost_micro for r in stored) == sorted(r.cost_micro for r in records)
    assert build_report(stored).total.spend_micro == sum(r.cost_micro for r in records)
    # the run's cap counted the transfer too (with each instance's boot and minimum)
    assert session.budget.spent_micro >= sum(r.cost_micro for r in records)


def test_the_retry_condition_retries_moves_like_interruptions() -> None:
    from types import SimpleNamespace

    from prefect_cloudsched.prefect.wrapper import spot_retry_condition

    class Failed:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def result(self) -> None:
            raise self.error

    retry = spot_retry_condition(None, user_retries=0)
    run = SimpleNamespace(id="tr-1")
    assert retry(None, run, Failed(MoveRequested("tr-1", "spot control: move")))
    assert retry(None, run, Failed(SpotInterrupted("i-1", "aws/us-east-2/p3.2xlarge/spot")))
    assert not retry(None, run, Failed(ValueError("a bug")))


def test_a_reclaimed_spot_attempt_ends_at_the_reclaim_not_when_it_is_noticed() -> None:
    """The stand-in reclaims the instance when its zone goes down (trace hour 2); the
    runtime notices half an hour later (a scaled clock's scheduling delay, or a slow
    check). Billing and the controller's progress end at the reclaim: counting the time
    after it credits work no instance did, and made the live job diverge from the replay
    (bench/bench_live_spot.py)."""
    now = [0.0]
    clock = TraceClock(_trace([(0.0, 2.0)]), seconds_per_trace_hour=1.0, clock=lambda: now[0])
    provisioner = TracedProvisioner(clock)
    session = SimpleNamespace(
        catalog=load_catalog(), policy=POLICY, provisioners={"aws": provisioner}
    )
    live = SpotLive(session, change_over_s=0.1 * H, horizon_s=0.1 * H)
    offer = next(
        o
        for o in session.catalog.offers
        if o.region == REGION and o.instance_type == "p3.2xlarge"
        and o.option is PurchaseOption.SPOT
    )  # fmt: skip
    controller = SpotController(
        [Market(REGION, REGION, offer.usd_per_hour, offer.ondemand_usd_per_hour)],
        change_over_s=0.1 * H,
        horizon_s=0.1 * H,
        model=live.model,
    )
    job = _Job(controller, {REGION: offer}, work_s=10 * H, start_s=0.0, deadline_s=20 * H)
    live.jobs["tr-lost"] = job
    handle = provisioner.ensure(offer, run_id="r", task_name="t")
    attempt = SimpleNamespace(
        task_run_id="tr-lost", handle=handle, t0=time.perf_counter() - 2.5, stopped_at=None,
        decision=SimpleNamespace(offer=offer),
    )  # fmt: skip
    live.started(attempt)
    assert job.reclaim_s == 2 * H
    now[0] = 2.5  # trace hour 2.5 at 1 s per trace hour
    assert live._lost(attempt, job)
    assert time.perf_counter() - attempt.stopped_at == pytest.approx(0.5, abs=0.05)
    live.ended(attempt, SpotInterrupted(handle.instance_id, offer.key))
    assert job.done_s == pytest.approx(1.9 * H, abs=60)  # 2 h up, less the change-over
    assert live.model._zones[REGION].since_s == 2 * H  # the market went down then


def test_the_monitor_checks_the_instance_between_decisions_and_keeps_a_smaller_margin() -> None:
    """Decisions stay on the ``horizon_s`` grid, but the instance is checked every
    ``check_s`` (a fifth of it by default), so a reclaim between two decisions is seen at
    the next check, not at the next decision; the controller's margin for a late decision
    is ``check_s + end_s`` instead of a whole interval."""
    clock = TraceClock(_trace([(0.0, 0.25)]), seconds_per_trace_hour=5.0)
    provisioner = TracedProvisioner(clock)
    checks: list[float] = []
    check = provisioner.check

    def counted(handle: InstanceHandle) -> None:
        checks.append(clock.now())
        check(handle)

    provisioner.check = counted  # type: ignore[method-assign]
    session = SimpleNamespace(
        catalog=load_catalog(), policy=POLICY, provisioners={"aws": provisioner}
    )
    live = SpotLive(session, change_over_s=0.02 * H, horizon_s=0.1 * H, end_s=0.01 * H)
    assert live.check_period_s == pytest.approx(0.02 * H)
    assert live.late_s == pytest.approx(0.03 * H)
    assert SpotLive(session).late_s == 300 / 5 + 60  # defaults: 0.4 of the 300 s interval
    moves: list[tuple[float, str]] = []
    live.mover = SimpleNamespace(
        request_move=lambda _run, reason: moves.append((clock.now(), reason)),
        cancel_move=lambda _run: None,
    )
    offer = next(
        o
        for o in session.catalog.offers
        if o.region == REGION and o.instance_type == "p3.2xlarge"
        and o.option is PurchaseOption.SPOT
    )  # fmt: skip
    clock.restart()
    submitted = datetime.now(UTC)  # 1 trace hour of work, 2 h to the deadline
    spec = SimpleNamespace(
        needs=replace(NEEDS, est_runtime=timedelta(seconds=5.0)),
        submitted_at=submitted,
        decision=SimpleNamespace(deadline=submitted + timedelta(seconds=10.0)),
        task_name="t",
    )
    live._spot_offers = lambda _needs: {REGION: offer}  # type: ignore[method-assign]
    job = live.job(spec, "tr-monitor")
    assert job.controller.late_s == pytest.approx(live.late_s)
    handle = provisioner.ensure(offer, run_id="r", task_name="t")
    attempt = SimpleNamespace(
        task_run_id="tr-monitor", handle=handle, t0=time.perf_counter(), stopped_at=None,
        decision=SimpleNamespace(offer=offer),
    )  # fmt: skip
    live.started(attempt)
    deadline = time.monotonic() + 5.0
    while not moves and time.monotonic() < deadline:
        time.sleep(0.01)
    live.ended(attempt, SpotInterrupted(handle.instance_id, offer.key))
    decisions = [t for t, kind, _ in job.log if kind not in ("started",)]
    assert moves and moves[0][1] == "spot control: spot instance reclaimed"
    # reclaimed at 0.25 h: seen at the next check (0.26 h), before the decision at 0.3 h
    assert 0.25 * H <= moves[0][0] < 0.29 * H
    assert len(checks) >= 3 * max(1, len(decisions))


def test_spot_control_settings_reach_the_controller_and_bad_ones_name_the_field(tmp_path) -> None:
    """The runner's ``spot_control`` (settings or a mapping) sets the session's controller;
    a bad value is one line naming the field."""
    from prefect_cloudsched import SpotControlSettings
    from prefect_cloudsched.errors import InputError
    from prefect_cloudsched.runtime.config import RunnerConfig

    config = RunnerConfig(
        spot_control={"change_over": timedelta(minutes=20), "end_allowance": timedelta(0)}
    )
    settings = config.spot_control
    assert isinstance(settings, SpotControlSettings)
    session = runtime_session(tmp_path, policy=POLICY, spot_control=settings)
    live = session.spot_live
    assert (live.change_over_s, live.horizon_s, live.check_period_s, live.late_s) == (
        1200.0, 300.0, 60.0, 60.0,
    )  # fmt: skip
    assert RunnerConfig(**config.as_kwargs()) == config  # duplicate() keeps them
    from prefect_cloudsched.prefect.resolve import resolve_settings
    from prefect_cloudsched.runtime.session import Session

    opened = Session.open(  # the runner's path: configuration → settings → session
        resolve_settings(
            RunnerConfig(ledger_url=f"sqlite:///{tmp_path / 'o.db'}", spot_control=settings)
        )
    )
    try:
        assert opened.spot_live.change_over_s == 1200.0
    finally:
        opened.close()
    defaults = runtime_session(tmp_path / "d", policy=POLICY).spot_live
    assert (defaults.change_over_s, defaults.late_s) == (720.0, 120.0)
    for bad, field in (
        ({"change_over": 60}, "change_over must be a timedelta"),
        ({"decision_interval": timedelta(0)}, "decision_interval must be > 0"),
        ({"end_allowance": timedelta(seconds=-1)}, "end_allowance must be >= 0"),
        ({"check_interval": timedelta(minutes=10)}, "check_interval must not exceed"),
        ({"egress_usd": -1}, "egress_usd must be a number >= 0"),
        ({"horizon": timedelta(minutes=1)}, "unknown field"),
        ("fast", "must be a SpotControlSettings or a mapping"),
    ):
        with pytest.raises(InputError, match=field) as caught:
            RunnerConfig(spot_control=bad)
        assert "\n" not in str(caught.value)


def test_the_wrapper_gives_a_checkpointable_body_on_an_instance_its_task_run_id(
    monkeypatch,
) -> None:
    """A body sent to an instance runs where Prefect's context is not (a Dask worker): the
    wrapper keys its checkpoints by the task run id; a body that declared no checkpoints is
    sent as it is (its worker may not have this package)."""
    import threading as _threading

    import cloudpickle

    from prefect_cloudsched.prefect import wrapper

    monkeypatch.setattr(wrapper, "_task_run", lambda: ("tr-7", 1))
    sent: list[object] = []

    class RemoteSession:
        executor = SimpleNamespace(runs_on_instance=True)

        def place(self, spec, *, task_run_id, attempt):
            return SimpleNamespace(task_run_id=task_run_id)

        def run(self, attempt, call):  # a fresh thread, the call pickled: as on a worker
            sent.append(call)
            out: list[object] = []
            thread = _threading.Thread(target=lambda: out.append(cloudpickle.loads(
                cloudpickle.dumps(call))()))  # fmt: skip
            thread.start()
            thread.join()
            return out[0] if out else None

        def finish(self, attempt, error):
            pass

    location = "memory://cloudsched-wrapper-test"

    def body(n: int) -> str:
        return checkpoint.save({"n": n}, location=location)

    keyed = SimpleNamespace(needs=replace(NEEDS, checkpointable=True))
    wrapped = wrapper.wrap_body(RemoteSession(), keyed, body, is_async=False)
    assert wrapped(3).endswith("/tr-7.pkl")
    assert checkpoint.load(key="tr-7", location=location) == {"n": 3}
    plain = SimpleNamespace(needs=replace(NEEDS, checkpointable=False))
    wrapper.wrap_body(RemoteSession(), plain, lambda: 1, is_async=False)()
    assert sent[0].func is checkpoint.run_as and sent[-1].func is not checkpoint.run_as
