"""``prices refresh``: parsing recorded price-API responses, offline (botocore Stubber)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from google.cloud import billing_v1

from prefect_cloudsched.adapters import prices as adapter
from prefect_cloudsched.cli import main
from prefect_cloudsched.core.catalog import load_catalog, snapshot_rows
from prefect_cloudsched.core.catalog.refresh import (
    gcp_sku_stem,
    parse_aws_price_list,
    parse_aws_spot_history,
    parse_gcp_skus,
    refresh_rows,
)

DATA = Path(__file__).parent / "data" / "price_responses"


def _load(name: str):
    return json.loads((DATA / name).read_text())


def _spot_entries() -> list[dict]:
    entries = _load("aws_describe_spot_price_history_us-east-1.json")["SpotPriceHistory"]
    return [{**e, "Timestamp": datetime.fromisoformat(e["Timestamp"])} for e in entries]


def test_aws_price_list_keeps_linux_shared_hourly_rates():
    prices = parse_aws_price_list(_load("aws_get_products_g5.xlarge.json")["PriceList"])
    assert prices[("us-east-1", "g5.xlarge")] == {"ondemand": 1.1, "reserved_1yr": 0.7}
    assert set(prices) == {("us-east-1", "g5.xlarge"), ("us-west-2", "g5.xlarge")}


def test_spot_is_the_median_of_each_zones_latest_price():
    spot = parse_aws_spot_history("us-east-1", _spot_entries())
    assert spot == {("us-east-1", "g5.xlarge"): 0.4}  # latest: 0.45, 0.35, 0.40


def test_gcp_vm_price_is_cores_plus_ram_plus_gpus():
    skus = parse_gcp_skus(_load("gcp_list_skus_compute.json"))
    assert gcp_sku_stem("Spot Preemptible N2 Instance Core running in Americas") == (
        "N2 Instance Core"
    )
    rows = [r for r in snapshot_rows() if r["region"] == "us-central1"]
    fresh, stats = refresh_rows(rows, gcp=skus, stamp="T")
    n2 = next(r for r in fresh if r["instance_type"] == "n2-standard-4")
    assert float(n2["ondemand_usd_per_hour"]) == pytest.approx(4 * 0.031611 + 16 * 0.004237)
    assert float(n2["spot_usd_per_hour"]) == pytest.approx(4 * 0.0077 + 16 * 0.00103)
    assert float(n2["reserved_1yr_usd_per_hour"]) == pytest.approx(4 * 0.019915 + 16 * 0.002669)
    t4 = next(r for r in fresh if r["instance_type"] == "n1-highmem-4" and r["accelerator"] == "T4"
              and r["accelerator_count"] == "1")  # fmt: skip
    assert float(t4["ondemand_usd_per_hour"]) == pytest.approx(4 * 0.031611 + 26 * 0.004237 + 0.35)
    assert n2["source"] == "refresh T"
    assert stats.priced["gcp"] >= 2 and stats.kept["gcp"] > 0  # the rest keep the snapshot


def _stubbed_clients():
    pricing = boto3.client("pricing", region_name="us-east-1")
    stub = Stubber(pricing)
    expected = {"ServiceCode": "AmazonEC2", "Filters": ANY, "FormatVersion": "aws_v1"}
    stub.add_response("get_products", _load("aws_get_products_g5.xlarge.json"), expected)
    ec2 = boto3.client("ec2", region_name="us-east-1")
    spot_stub = Stubber(ec2)
    spot_stub.add_response("describe_spot_price_history",
                           {"SpotPriceHistory": _spot_entries()},
                           {"InstanceTypes": ["g5.xlarge"], "ProductDescriptions": ["Linux/UNIX"],
                            "StartTime": ANY})  # fmt: skip
    return pricing, stub, ec2, spot_stub


def test_adapters_replay_recorded_responses():
    pricing, stub, ec2, spot_stub = _stubbed_clients()
    with stub, spot_stub:
        listed = adapter.fetch_aws_list_prices(["g5.xlarge"], client=pricing)
        spot = adapter.fetch_aws_spot(["us-east-1"], ["g5.xlarge"], client_for=lambda _r: ec2)
    assert listed[("us-east-1", "g5.xlarge")]["ondemand"] == 1.1
    assert spot[("us-east-1", "g5.xlarge")] == 0.4
    skus = [billing_v1.Sku.from_json(json.dumps(s)) for s in _load("gcp_list_skus_compute.json")]

    class Catalog:  # the one method of CloudCatalogClient the adapter calls
        def list_skus(self, parent: str):
            assert parent == adapter.GCP_COMPUTE_SERVICE
            return skus

    assert adapter.fetch_gcp_skus(client=Catalog()) == parse_gcp_skus(
        _load("gcp_list_skus_compute.json")
    )


def test_refresh_command_writes_the_catalog_every_command_then_uses(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREFECT_CLOUDSCHED_HOME", str(tmp_path))
    listed = parse_aws_price_list(_load("aws_get_products_g5.xlarge.json")["PriceList"])
    spot = parse_aws_spot_history("us-east-1", _spot_entries())
    calls = []

    def fake_list(types, *, step, client=None):
        calls.append(("list", len(types)))
        for t in types:
            step(f"AWS Price List: {t}")
        return listed

    def fake_spot(regions, types, *, step, client_for=None, now=None):
        calls.append(("spot", len(regions)))
        return spot

    monkeypatch.setattr(adapter, "fetch_aws_list_prices", fake_list)
    monkeypatch.setattr(adapter, "fetch_aws_spot", fake_spot)
    assert main(["prices", "refresh", "--cloud", "aws"]) == 0
    out = capsys.readouterr()
    target = tmp_path / "catalog" / "offers.csv"
    assert f"to {target}" in out.out and "aws: 2 rows refreshed" in out.err
    assert calls == [("list", 79), ("spot", 8)]
    with target.open() as handle:
        row = next(r for r in csv.DictReader(handle)
                   if r["region"] == "us-east-1" and r["instance_type"] == "g5.xlarge")  # fmt: skip
    assert (row["ondemand_usd_per_hour"], row["spot_usd_per_hour"]) == ("1.1", "0.4")
    assert "Refreshed price catalog" in (target.parent / "SOURCE.md").read_text()
    offer = load_catalog().find("aws/us-east-1/g5.xlarge/on-demand")
    assert offer.usd_per_hour == 1.1  # the refreshed catalog is used over the snapshot
    assert main(["prices", "--gpu", "A10G", "--region", "us-east-1", "-f", "json"]) == 0
    assert any(r["usd_per_hour"] == 0.4 for r in json.loads(capsys.readouterr().out))


def test_refresh_without_credentials_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREFECT_CLOUDSCHED_HOME", str(tmp_path))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # no credentials cached by other tests
    assert main(["prices", "refresh", "--cloud", "aws"]) == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "Unable to locate credentials" in err
    assert not (tmp_path / "catalog" / "offers.csv").exists()


def test_refresh_that_cannot_reach_the_endpoint_does_not_blame_the_credentials(
    monkeypatch, tmp_path, capsys
):
    from botocore.exceptions import EndpointConnectionError

    def unreachable(types, **_):
        raise EndpointConnectionError(endpoint_url="https://pricing.us-east-1.amazonaws.com/")

    monkeypatch.setenv("PREFECT_CLOUDSCHED_HOME", str(tmp_path))
    monkeypatch.setattr(adapter, "fetch_aws_list_prices", unreachable)
    assert main(["prices", "refresh", "--cloud", "aws"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "Could not connect to the endpoint URL" in line
    assert "check the network or proxy" in line and "credentials" not in line


def test_refresh_that_prices_nothing_changes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PREFECT_CLOUDSCHED_HOME", str(tmp_path))
    monkeypatch.setattr(adapter, "fetch_aws_list_prices", lambda types, **_: {})
    monkeypatch.setattr(adapter, "fetch_aws_spot", lambda regions, types, **_: {})
    assert main(["prices", "refresh", "--cloud", "aws"]) == 2
    assert "returned nothing usable" in capsys.readouterr().err
    assert not (tmp_path / "catalog" / "offers.csv").exists()  # the snapshot stays in use
    assert load_catalog().find("aws/us-east-1/g5.xlarge/on-demand").usd_per_hour == 1.006
