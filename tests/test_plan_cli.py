"""``prefect-cloudsched plan`` and ``plan apply``: output shape, bad input, dry run, purchases."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from prefect_cloudsched.adapters import purchase
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.purchase import (
    AwsReservedInstances,
    GcpCommitments,
    PurchaseItem,
)
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog

FAST = ["--forecast-model", "seasonal-naive"]


def write_series(path: Path, values: list[float], column: str = "gpu_hours") -> Path:
    path.write_text(f"hour,{column}\n" + "".join(f"{h},{v}\n" for h, v in enumerate(values)))
    return path


@pytest.fixture
def series(tmp_path: Path) -> Path:
    daily = [4.0 + (3.0 if 8 <= h % 24 < 20 else 0.0) for h in range(72)]
    return write_series(tmp_path / "demand.csv", daily)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_has_the_documented_shape(series, capsys, ledger_url) -> None:
    code, out, err = run(
        capsys, "plan", str(series), "--gpu-type", "a100", "--horizon", "24", "--json", *FAST
    )
    assert code == 0, err
    data = json.loads(out)
    for key in ("expected_cost", "ondemand_cost", "reserved", "solve_seconds", "status"):
        assert key in data
    assert data["status"] in ("optimal", "feasible")
    assert data["gpu_type"] == "A100" and data["hours"] == 24
    assert 0 < data["expected_cost"] <= data["ondemand_cost"]
    for item in data["reserved"]:
        assert {"capacity_key", "offer_key", "count", "usd_per_hour"} <= set(item)
    # Demand at the 0.9 service level is at least the point forecast every hour.
    assert min(data["demand"]["gpu:A100"]) >= 4.0
    assert "forecasting" in err  # progress on stderr, not in the JSON


def test_plan_run_spelled_out_and_text_output(series, capsys, ledger_url, tmp_path) -> None:
    png = tmp_path / "mix.png"
    code, out, _ = run(
        capsys, "plan", "run", str(series), "--gpu-type", "A100", "--horizon", "12",
        "--plot", str(png), "--save", *FAST,
    )  # fmt: skip
    assert code == 0
    assert "Expected cost $" in out and "all on-demand $" in out and "saving $" in out
    assert png.stat().st_size > 1000
    stored = Ledger(ledger_url).latest_plan()
    assert stored is not None and stored["name"] == "demand.csv:gpu_hours:A100"


def test_help_of_the_group_the_default_command_and_apply(capsys) -> None:
    for argv in (["plan", "--help"], ["plan", "run", "--help"], ["plan", "apply", "--help"]):
        code, out, _ = run(capsys, *argv)
        assert code == 0
        assert "Examples" in out
    code, out, _ = run(capsys, "plan", "some.csv", "--help")
    assert code == 0 and "--gpu-type" in out


@pytest.mark.parametrize(
    ("content", "args", "fragment"),
    [
        ('hour,gpu_hours\n0,1\n1,"2\n', [], "not a valid CSV"),
        ("hour,other\n0,1\n", [], "'gpu_hours' is not a column"),
        ("hour,gpu_hours\n0,1\n1,-3\n", [], "negative"),
        ("hour,gpu_hours\n0,1\n1,abc\n", [], "not a number"),
        ("hour,gpu_hours\n0,1\n", ["--horizon", "0"], "--horizon"),
        ("hour,gpu_hours\n0,1\n", ["--gpu-type", "Z80"], "the catalog has: A100"),
        ("hour,gpu_hours\n0,1\n", ["--service-level", "1.5"], "--service-level"),
        ("hour,gpu_hours\n0,1\n", ["--cloud", "azure"], "--cloud"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, args, fragment) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    argv = ["plan", str(path), "--gpu-type", "A100", *FAST, *args]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    assert out == ""


def test_unknown_solver_is_refused_before_the_forecast(series, capsys, monkeypatch) -> None:
    from prefect_cloudsched.core import forecast

    fit = mock.Mock(side_effect=AssertionError("must not forecast with a bad --solver"))
    monkeypatch.setattr(forecast, "fit_forecast", fit)
    code, out, err = run(capsys, "plan", str(series), "--gpu-type", "A100", "--solver", "gurobi")
    assert code == 2 and out == ""
    assert "--solver 'gurobi'" in err and "cbc" in err and "highs" in err
    assert len(err.strip().splitlines()) == 1
    fit.assert_not_called()


def test_save_to_a_ledger_that_cannot_open_is_refused_before_the_forecast(
    series, capsys, monkeypatch, tmp_path
) -> None:
    # it forecast and solved first, then exited 2 and threw the plan away
    from prefect_cloudsched.core import forecast

    fit = mock.Mock(side_effect=AssertionError("must not forecast for an unusable --ledger"))
    monkeypatch.setattr(forecast, "fit_forecast", fit)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = f"sqlite:///{blocker}/ledger.db"  # its folder is a file: cannot be created
    code, out, err = run(capsys, "plan", str(series), "--gpu-type", "A100", "--save",
                         "--ledger", bad)  # fmt: skip
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert "cannot create the ledger folder" in line and line.endswith("check --ledger")
    code, out, err = run(capsys, "plan", str(series), "--gpu-type", "A100", "--save",
                         "--ledger", "sqlite:////proc/ledger.db")  # fmt: skip
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert "OperationalError (unable to open database file)" in line  # the driver's reason
    fit.assert_not_called()


@pytest.mark.parametrize("fmt", ["csv", "markdown"])
def test_an_infeasible_plan_says_why_in_every_format_even_quiet(series, capsys, fmt) -> None:
    code, out, err = run(capsys, "-q", "plan", str(series), "--gpu-type", "A100", *FAST,
                         "--horizon", "24", "--budget", "1", "-f", fmt)  # fmt: skip
    assert code == 1
    assert "capacity_key" in out
    assert "Warning: the plan is infeasible: budget $1.00 is" in err


def test_seasonal_naive_horizon_longer_than_history_is_one_line_up_front(
    tmp_path, capsys, monkeypatch
) -> None:
    from prefect_cloudsched.core import forecast

    fit = mock.Mock(side_effect=AssertionError("must not start forecasting"))
    monkeypatch.setattr(forecast, "fit_forecast", fit)
    path = write_series(tmp_path / "d.csv", [3.0] * 72)
    argv = ["plan", str(path), "--gpu-type", "A100", *FAST, "--horizon", "100"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "--horizon 100" in line and "--horizon 72 or less" in line
    assert "--forecast-model" in line and "72 hours of history" in line
    fit.assert_not_called()


def test_printed_saving_is_the_difference_of_the_printed_figures(
    series, capsys, monkeypatch, ledger_url
) -> None:
    """Expected $13,145.794047 and on-demand $26,949.61741 print as $13,145.79 and
    $26,949.62: the saving printed is $13,803.83, not the separately rounded $13,803.82."""
    import dataclasses
    from decimal import Decimal

    from prefect_cloudsched.core import planning

    real = planning.plan_capacity

    def awkward(*args, **kwargs):
        plan = real(*args, **kwargs)
        return dataclasses.replace(plan, expected_cost=13145.794047, ondemand_cost=26949.61741)

    monkeypatch.setattr(planning, "plan_capacity", awkward)
    base = ["plan", str(series), "--gpu-type", "A100", "--horizon", "24", *FAST]
    code, out, _ = run(capsys, *base)
    assert code == 0
    assert "Expected cost $13,145.79  all on-demand $26,949.62  saving $13,803.83" in out
    code, _, err = run(capsys, *base, "--format", "csv")
    assert code == 0
    assert "expected $13,145.79, all on-demand $26,949.62, saving $13,803.83" in err
    code, out, _ = run(capsys, *base, "--json", "--save")
    data = json.loads(out)
    exact = {k: Decimal(str(data[k])) for k in ("expected_cost", "ondemand_cost", "saving")}
    assert exact["saving"] == exact["ondemand_cost"] - exact["expected_cost"]
    stored = Ledger(ledger_url).latest_plan()
    assert stored is not None


def test_apply_refuses_a_mistyped_or_foreign_ledger_and_creates_nothing(tmp_path, capsys) -> None:
    import sqlite3

    missing = tmp_path / "x" / "fresh.db"
    code, out, err = run(capsys, "plan", "apply", "--ledger", f"sqlite:///{missing}")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--ledger" in err and "does not exist" in err
    assert not missing.exists() and not missing.parent.exists()
    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("create table t (a)").connection.commit()
    code, out, err = run(capsys, "plan", "apply", "--ledger", f"sqlite:///{foreign}")
    assert code == 2 and "no prefect-cloudsched ledger" in err
    tables = sqlite3.connect(foreign).execute("select name from sqlite_master").fetchall()
    assert tables == [("t",)]


def test_apply_total_is_the_sum_of_the_printed_rows(capsys, ledger_url) -> None:
    from decimal import Decimal

    store_plan(ledger_url, (aws_reserved_offer(), 3), (gcp_reserved_offer(), 7))
    code, out, _ = run(capsys, "plan", "apply")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    terms = [Decimal(line.split("│")[-2].strip().replace(",", "")) for line in rows]
    total = out.split("Commitment: $")[1].split(" ")[0].replace(",", "")
    assert len(terms) == 2 and Decimal(total) == sum(terms)


def test_missing_file_is_exit_2(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "plan", str(tmp_path / "nope.csv"), "--gpu-type", "A100")
    assert code == 2 and "does not exist" in err


# --------------------------------------------------------------------------- apply
def aws_reserved_offer():
    return next(
        o
        for o in load_catalog().offers
        if o.cloud == "aws" and o.option is PurchaseOption.RESERVED and o.gpu_type == "A10G"
    )


def gcp_reserved_offer():
    return next(
        o
        for o in load_catalog().offers
        if o.cloud == "gcp"
        and o.option is PurchaseOption.RESERVED
        and o.instance_type.startswith("a2-")
    )


def store_plan(ledger_url: str, *offers_counts) -> int:
    reserved = [
        {
            "capacity_key": o.capacity_key,
            "offer_key": o.key,
            "count": n,
            "usd_per_hour": o.usd_per_hour,
            "gpu_type": o.gpu_type,
            "gpu_count": o.gpu_count,
        }
        for o, n in offers_counts
    ]
    return Ledger(ledger_url).record_plan(
        name="t", status="optimal", expected_micro=1, ondemand_micro=2, plan={"reserved": reserved}
    )


def test_apply_is_a_dry_run_by_default(capsys, ledger_url, monkeypatch) -> None:
    offer = aws_reserved_offer()
    plan_id = store_plan(ledger_url, (offer, 2))
    bought = mock.Mock(side_effect=AssertionError("must not buy on a dry run"))
    monkeypatch.setattr(purchase.AwsReservedInstances, "purchase", bought)
    code, out, err = run(capsys, "plan", "apply", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["plan_id"] == plan_id and data["dry_run"] is True
    assert data["items"][0]["instance_type"] == offer.instance_type
    assert data["items"][0]["count"] == 2
    assert data["items"][0]["term_usd"] == pytest.approx(2 * offer.usd_per_hour * 8760, 0.01)
    assert "dry run" in err
    bought.assert_not_called()


def test_apply_without_a_plan_or_with_a_missing_id_is_exit_2(capsys, ledger_url) -> None:
    Ledger(ledger_url)  # an existing ledger that holds no plan yet
    code, _, err = run(capsys, "plan", "apply")
    assert code == 2 and "no plan" in err
    store_plan(ledger_url, (aws_reserved_offer(), 1))
    code, _, err = run(capsys, "plan", "apply", "--plan-id", "99")
    assert code == 2 and "no such plan" in err


def stubbed_ec2(offer, *, fixed: float, hourly: float, purchase_expected: bool) -> object:
    client = boto3.client("ec2", region_name=offer.region)
    stub = Stubber(client)
    stub.add_response(
        "describe_reserved_instances_offerings",
        {
            "ReservedInstancesOfferings": [
                {
                    "ReservedInstancesOfferingId": "ri-off-cheap",
                    "InstanceType": offer.instance_type,
                    "Duration": 31_536_000,
                    "FixedPrice": fixed,
                    "UsagePrice": 0.0,
                    "RecurringCharges": [{"Amount": hourly, "Frequency": "Hourly"}],
                    "OfferingType": "No Upfront",
                    "Scope": "Region",
                },
                {
                    "ReservedInstancesOfferingId": "ri-off-zonal",
                    "InstanceType": offer.instance_type,
                    "Duration": 31_536_000,
                    "FixedPrice": 0.0,
                    "UsagePrice": 0.0,
                    "RecurringCharges": [{"Amount": hourly / 2, "Frequency": "Hourly"}],
                    "OfferingType": "No Upfront",
                    "Scope": "Availability Zone",
                    "AvailabilityZone": f"{offer.region}a",
                },
            ]
        },
        {
            "Filters": [
                {"Name": "instance-type", "Values": [offer.instance_type]},
                {"Name": "product-description", "Values": ["Linux/UNIX"]},
            ],
            "OfferingClass": "standard",
            "OfferingType": "No Upfront",
            "InstanceTenancy": "default",
            "IncludeMarketplace": False,
            "MinDuration": 31_536_000,
            "MaxDuration": 31_536_000,
        },
    )
    if purchase_expected:
        stub.add_response(
            "purchase_reserved_instances_offering",
            {"ReservedInstancesId": "ri-123"},
            {"ReservedInstancesOfferingId": "ri-off-cheap", "InstanceCount": 2},
        )
    stub.activate()
    return client


def test_apply_yes_buys_the_aws_offering(capsys, ledger_url, monkeypatch) -> None:
    offer = aws_reserved_offer()
    store_plan(ledger_url, (offer, 2))
    client = stubbed_ec2(offer, fixed=0.0, hourly=offer.usd_per_hour, purchase_expected=True)
    monkeypatch.setattr(purchase, "_boto3_client", lambda region: client)
    code, _, err = run(capsys, "plan", "apply", "--yes")
    assert code == 0, err
    assert "ri-123" in err and offer.capacity_key in err


def test_apply_refuses_a_quote_dearer_than_the_plan(capsys, ledger_url, monkeypatch) -> None:
    offer = aws_reserved_offer()
    store_plan(ledger_url, (offer, 2))
    client = stubbed_ec2(offer, fixed=0.0, hourly=offer.usd_per_hour * 1.5, purchase_expected=False)
    monkeypatch.setattr(purchase, "_boto3_client", lambda region: client)
    code, _, err = run(capsys, "plan", "apply", "--yes")
    assert code == 2
    assert "re-plan" in err and "Traceback" not in err


def test_apply_yes_inserts_a_gcp_commitment_with_a_reservation(capsys, ledger_url) -> None:
    offer = gcp_reserved_offer()
    store_plan(ledger_url, (offer, 3))
    with mock.patch("google.cloud.compute_v1.RegionCommitmentsClient") as client_cls:
        code, _, err = run(capsys, "plan", "apply", "--yes")
        assert code == 2 and "--gcp-project" in err
        code, _, err = run(capsys, "plan", "apply", "--yes", "--gcp-project", "proj-1")
    assert code == 0, err
    request = client_cls.return_value.insert.call_args.kwargs["request"]
    assert request.project == "proj-1" and request.region == offer.region
    commitment = request.commitment_resource
    assert commitment.plan == "TWELVE_MONTH" and commitment.type_ == "ACCELERATOR_OPTIMIZED"
    amounts = {r.type_: r.amount for r in commitment.resources}
    assert amounts["VCPU"] == offer.vcpus * 3
    assert amounts["ACCELERATOR"] == offer.gpu_count * 3
    reservation = commitment.reservations[0]
    assert reservation.zone == offer.zone
    assert reservation.specific_reservation.count == 3
    assert reservation.specific_reservation.instance_properties.machine_type == (
        offer.instance_type
    )


def test_n1_commitment_attaches_the_gpus() -> None:
    item = PurchaseItem(
        "gcp", "us-central1", "us-central1-a", "n1-standard-8", 2, 1.0,
        "gcp/us-central1-a/n1-standard-8", 8, 30.0, "T4", 1,
    )  # fmt: skip
    request = GcpCommitments("p").request(item)
    props = request.commitment_resource.reservations[0].specific_reservation.instance_properties
    assert props.guest_accelerators[0].accelerator_type == "nvidia-tesla-t4"
    assert request.commitment_resource.type_ == "GENERAL_PURPOSE"


def test_aws_quote_against_moto_takes_the_cheapest_regional_offering() -> None:
    item = PurchaseItem(
        "aws", "us-east-1", None, "m5.large", 1, 1.0, "aws/us-east-1/m5.large", 2, 8.0, None, 0
    )
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        quote = AwsReservedInstances(lambda region: ec2).quote(item)
        offerings = ec2.describe_reserved_instances_offerings(
            Filters=[{"Name": "instance-type", "Values": ["m5.large"]}]
        )["ReservedInstancesOfferings"]
    regional = [
        o for o in offerings if not o.get("AvailabilityZone") and o["OfferingType"] == "No Upfront"
    ]
    ids = {o["ReservedInstancesOfferingId"] for o in regional}
    assert quote.offering_id in ids
    assert quote.offering_type == "No Upfront"


# --------------------------------------------------------------------------- flow
def planning_flow_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "flows" / "capacity_planning.py"
    spec = importlib.util.spec_from_file_location("capacity_planning_flow", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_planning_flow_without_demand_of_the_gpu_model_is_one_line(ledger_url) -> None:
    # it ran the flow and failed it with six tracebacks ending in "series has 1 hours"
    import contextlib
    import io

    from prefect_cloudsched.testing.records import placement_record

    module = planning_flow_module()
    Ledger(ledger_url).record([placement_record("train", gpu_type="T4")])
    for argv, fragment in (
        (["--ledger-url", ledger_url], "no A100 placements (it has T4); pass --gpu-type"),
        (["--ledger-url", ledger_url, "--gpu-type", "T4"], "holds 1 hour(s) of T4 demand"),
        (["--ledger-url", ledger_url, "--budget", "0"], "--budget must be > 0"),
    ):
        err = io.StringIO()  # not capsys: Prefect's log handlers must not bind to its stream
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(err):
            module.main(argv)
        assert exit_info.value.code == 2
        assert fragment in err.getvalue()


def test_planning_artifact_saving_is_the_difference_of_its_printed_figures() -> None:
    from types import SimpleNamespace

    from prefect_cloudsched.core.planning import CapacityPlan

    plan = SimpleNamespace(reserved=[], hours=1, expected_cost=1.006, ondemand_cost=2.004,
                           saving=0.998, status="optimal")  # fmt: skip
    plan.totals = lambda unit: CapacityPlan.totals(plan, unit)
    rows = {r["item"]: r["usd_over_horizon"] for r in planning_flow_module().plan_table(plan)}
    assert (rows["expected cost"], rows["all on-demand"]) == (1.01, 2.0)
    assert rows["saving"] == 0.99  # was round(0.998, 2) = 1.0: a cent off the printed figures


@pytest.mark.harness
def test_capacity_planning_flow_stores_the_plan_and_an_artifact(
    prefect_harness, series, ledger_url
) -> None:
    from prefect.artifacts import Artifact

    module = planning_flow_module()

    result = module.capacity_planning(
        series=str(series), horizon=24, forecast_model="seasonal-naive", ledger_url=ledger_url
    )
    stored = Ledger(ledger_url).latest_plan()
    assert stored is not None and stored["id"] == result["plan_id"]
    assert stored["reserved"] == result["reserved"]
    artifact = Artifact.get(module.ARTIFACT_KEY)
    assert artifact is not None and artifact.type == "table"
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert rows[-3]["item"] == "expected cost"
    assert rows[-3]["usd_over_horizon"] == pytest.approx(result["expected_cost"], abs=0.01)
