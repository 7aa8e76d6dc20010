"""Needs: the decorator, tag grammar, overrides and their precedence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_cloudsched.core.needs import (
    KNOWN_GPU_TYPES,
    Priority,
    TaskNeeds,
    current_overrides,
    declared_needs,
    needs_from_tags,
    override,
    parse_duration,
    parse_memory_gib,
    requires,
    resolve_needs,
)
from prefect_cloudsched.errors import NeedsError


def test_tag_grammar_parses_every_documented_tag() -> None:
    changes = needs_from_tags(
        [
            "gpu:2",
            "gpu-type:a10g",
            "cpu:8",
            "mem:32Gi",
            "deadline:1h30m",
            "runtime:20m",
            "priority:high",
            "no-spot",
            "checkpointable",
            "data-region:us-east-1",
            "input:5Gi",
            "team:ml",
        ]
    )
    assert changes == {
        "gpus": 2,
        "gpu_type": "A10G",
        "cpus": 8.0,
        "memory_gib": 32.0,
        "deadline": timedelta(hours=1, minutes=30),
        "est_runtime": timedelta(minutes=20),
        "priority": Priority.HIGH,
        "spot_ok": False,
        "checkpointable": True,
        "data_region": "us-east-1",
        "input_gib": 5.0,
    }


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("gpu:two", "not a whole number"),
        ("gpu:-1", "count must be >= 0"),
        ("gpu-type:B200X", "gpu_type 'B200X' is unknown"),
        ("mem:lots", "tag 'mem:lots': 'lots' is not a size"),
        ("mem:0", "tag 'mem:0': '0' must be more than zero"),
        ("input:-1Gi", "tag 'input:-1Gi': '-1Gi' is not a size"),
        ("cpu:0", "tag 'cpu:0': must be more than zero"),
        ("deadline:soon", "deadline 'soon' is not a duration"),
        ("priority:urgent", "priority must be one of"),
        ("gpu:", "has no value"),
    ],
)
def test_malformed_tags_name_the_tag(tag: str, fragment: str) -> None:
    with pytest.raises(NeedsError, match=fragment):
        needs_from_tags([tag])


def test_unknown_gpu_error_lists_known_types() -> None:
    with pytest.raises(NeedsError) as info:
        TaskNeeds(gpus=1, gpu_type="RTX9000")
    for gpu in KNOWN_GPU_TYPES:
        assert gpu in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gpus": -1}, "gpus"),
        ({"cpus": 0}, "cpus"),
        ({"memory_gib": -2}, "memory_gib"),
        ({"est_runtime": timedelta(0)}, "est_runtime"),
        ({"deadline": timedelta(-1)}, "deadline"),
        ({"priority": "asap"}, "priority"),
        ({"gpus": 1.5}, "gpus"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(NeedsError, match=field):
        TaskNeeds(**kwargs)


def test_gpu_type_implies_one_gpu_and_realtime_never_allows_spot() -> None:
    needs = TaskNeeds(gpu_type="h100", spot_ok=True, priority="realtime")
    assert (needs.gpus, needs.gpu_type) == (1, "H100")
    assert needs.spot_ok and not needs.allows_spot


def test_requires_survives_with_options_and_validates_early() -> None:
    from prefect import task

    @requires(gpus=1, gpu_type="T4", spot_ok=True)
    @task
    def work() -> int:
        return 1

    assert declared_needs(work) == TaskNeeds(gpus=1, gpu_type="T4", spot_ok=True)
    assert declared_needs(work.with_options(name="copy")) == declared_needs(work)
    with pytest.raises(NeedsError, match="gpu_type"):
        requires(gpu_type="nope")


def test_precedence_decorator_then_task_tags_then_call_site_then_override() -> None:
    @requires(gpus=1, cpus=2, memory_gib=8)
    def fn() -> None: ...

    resolved = resolve_needs(
        fn, task_tags=["cpu:4", "mem:16Gi"], context_tags=["cpu:6"], overrides={"memory_gib": 64.0}
    )
    assert (resolved.needs.gpus, resolved.needs.cpus, resolved.needs.memory_gib) == (1, 6, 64)
    assert resolved.sources == ("requires", "task tags", "call-site tags", "override")


def test_no_needs_declared_gives_defaults() -> None:
    resolved = resolve_needs(lambda: None, task_tags=["team:ml", "cloudsched:aws-spot"])
    assert not resolved.declared and resolved.needs == TaskNeeds()


def test_override_nests_and_restores() -> None:
    from prefect_cloudsched.core.needs import current_overrides

    with override(gpus=2):
        with override(spot_ok=True, gpus=4):
            assert current_overrides() == {"gpus": 4, "spot_ok": True}
        assert current_overrides() == {"gpus": 2}
    assert current_overrides() == {}
    with pytest.raises(NeedsError, match="unknown need"), override(gpu=2):
        pass


def test_deadline_forms() -> None:
    submitted = datetime(2026, 1, 1, tzinfo=UTC)
    assert TaskNeeds(deadline=timedelta(hours=2)).deadline_at(submitted) == submitted + timedelta(
        hours=2
    )
    naive = datetime(2026, 1, 2, 12, 0)
    assert TaskNeeds(deadline=naive).deadline_at(submitted) == naive.astimezone(UTC)
    assert TaskNeeds().deadline_at(submitted) is None


def test_a_naive_deadline_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``datetime.now() + 3h`` in Los Angeles is 3 h from now, not 5 h ago (it was read as UTC)."""
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        needs = TaskNeeds(deadline=datetime(2026, 1, 2, 12, 0))
        assert needs.deadline == datetime(2026, 1, 2, 20, 0, tzinfo=UTC)
        soon = TaskNeeds(deadline=datetime.now() + timedelta(hours=3))
        left = soon.deadline_at(datetime.now(UTC)) - datetime.now(UTC)
        assert timedelta(hours=2, minutes=59) < left <= timedelta(hours=3)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_gpu_model_implies_one_gpu_and_gpus_zero_means_cpu_only() -> None:
    assert TaskNeeds(gpu_type="t4").gpus == 1
    assert TaskNeeds(gpus=2, gpu_type="T4").gpus == 2
    assert TaskNeeds().gpus == 0 and TaskNeeds().merged({"gpu_type": "T4"}).gpus == 1
    assert TaskNeeds(gpus=2).merged({"gpu_type": "T4"}).gpus == 2
    with pytest.raises(NeedsError, match=r"gpus=0 with gpu_type 'A10G'.*drop gpu_type"):
        TaskNeeds(gpus=0, gpu_type="A10G")

    # override(gpus=0) on a task declared with a model: CPU-only, not one GPU of it (billed)
    @requires(gpus=1, gpu_type="A10G")
    def train() -> None: ...

    with override(gpus=0):
        resolved = resolve_needs(train, overrides=current_overrides()).needs
    assert resolved.gpus == 0 and resolved.gpu_type is None
    with pytest.raises(NeedsError, match="gpus=0 with gpu_type"):
        resolve_needs(train, task_tags={"gpu:0", "gpu-type:A10G"})


@given(st.integers(0, 30), st.integers(0, 59), st.integers(1, 59))
def test_duration_round_trip(hours: int, minutes: int, seconds: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s"
    assert parse_duration(text) == timedelta(hours=hours, minutes=minutes, seconds=seconds)


def test_memory_units() -> None:
    assert parse_memory_gib("512Mi") == 0.5
    assert parse_memory_gib("2Ti") == 2048
    assert parse_memory_gib("16") == 16
