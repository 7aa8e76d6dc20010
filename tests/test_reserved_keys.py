"""Declared reserved capacity is checked, and the log lists only what a placement can use.

Before: ``reserved={"g5.xlarge": 1}`` (no cloud/region), ``{"aws/us-east-1/g9.huge": 1}``
(no such type) and a reservation in a region the policy forbids were all logged as
"reserved capacity used first" while every task ran on-demand.
"""

from __future__ import annotations

import csv
from datetime import timedelta

import pytest

from prefect_cloudsched import CloudSchedTaskRunner
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.core.catalog import load_catalog, snapshot_rows
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.runtime import build
from prefect_cloudsched.runtime.attempt import run_and_finish
from prefect_cloudsched.runtime.config import RunnerConfig, SessionSettings
from prefect_cloudsched.runtime.session import Session

KEY = "aws/us-east-1/g5.xlarge"


class Notes:
    """A ``RunObserver`` that keeps the log lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log(self, message: str, level: str = "info") -> None:
        self.lines.append((level, message))

    def decided(self, *args, **kwargs) -> None: ...

    def interrupted(self, *args, **kwargs) -> None: ...

    def budget_exceeded(self, *args, **kwargs) -> None: ...

    def rows_deferred(self, *args, **kwargs) -> None: ...

    def about(self, word: str) -> list[tuple[str, str]]:
        return [(level, m) for level, m in self.lines if word in m]


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_key_without_cloud_and_region_is_refused_naming_the_format() -> None:
    with pytest.raises(InputError) as err:
        RunnerConfig(reserved={"g5.xlarge": 1})
    text = _one_line(err)
    assert "'g5.xlarge'" in text and "cloud/region-or-zone/instance-type" in text
    assert f"'{KEY}'" in text  # an example of a valid key
    assert "aws/ap-northeast-1/g5.xlarge" in text  # the catalog's keys of that type


def test_an_unknown_instance_type_is_refused_with_close_catalog_keys() -> None:
    with pytest.raises(InputError) as err:
        CloudSchedTaskRunner(reserved={"aws/us-east-1/g9.huge": 1})
    text = _one_line(err)
    assert "'aws/us-east-1/g9.huge'" in text and "no instance type 'g9.huge'" in text
    assert "did you mean" in text and "aws/us-east-1/g5.xlarge" in text


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("aws/us-east-9/g5.xlarge", "no aws region or zone 'us-east-9'"),
        ("azure/eastus/nc6", "unknown cloud 'azure'"),
        ("aws//g5.xlarge", "is not a capacity key"),
    ],
)
def test_unknown_regions_clouds_and_empty_parts_are_refused(key: str, what: str) -> None:
    with pytest.raises(InputError) as err:
        RunnerConfig(reserved={KEY: 1, key: 2})
    text = _one_line(err)
    assert repr(key) in text and what in text and f"e.g. '{KEY}'" in text


def test_a_good_key_is_accepted() -> None:
    assert RunnerConfig(reserved={KEY: 2}).reserved == {KEY: 2}


def test_a_reservation_the_policy_forbids_is_warned_once_and_not_used(tmp_path) -> None:
    notes = Notes()
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    held = build.reserved_capacity(
        {KEY: 1, "aws/us-west-2/g5.xlarge": 2},
        {},
        ledger,
        use_plan=False,
        observer=notes,
        catalog=load_catalog(),
        policy=PolicyConfig(allowed_regions=frozenset({"us-west-2"})),
    )
    assert held.counts == {"aws/us-west-2/g5.xlarge": 2}
    [(level, warning)] = notes.about("will not be used")
    assert level == "warning" and KEY in warning and "allowed_regions" not in warning
    assert "regions ['us-west-2']" in warning
    [(_, used)] = notes.about("used first")
    assert used == "reserved capacity used first: {'aws/us-west-2/g5.xlarge': 2}"


def test_a_reservation_on_a_forbidden_cloud_is_not_listed_as_used_first(tmp_path) -> None:
    notes = Notes()
    build.reserved_capacity(
        {KEY: 1},
        {},
        Ledger(f"sqlite:///{tmp_path / 'l.db'}"),
        use_plan=False,
        observer=notes,
        catalog=load_catalog(),
        policy=PolicyConfig(allowed_clouds=frozenset({"gcp"})),
    )
    assert notes.about("used first") == []
    [(_, warning)] = notes.about("will not be used")
    assert (
        warning
        == f"reserved capacity {KEY} (1) will not be used: the policy allows only clouds ['gcp']"
    )


def _settings(tmp_path, reserved, policy) -> SessionSettings:
    return SessionSettings(
        policy=policy,
        ledger=Ledger(f"sqlite:///{tmp_path / 'l.db'}"),
        reserved=reserved,
        live_prices=False,
        execution="local",
    )


def test_a_session_never_places_on_a_forbidden_reservation(tmp_path) -> None:
    notes = Notes()
    policy = PolicyConfig(
        allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset({"us-west-2"})
    )
    session = Session.open(_settings(tmp_path, {KEY: 1}, policy), notes)
    assert session.state.idle_reserved() == {} and session.reserved.counts == {}
    needs = TaskNeeds(gpus=1, gpu_type="A10G", est_runtime=timedelta(minutes=5))
    spec = session.submit("t", needs, flow_run_id="run-1", flow_name="f", announce=True)
    placed = session.place(spec, task_run_id="tr-1", attempt=1)
    assert run_and_finish(session, placed, lambda: 42) == 42
    [row] = session.close()
    assert row.region == "us-west-2" and row.option == "on-demand"
    assert notes.about("used first") == [] and len(notes.about("will not be used")) == 1


def test_a_session_opened_from_settings_checks_declared_keys_too(tmp_path) -> None:
    with pytest.raises(InputError, match=r"reserved key 'g5\.xlarge'"):
        Session.open(_settings(tmp_path, {"g5.xlarge": 1}, PolicyConfig()), Notes())


def test_keys_are_checked_against_the_runners_own_catalog(tmp_path) -> None:
    """A catalog_path missing where the decorator runs is left to the session to check."""
    catalog = tmp_path / "offers.csv"
    assert RunnerConfig(reserved={KEY: 1}, catalog_path=str(tmp_path / "later.csv")).reserved
    rows = [r for r in snapshot_rows() if r["instance_type"] != "g5.xlarge"]
    with catalog.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(InputError, match=r"no instance type 'g5\.xlarge' in aws us-east-1"):
        RunnerConfig(reserved={KEY: 1}, catalog_path=str(catalog))
