"""Blocks: validation, mapping onto the core objects, registration and loading."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import get_args

import pytest
from pydantic import SecretStr, ValidationError

from prefect_cloudsched.core.catalog import BAND_ORDER
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.prefect.blocks import (
    AwsComputePool,
    CloudSchedLedger,
    CloudSchedPolicy,
    GcpComputePool,
    MissingBlockError,
    SpotBand,
    load_pool,
)
from prefect_cloudsched.prefect.runner import CloudSchedTaskRunner, resolve_policy


# --------------------------------------------------------------------------- pure
@pytest.mark.parametrize(
    ("block", "kwargs", "field"),
    [
        (CloudSchedPolicy, {"budget_per_run_usd": -5}, "budget_per_run_usd"),
        (CloudSchedPolicy, {"budget_per_month_usd": 0}, "budget_per_month_usd"),
        (CloudSchedPolicy, {"spot_max_share": 1.2}, "spot_max_share"),
        (CloudSchedPolicy, {"allowed_regions": ["us-east-1", "mars-north-1"]}, "allowed_regions"),
        (CloudSchedPolicy, {"allowed_gpu_types": ["Z9000"]}, "allowed_gpu_types"),
        (CloudSchedPolicy, {"allowed_clouds": ["azure"]}, "allowed_clouds"),
        (CloudSchedPolicy, {"max_spot_band": "30%"}, "max_spot_band"),
        (CloudSchedPolicy, {"service_level": 1.0}, "service_level"),
        (AwsComputePool, {"regions": ["us-central1"]}, "regions"),  # a GCP region
        (AwsComputePool, {"regions": []}, "regions"),
        (AwsComputePool, {"owner_id": "Team A"}, "owner_id"),
        (GcpComputePool, {"zones": ["us-east-1a"]}, "zones"),  # an AWS zone
        (GcpComputePool, {"service_account_info": "not json"}, "service_account_info"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(block: type, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        block(**kwargs)
    assert info.value.errors()[0]["loc"][0] == field
    assert field in str(info.value)


def test_unknown_region_error_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="us-west-2"):
        AwsComputePool(regions=["us-wets-2"])


def test_schema_carries_the_bounds_the_ui_form_enforces() -> None:
    props = CloudSchedPolicy.model_json_schema()["properties"]
    assert props["spot_max_share"]["minimum"] == 0
    assert props["spot_max_share"]["maximum"] == 1
    assert any(
        option.get("exclusiveMinimum") == 0 for option in props["budget_per_run_usd"]["anyOf"]
    )


def test_spot_bands_match_the_catalog() -> None:
    assert get_args(SpotBand) == BAND_ORDER


def test_policy_maps_onto_policy_config_and_budget() -> None:
    policy = CloudSchedPolicy(
        allowed_clouds=["aws"],
        allowed_regions=["us-east-1", "us-east-1"],
        allowed_gpu_types=["a10g", "l4"],
        max_spot_band="<5%",
        change_over_minutes=5,
        reserved_first=False,
        max_usd_per_hour=12.5,
        budget_per_run_usd=10,
        budget_per_day_usd=100,
        budget_enforcement="soft",
        on_budget="cheapest",
        spot_max_share=0.25,
        default_deadline_slack_hours=2,
    )
    assert policy.to_policy_config() == PolicyConfig(
        allowed_clouds=frozenset({"aws"}),
        allowed_regions=frozenset({"us-east-1"}),
        allowed_gpu_types=frozenset({"A10G", "L4"}),
        max_spot_band="<5%",
        change_over=timedelta(minutes=5),
        reserved_first=False,
        max_usd_per_hour=12.5,
    )
    budget = policy.to_budget()
    assert (budget.per_run_usd, budget.per_day_usd, budget.per_month_usd) == (10, 100, None)
    assert not budget.hard and budget.fallback_cheapest and budget.spot_max_share == 0.25
    assert policy.default_deadline_slack() == timedelta(hours=2)
    assert resolve_policy(policy) == policy.to_policy_config()


def test_defaults_are_the_core_defaults() -> None:
    assert CloudSchedPolicy().to_policy_config() == PolicyConfig()
    assert CloudSchedPolicy().default_deadline_slack() is None


def test_plan_options_carry_the_carbon_price_only_for_cost_carbon() -> None:
    base = CloudSchedPolicy(carbon_usd_per_tonne=80, budget_per_month_usd=500, solver="highs")
    assert base.plan_options()["carbon_usd_per_tonne"] is None
    options = base.model_copy(update={"objective": "cost_carbon"}).plan_options()
    assert options["carbon_usd_per_tonne"] == 80
    assert options["budget_usd"] == 500 and options["solver"] == "highs"


def test_secrets_are_masked_in_repr_and_dumps() -> None:
    pool = AwsComputePool(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="s3cr3t-planted")
    ledger = CloudSchedLedger(url="postgresql+psycopg://u:pw-planted@db/ledger")
    for text in (repr(pool), str(pool), pool.model_dump_json(), repr(ledger), str(ledger)):
        assert "s3cr3t-planted" not in text and "pw-planted" not in text
    assert pool.aws_secret_access_key.get_secret_value() == "s3cr3t-planted"


def test_ledger_block_opens_the_ledger(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'team.db'}"
    ledger = CloudSchedLedger(url=SecretStr(url)).get_ledger()
    assert ledger.url == url and ledger.placements() == []


def test_runner_keeps_block_config_through_duplicate_and_pickle() -> None:
    import cloudpickle

    policy = CloudSchedPolicy(budget_per_run_usd=3)
    runner = CloudSchedTaskRunner(policy=policy, pools=["aws-main", "gcp-main"], ledger="team")
    assert runner.duplicate() == runner
    assert cloudpickle.loads(cloudpickle.dumps(runner)) == runner
    assert runner != CloudSchedTaskRunner(policy=policy, pools=["aws-main"], ledger="team")


def test_runner_rejects_conflicting_ledger_options() -> None:
    with pytest.raises(ValueError, match="ledger"):
        CloudSchedTaskRunner(ledger="team", ledger_url="sqlite:///x.db")
    with pytest.raises(ValueError, match="pools"):
        CloudSchedTaskRunner(pools="aws-main")
    with pytest.raises(ValueError, match="pools"):
        CloudSchedTaskRunner(pools=[42])


def test_load_pool_rejects_an_unknown_type_slug() -> None:
    with pytest.raises(ValueError, match="aws-compute-pool/NAME"):
        load_pool("azure-pool/main")


def test_pool_instances_pass_through() -> None:
    pool = GcpComputePool(project="p", zones=["us-central1-a"])
    assert load_pool(pool) is pool


# --------------------------------------------------------------------------- harness
@pytest.mark.harness
def test_fresh_server_lists_our_block_types(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        slugs = {block_type.slug for block_type in client.read_block_types()}
    assert {
        "cloudsched-policy",
        "aws-compute-pool",
        "gcp-compute-pool",
        "cloudsched-ledger",
    } <= slugs


@pytest.mark.harness
def test_save_and_load_round_trip(prefect_harness: None) -> None:
    policy = CloudSchedPolicy(budget_per_day_usd=42.5, allowed_regions=["us-east-1"])
    policy.save("roundtrip", overwrite=True)
    loaded = CloudSchedPolicy.load_named("roundtrip")
    assert loaded.budget_per_day_usd == 42.5 and loaded.allowed_regions == ["us-east-1"]
    pool = GcpComputePool(
        project="p", zones=["us-central1-a"], service_account_info=json.dumps({"k": "v"})
    )
    pool.save("gcp-roundtrip", overwrite=True)
    assert load_pool("gcp-roundtrip").service_account_info.get_secret_value() == '{"k": "v"}'
    assert load_pool("gcp-compute-pool/gcp-roundtrip").project == "p"


@pytest.mark.harness
def test_missing_block_names_it_and_how_to_create_it(prefect_harness: None) -> None:
    with pytest.raises(MissingBlockError) as info:
        CloudSchedPolicy.load_named("does-not-exist")
    text = str(info.value)
    assert "\n" not in text and "'does-not-exist'" in text
    assert (
        "prefect-cloudsched blocks apply" in text
        and 'CloudSchedPolicy(...).save("does-not-exist")' in text
    )
    with pytest.raises(MissingBlockError, match="aws-compute-pool and gcp-compute-pool"):
        load_pool("no-such-pool")


@pytest.mark.harness
def test_load_named_works_inside_an_async_flow(prefect_harness: None) -> None:
    import asyncio

    from prefect import flow

    CloudSchedPolicy(budget_per_run_usd=7).save("async-flow", overwrite=True)

    @flow
    async def reads_policy() -> float | None:
        return CloudSchedPolicy.load_named("async-flow").budget_per_run_usd

    assert asyncio.run(reads_policy()) == 7


def test_pools_map_onto_the_provisioner_settings() -> None:
    aws = AwsComputePool(
        regions=["us-east-1", "us-west-2"],
        allowed_families=["g5"],
        ami_per_region={"us-east-1": "ami-1"},
        subnet_per_region={"us-east-1": "subnet-1"},
        security_group_ids=["sg-1"],
        extra_tags={"team": "ml"},
        endpoint_url="http://127.0.0.1:5000",
        aws_access_key_id="AKIA",
        aws_secret_access_key="planted-aws",
        owner_id="team-ml",
        reservations={"aws/us-east-1/g5.xlarge": 2},
    ).to_settings()
    assert aws.regions == ("us-east-1", "us-west-2") and aws.allowed_families == ("g5",)
    assert aws.subnet_id == {"us-east-1": "subnet-1"} and aws.security_group_ids == ("sg-1",)
    assert aws.aws_secret_access_key.get_secret_value() == "planted-aws"
    assert "planted-aws" not in repr(aws)
    assert aws.owner_id == "team-ml" and aws.reservations == {"aws/us-east-1/g5.xlarge": 2}
    gcp = GcpComputePool(
        project="p1",
        zones=["europe-west4-a"],
        network="vpc",
        endpoint="http://127.0.0.1:9",
        extra_labels={"team": "ml"},
        service_account_info='{"type": "service_account"}',
        external_ip=False,
    ).to_settings()
    assert (gcp.project, gcp.zones, gcp.network, gcp.external_ip) == (
        "p1",
        ("europe-west4-a",),
        "vpc",
        False,
    )
    assert gcp.service_account_info.get_secret_value() == '{"type": "service_account"}'


@pytest.mark.harness
def test_runner_provisions_through_a_saved_pool_block(prefect_harness, ledger_url) -> None:
    import boto3
    from prefect import flow, task

    from prefect_cloudsched import Ledger, requires
    from prefect_cloudsched.testing.aws import MOCK_AMI, moto_server
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor

    planted = "PLANTEDaws5521"

    @requires(gpus=1, gpu_type="A10G", est_runtime=timedelta(minutes=5))
    @task
    def train() -> str:
        return "trained"

    with moto_server() as url:
        AwsComputePool(
            endpoint_url=url,
            regions=["us-east-1"],
            ami_per_region={"us-east-1": MOCK_AMI},
            aws_access_key_id="testing",
            aws_secret_access_key=planted,
            owner_id="block-test",
        ).save("aws-moto", overwrite=True)
        policy = CloudSchedPolicy(allowed_clouds=["aws"], allowed_regions=["us-east-1"])

        @flow(
            task_runner=CloudSchedTaskRunner(
                policy=policy, pools=["aws-moto"], executor=InstanceStandInExecutor()
            )
        )
        def pooled() -> str:
            return train.submit().result()

        assert pooled() == "trained"
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url)
        # moto's backend is process-wide: count only this owner's instances.
        owned = [{"Name": "tag:cloudsched-owner", "Values": ["block-test"]}]
        reservations = ec2.describe_instances(Filters=owned)["Reservations"]
        instances = [i for r in reservations for i in r["Instances"]]
    assert len(instances) == 1 and instances[0]["State"]["Name"] == "terminated"
    tags = {t["Key"]: t["Value"] for t in instances[0]["Tags"]}
    assert tags["cloudsched-owner"] == "block-test"
    [row] = Ledger(ledger_url).placements()
    assert row.instance_id == instances[0]["InstanceId"] and row.cloud == "aws"
    database = Path(ledger_url.removeprefix("sqlite:///")).read_bytes()
    assert planted.encode() not in database


# --------------------------------------------------------------------------- blocks apply
REPO_BLOCKS = Path(__file__).resolve().parents[1] / "blocks"


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_shipped_documents_parse_and_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_cloudsched.cli.blocks_cmd import build_block, read_documents

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    documents = read_documents(REPO_BLOCKS)
    assert {d.slug for d in documents} == {
        "cloudsched-policy",
        "aws-compute-pool",
        "gcp-compute-pool",
        "cloudsched-ledger",
    }
    built = {d.slug: build_block(d) for d in documents}
    assert built["aws-compute-pool"].aws_secret_access_key.get_secret_value() == "testing"
    assert built["cloudsched-ledger"].url.get_secret_value().endswith("/ledger.db")
    assert "${" not in built["cloudsched-ledger"].url.get_secret_value()


def test_substitution_reads_the_environment_and_defaults() -> None:
    from prefect_cloudsched.cli.blocks_cmd import substitute
    from prefect_cloudsched.errors import InputError

    env = {"A": "1"}
    assert substitute({"x": ["${A}-${B:-two}", 3]}, "f", env) == {"x": ["1-two", 3]}
    with pytest.raises(InputError, match=r"f.key uses \$\{MISSING\}, which is not set"):
        substitute({"key": "${MISSING}"}, "f", env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("type: nope\nname: a\n", "type 'nope' is not one of"),
        ("type: cloudsched-policy\nname: Bad_Name\n", "name 'Bad_Name' must be lowercase"),
        ("type: cloudsched-policy\nname: a\nvalues: {spot_max_share: 2}\n", "spot_max_share"),
        ("type: cloudsched-policy\nname: a\nvalues: {allowed_regions: [mars]}\n", "mars"),
        ("type: [unclosed\n", "cannot be read as a block document"),
        ("type: cloudsched-policy\nname: a\nextra: 1\n", "expected the keys type, name"),
    ],
)
def test_bad_documents_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    from prefect_cloudsched.cli import main

    _write(tmp_path, "doc.yaml", text)
    assert main(["blocks", "apply", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and "doc.yaml" in err and message in err
    assert len(err.splitlines()) == 1


BAD_PORT_URL = "postgresql://u:pw-planted@db.internal:notaport/ledger"


@pytest.mark.parametrize(
    ("url", "message"),
    [(BAD_PORT_URL, "port must be a number"), ("notaurl", "not a database URL")],
)
def test_ledger_block_refuses_a_bad_url_without_showing_it(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        CloudSchedLedger(url=url)
    assert info.value.errors()[0]["loc"][0] == "url"
    assert message in str(info.value) and "pw-planted" not in str(info.value)


def test_ledger_block_with_a_bad_url_is_not_applied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_cloudsched.cli import main

    _write(
        tmp_path,
        "ledger.yaml",
        f"type: cloudsched-ledger\nname: bad\nvalues:\n  url: {BAD_PORT_URL}\n",
    )
    # refused before the API is asked: no server is running and none is needed
    assert main(["blocks", "apply", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1
    assert "ledger.yaml: url: " in err and "port must be a number" in err
    assert "pw-planted" not in err and "Value error" not in err


def test_ledger_block_saved_before_validation_names_its_field(tmp_path: Path) -> None:
    from prefect_cloudsched.errors import LedgerError

    old = CloudSchedLedger.model_construct(url=SecretStr(BAD_PORT_URL))  # as loaded, unchecked
    with pytest.raises(LedgerError, match=r"^CloudSchedLedger block url .*port must be") as info:
        old.get_ledger()
    assert "pw-planted" not in str(info.value)


def test_blocks_apply_against_an_unreachable_api_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_cloudsched.cli import main

    dead = "http://127.0.0.1:1/api"  # nothing listens on port 1: refused at once, offline
    monkeypatch.setenv("PREFECT_API_URL", dead)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        code = main(["blocks", "apply", "--dir", str(REPO_BLOCKS)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("Error: ") and len(err.splitlines()) == 1
    assert "PREFECT_API_URL" in err and "unreachable" in err and dead in err
    assert "unexpected" not in err


def test_duplicate_documents_are_rejected(tmp_path: Path) -> None:
    from prefect_cloudsched.cli.blocks_cmd import read_documents
    from prefect_cloudsched.errors import InputError

    _write(tmp_path, "a.yaml", "type: cloudsched-policy\nname: same\n")
    _write(tmp_path, "b.json", '{"type": "cloudsched-policy", "name": "same"}')
    with pytest.raises(InputError, match="also defined in"):
        read_documents(tmp_path)


@pytest.mark.harness
def test_blocks_apply_is_idempotent(
    prefect_harness: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_cloudsched.cli import main

    folder = tmp_path / "blocks"
    for source in REPO_BLOCKS.glob("*.yaml"):
        _write(folder, source.name, source.read_text().replace("name: ", "name: idem-", 1))
    args = ["blocks", "apply", "--dir", str(folder)]
    assert main(args) == 0
    assert "4 created" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 unchanged: nothing to do" in out and "created" not in out
    assert CloudSchedPolicy.load_named("idem-dev").budget_per_run_usd == 5.0

    policy = folder / "policy-dev.yaml"
    policy.write_text(
        policy.read_text().replace("budget_per_run_usd: 5.0", "budget_per_run_usd: 7.5")
    )
    assert main(args) == 1
    assert "differs   cloudsched-policy/idem-dev (kept: pass --overwrite" in capsys.readouterr().out
    assert CloudSchedPolicy.load_named("idem-dev").budget_per_run_usd == 5.0
    assert main([*args, "--overwrite"]) == 0
    assert "updated   cloudsched-policy/idem-dev" in capsys.readouterr().out
    assert CloudSchedPolicy.load_named("idem-dev").budget_per_run_usd == 7.5


# --------------------------------------------------------------------------- executor block
def test_executor_block_defaults_are_remote_tls_on_loopback() -> None:
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.prefect.blocks import CloudSchedExecutor

    settings = CloudSchedExecutor().to_settings()
    assert settings.mode == "remote" and settings.tls and settings.scheduler_host == "127.0.0.1"
    executor = CloudSchedExecutor(idle_seconds=5, packages=["torch==2.5.1"]).build_executor()
    assert isinstance(executor, DaskExecutor)
    assert executor._config["tls"] is True and executor._config["idle_timeout"] == 5
    assert executor._config["cluster_kwargs"] == {"host": "127.0.0.1", "scheduler_port": 8786}
    assert executor._config["bootstrap"].packages == ("torch==2.5.1",)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"scheduler_host": "0.0.0.0"}, "scheduler_host"),
        ({"scheduler_host": "::"}, "scheduler_host"),
        ({"scheduler_address": "10.0.1.5:8786"}, "scheduler_address"),
        ({"tls_ca_file": "/ca.pem"}, "tls_ca_file"),
        ({"idle_seconds": -1}, "idle_seconds"),
    ],
)
def test_executor_block_refuses_bad_settings(kwargs: dict, field: str) -> None:
    from pydantic import ValidationError

    from prefect_cloudsched.prefect.blocks import CloudSchedExecutor

    with pytest.raises(ValidationError) as caught:
        CloudSchedExecutor(**kwargs)
    assert field in str(caught.value) or "tls_ca_file" in str(caught.value)


def test_build_executor_bad_input_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings, build_executor
    from prefect_cloudsched.errors import ProvisioningError

    with pytest.raises(ProvisioningError, match=r"^CloudSchedExecutor\.mode: "):
        build_executor(ExecutorSettings(mode="accounting-only"))
    missing = ExecutorSettings(
        tls_ca_file=str(tmp_path / "ca.pem"),
        tls_cert_file=str(tmp_path / "c.pem"),
        tls_key_file=str(tmp_path / "k.pem"),
    )
    with pytest.raises(ProvisioningError, match=r"^CloudSchedExecutor\.tls_ca_file.*ca\.pem"):
        build_executor(missing)
    with pytest.raises(ProvisioningError, match=r"^CloudSchedExecutor\.tls_ca_file: .*uses TLS"):
        build_executor(ExecutorSettings(scheduler_address="tls://10.0.1.5:8786"))


def test_unreachable_scheduler_is_one_line_naming_the_setting() -> None:
    import socket

    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings, build_executor
    from prefect_cloudsched.errors import ProvisioningError

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executor = build_executor(
        ExecutorSettings(scheduler_address=f"tcp://127.0.0.1:{port}", tls=False)
    )
    executor._config["client_kwargs"]["timeout"] = 2
    with pytest.raises(ProvisioningError, match=r"^CloudSchedExecutor\.scheduler_address: "):
        executor.start()
    assert executor._session is None


@pytest.mark.harness
def test_executor_block_is_picked_up_by_name(prefect_harness) -> None:
    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings
    from prefect_cloudsched.prefect.blocks import (
        CloudSchedExecutor,
        MissingBlockError,
        load_executor_settings,
    )

    CloudSchedExecutor(scheduler_host="10.0.1.15", idle_seconds=90).save(
        "remote-test", overwrite=True
    )
    settings = load_executor_settings("remote-test")
    assert settings.scheduler_host == "10.0.1.15" and settings.idle_seconds == 90
    assert load_executor_settings(settings) is settings
    assert isinstance(settings, ExecutorSettings)
    with pytest.raises(MissingBlockError, match="CloudSched Executor block 'nope' is not saved"):
        load_executor_settings("nope")


def test_policy_block_carries_the_spot_control_settings_and_the_runner_wins() -> None:
    from pydantic import ValidationError

    from prefect_cloudsched.prefect.resolve import resolve_settings
    from prefect_cloudsched.runtime.config import RunnerConfig
    from prefect_cloudsched.runtime.spot_settings import SpotControlSettings

    assert CloudSchedPolicy().to_spot_control() == SpotControlSettings()
    policy = CloudSchedPolicy(
        spot_control_change_over_minutes=25,
        spot_control_decision_minutes=10,
        spot_control_check_minutes=2,
        spot_control_end_allowance_seconds=30,
        checkpoint_move_egress_usd=1.5,
    )
    expected = SpotControlSettings(
        change_over=timedelta(minutes=25),
        decision_interval=timedelta(minutes=10),
        check_interval=timedelta(minutes=2),
        end_allowance=timedelta(seconds=30),
        egress_usd=1.5,
    )
    assert policy.to_spot_control() == expected
    assert resolve_settings(RunnerConfig(policy=policy)).spot_control == expected
    mine = SpotControlSettings(change_over=timedelta(minutes=3))
    assert resolve_settings(RunnerConfig(policy=policy, spot_control=mine)).spot_control == mine
    assert resolve_settings(RunnerConfig()).spot_control == SpotControlSettings()
    with pytest.raises(ValidationError, match="check_interval must not exceed decision_interval"):
        CloudSchedPolicy(spot_control_decision_minutes=1, spot_control_check_minutes=2)
