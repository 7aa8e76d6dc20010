"""requires()/override()/tags: strict types, finite numbers, bounded durations, real regions."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from prefect_cloudsched.core.needs import (
    KNOWN_REGIONS,
    TaskNeeds,
    needs_from_tags,
    override,
    requires,
    resolve_needs,
)
from prefect_cloudsched.errors import NeedsError


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ({"cpus": "4"}, "cpus must be a number, got '4' (str)"),
        ({"memory_gib": "16Gi"}, "memory_gib must be a number"),
        ({"input_gib": True}, "input_gib must be a number"),
        ({"spot_ok": "no"}, "spot_ok must be True or False"),
        ({"checkpointable": 1}, "checkpointable must be True or False"),
        ({"gpus": True}, "gpus must be a whole number"),
        ({"gpus": 1.0}, "gpus must be a whole number"),
        ({"cpus": math.nan}, "cpus must be a finite number"),
        ({"memory_gib": math.inf}, "memory_gib must be a finite number"),
        ({"input_gib": -math.inf}, "input_gib must be a finite number"),
        ({"est_runtime": 600}, "est_runtime must be a timedelta"),
        ({"deadline": timedelta(days=10**6)}, "deadline must be at most 366 days"),
        ({"data_region": "mars-1"}, "'mars-1' is not an AWS or GCP region"),
        ({"data_region": "us-central1-a"}, "use its region 'us-central1'"),
        ({"data_region": "us-east-1a"}, "looks like a zone; use its region 'us-east-1'"),
        ({"data_region": "eu-west-3c"}, "looks like a zone; use its region 'eu-west-3'"),
        ({"data_region": 5}, "data_region must be a region name"),
        ({"gpu_type": 5}, "gpu_type 5 is unknown"),
        ({"priority": ["high"]}, "priority must be one of"),
    ],
)
def test_requires_refuses_with_one_line_naming_the_field(given, fragment):
    with pytest.raises(NeedsError) as info:
        requires(**given)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NeedsError), override(**given):
        pass


def test_spot_no_string_never_places_on_spot():
    with pytest.raises(NeedsError):
        TaskNeeds(spot_ok="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("deadline:99999999999d", "is too long; at most 366d"),
        ("runtime:9999999d", "is too long"),
        ("cpu:nan", "is not a finite number"),
        ("cpu:inf", "is not a finite number"),
        ("mem:" + "9" * 400, "is too large"),
        ("data-region:mars-1", "'mars-1' is not an AWS or GCP region"),
        ("data-region:us-east-1a", "use its region 'us-east-1'"),
    ],
)
def test_tags_refuse_without_overflow(tag, fragment):
    with pytest.raises(NeedsError, match=fragment.replace("(", r"\(")):
        needs_from_tags([tag])


def test_valid_values_still_resolve():
    needs = resolve_needs(
        requires(cpus=4, memory_gib=16.5, data_region="EU-West-1", spot_ok=True)(lambda: None),
        ["deadline:2h", "data-region:europe-west4", "cpu:8"],
    ).needs
    assert (needs.cpus, needs.data_region, needs.deadline) == (
        8.0,
        "europe-west4",
        timedelta(hours=2),
    )
    assert {"us-east-1", "europe-west4", "us-central1"} <= KNOWN_REGIONS
