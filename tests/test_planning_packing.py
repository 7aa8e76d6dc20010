"""Packing queued tasks onto shared instances: cheaper when it can be, never worse."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.planning.packing import PackingResult, PackTask, pack_tasks
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.testing.offers import make_offer

OD, SPOT, RES = PurchaseOption.ON_DEMAND, PurchaseOption.SPOT, PurchaseOption.RESERVED
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def offer(
    name: str, option: PurchaseOption, price: float, *, gpus: int, od: float | None = None
) -> Offer:
    return make_offer(name, option, price, od=od, gpus=gpus, gpu="A100", region="r1", band="<5%")


def catalog(four_gpu_price: float = 3.0, spot: float | None = None) -> Catalog:
    offers = [
        offer("g1", OD, 1.0, gpus=1),
        offer("g4", OD, four_gpu_price, gpus=4),
        offer("g4", RES, 0.7 * four_gpu_price, gpus=4, od=four_gpu_price),
        offer("c2", OD, 0.1, gpus=0),
    ]
    if spot is not None:
        offers.append(offer("g1", SPOT, spot, gpus=1, od=1.0))
    return Catalog(offers)


def gpu_task(i: int, hours: float = 1.0, **kwargs) -> PackTask:
    needs = TaskNeeds(gpus=1, gpu_type="A100", cpus=2, memory_gib=8, est_runtime=hours * HOUR)
    if kwargs:
        needs = needs.merged(kwargs)
    return PackTask(f"t{i}", needs)


def check_valid(result: PackingResult, tasks: list[PackTask]) -> None:
    """Every placeable task in exactly one bin; no bin over its capacity."""
    placed = Counter(t for b in result.bins for t in b.task_ids)
    assert set(placed) == {t.task_id for t in tasks} - set(result.unplaced)
    assert all(n == 1 for n in placed.values())
    needs = {t.task_id: t.needs for t in tasks}
    for b in result.bins:
        assert sum(needs[t].gpus for t in b.task_ids) <= b.offer.gpu_count
        assert sum(needs[t].cpus for t in b.task_ids) <= b.offer.vcpus
        assert sum(needs[t].memory_gib for t in b.task_ids) <= b.offer.memory_gib
        assert b.hours == pytest.approx(max(needs[t].est_runtime / HOUR for t in b.task_ids))


def test_four_one_gpu_tasks_share_one_four_gpu_instance_when_cheaper() -> None:
    tasks = [gpu_task(i) for i in range(4)]
    result = pack_tasks(tasks, catalog(3.0), now=NOW)
    check_valid(result, tasks)
    assert len(result.bins) == 1
    assert result.bins[0].offer.key == "aws/r1/g4/on-demand"
    assert result.cost == pytest.approx(3.0)
    assert result.alone_cost == pytest.approx(4.0)
    assert result.saving == pytest.approx(1.0)


def test_no_packing_when_the_big_instance_is_dearer() -> None:
    tasks = [gpu_task(i) for i in range(4)]
    result = pack_tasks(tasks, catalog(4.5), now=NOW)
    check_valid(result, tasks)
    assert len(result.bins) == 4
    assert {b.offer.key for b in result.bins} == {"aws/r1/g1/on-demand"}
    assert result.cost == pytest.approx(result.alone_cost)


def test_a_shared_instance_lives_as_long_as_its_longest_task() -> None:
    tasks = [gpu_task(0, 2.0), gpu_task(1, 0.5), gpu_task(2, 0.5), gpu_task(3, 0.5)]
    result = pack_tasks(tasks, catalog(3.0), now=NOW)
    check_valid(result, tasks)
    # One 4-GPU box for 2 h costs 6.0; alone costs 2 + 3 × 0.5 = 3.5: don't pack.
    assert result.cost == pytest.approx(3.5)
    assert len(result.bins) == 4


def test_tight_deadlines_keep_tasks_off_spot() -> None:
    tight = [gpu_task(i, spot_ok=True, deadline=timedelta(hours=1.2)) for i in range(2)]
    loose = [gpu_task(i + 2, spot_ok=True, deadline=timedelta(hours=12)) for i in range(2)]
    result = pack_tasks(tight + loose, catalog(10.0, spot=0.2), now=NOW)
    check_valid(result, tight + loose)
    option = {t: b.offer.option for b in result.bins for t in b.task_ids}
    assert option["t0"] is OD and option["t1"] is OD
    assert option["t2"] is SPOT and option["t3"] is SPOT


def test_idle_reserved_capacity_is_used_first_and_within_its_count() -> None:
    tasks = [gpu_task(i) for i in range(6)]
    result = pack_tasks(tasks, catalog(3.0), reserved_free={"aws/r1/g4": 1}, now=NOW)
    check_valid(result, tasks)
    reserved = [b for b in result.bins if b.offer.option is RES]
    assert len(reserved) == 1
    assert len(reserved[0].task_ids) == 4
    # Charged as its rows will be: the amortised rate (0.7 × 3.0) for the hour, not 0.
    assert reserved[0].cost == pytest.approx(2.1)
    # The two left over: two 1-GPU on-demand (2.0) beat a 4-GPU one (3.0).
    assert result.cost == pytest.approx(2.1 + 2.0)


def test_cpu_tasks_never_take_a_gpu_instance_and_unfit_tasks_are_reported() -> None:
    cpu = PackTask("cpu", TaskNeeds(cpus=4, memory_gib=8))
    huge = PackTask("huge", TaskNeeds(gpus=16, gpu_type="A100"))
    tasks = [cpu, huge, gpu_task(1)]
    result = pack_tasks(tasks, catalog(), now=NOW)
    check_valid(result, tasks)
    assert set(result.unplaced) == {"huge"}
    assert "largest instance has 4" in result.unplaced["huge"]
    on = {t: b.offer for b in result.bins for t in b.task_ids}
    assert on["cpu"].gpu_count == 0


def test_duplicate_task_ids_are_rejected() -> None:
    with pytest.raises(InputError, match="unique"):
        pack_tasks([gpu_task(1), gpu_task(1)], catalog(), now=NOW)


def test_an_empty_queue_packs_to_nothing() -> None:
    result = pack_tasks([], catalog(), now=NOW)
    assert result.status == "empty" and result.bins == [] and result.cost == 0.0


@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
        min_size=1,
        max_size=10,
    ),
    st.floats(2.0, 5.0),
)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_packing_is_valid_and_never_worse_than_one_instance_each(shapes, price) -> None:
    tasks = [
        PackTask(
            f"t{i}",
            TaskNeeds(gpus=g, gpu_type="A100", cpus=2, memory_gib=8, est_runtime=h * HOUR),
        )
        for i, (g, h) in enumerate(shapes)
    ]
    cat = Catalog([*catalog(price).offers, offer("g2", OD, 1.9, gpus=2)])
    result = pack_tasks(tasks, cat, now=NOW)
    check_valid(result, tasks)
    assert 0 <= result.cost <= result.alone_cost + 1e-9


# --------------------------------------------------------------------------- threshold
@pytest.mark.parametrize(
    ("four_gpu_price", "packs"),
    [(3.5, True), (3.6, True), (3.61, False), (3.7, False), (3.95, False)],
)
def test_packing_only_when_it_saves_at_least_the_relative_threshold(
    four_gpu_price: float, packs: bool
) -> None:
    """Alone: four 1-GPU hours = 4.0. The default asks for >= 10 % (0.40) saved."""
    tasks = [gpu_task(i) for i in range(4)]
    result = pack_tasks(tasks, catalog(four_gpu_price), now=NOW)
    check_valid(result, tasks)
    assert result.alone_cost == pytest.approx(4.0)
    assert result.packed_cost == pytest.approx(four_gpu_price)  # what sharing would cost
    if packs:
        assert len(result.bins) == 1 and result.cost == pytest.approx(four_gpu_price)
        assert result.reason.startswith("shared: ")
    else:
        assert result.status == "alone" and len(result.bins) == 4
        assert result.cost == pytest.approx(4.0)
        assert result.reason.startswith("each alone: ") and "asks for >= 10 %" in result.reason


@pytest.mark.parametrize(("minutes", "packs"), [(6.0, True), (1.0, False)])
def test_packing_only_when_it_saves_at_least_the_absolute_threshold(
    minutes: float, packs: bool
) -> None:
    """Sharing saves 25 % either way; with a $0.05 floor, four 6-minute tasks (saving $0.10)
    are packed, four 1-minute ones (saving $0.017) each run alone."""
    tasks = [gpu_task(i, minutes / 60) for i in range(4)]
    config = PolicyConfig(pack_min_saving_usd=0.05)
    result = pack_tasks(tasks, catalog(3.0), now=NOW, config=config)
    saving = (4.0 - 3.0) * minutes / 60  # 0.1 at 6 min, 0.0167 at 1 min
    assert result.packed_cost == pytest.approx(3.0 * minutes / 60)
    assert (len(result.bins) == 1) is packs
    assert result.saving == pytest.approx(saving if packs else 0.0)


def test_the_thresholds_are_policy_knobs() -> None:
    tasks = [gpu_task(i) for i in range(4)]
    eager = PolicyConfig(pack_min_saving_pct=0.0, pack_min_saving_usd=0.0)
    assert len(pack_tasks(tasks, catalog(3.9), now=NOW, config=eager).bins) == 1
    strict = PolicyConfig(pack_min_saving_pct=30.0)
    assert len(pack_tasks(tasks, catalog(3.0), now=NOW, config=strict).bins) == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pack_min_saving_pct", -1.0),
        ("pack_min_saving_pct", 100.0),
        ("pack_min_saving_pct", float("nan")),
        ("pack_min_saving_pct", "10"),
        ("pack_min_saving_pct", True),
        ("pack_min_saving_usd", -0.01),
        ("pack_min_saving_usd", float("inf")),
        ("pack_min_saving_usd", None),
    ],
)
def test_bad_thresholds_are_one_line_errors_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InputError, match=field) as caught:
        PolicyConfig(**{field: value})
    assert "\n" not in str(caught.value) and "e.g." in str(caught.value)
