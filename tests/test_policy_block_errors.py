"""CloudSchedPolicy: a bad value is one line naming the field, also when a block loads."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prefect_cloudsched.errors import InputError
from prefect_cloudsched.prefect.blocks import CloudSchedPolicy


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"budget_per_run_usd": -5}, "budget_per_run_usd: input should be greater than 0, got -5"),
        ({"allowed_clouds": []}, "allowed_clouds: an empty list allows nothing; leave it unset"),
        ({"allowed_regions": []}, "allowed_regions: an empty list allows nothing; leave it unset"),
        ({"allowed_gpu_types": []}, "allowed_gpu_types: an empty list allows nothing"),
        ({"max_spot_band": "30%"}, "max_spot_band: input should be '<5%'"),
    ],
)
def test_a_bad_policy_value_is_one_line_naming_the_field(kwargs: dict, says: str) -> None:
    with pytest.raises(InputError) as info:
        CloudSchedPolicy(**kwargs)
    assert isinstance(info.value, ValidationError)  # `blocks apply` and callers catch that
    text = str(info.value)
    assert text.startswith("CloudSchedPolicy ") and says in text
    assert "\n" not in text and "errors.pydantic.dev" not in text


def test_a_saved_policy_with_a_bad_value_fails_to_load_in_one_line() -> None:
    with pytest.raises(InputError, match="allowed_regions: an empty list allows nothing") as info:
        CloudSchedPolicy.model_validate({"allowed_regions": []})  # what Block.load calls
    assert "\n" not in str(info.value)
