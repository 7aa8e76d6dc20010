"""AWS provisioner: EC2 on-demand and spot instances through ``run_instances``.

Every instance (and its volumes) carries our owner, run, task, option and heartbeat tags;
``ClientToken`` makes a retried launch return the same instance instead of a second one.
boto3 is imported lazily: importing this module costs nothing.

Example:
    ```python
    from prefect_cloudsched.adapters.provision.aws import AwsProvisioner, AwsSettings

    aws = AwsProvisioner(AwsSettings(regions=("us-east-1",),
                                     ami_per_region={"us-east-1": "ami-0abc..."}))
    runner = CloudSchedTaskRunner(provisioners={"aws": aws},
                                  reserved=aws.owned_reservations())
    ```
"""

from __future__ import annotations

import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.adapters.provision.aws_errors import (
    AUTH_CODES,
    error_code,
    is_throttle,
    launch_error,
)
from prefect_cloudsched.adapters.provision.base import (
    HEARTBEAT_TAG,
    OWNER_TAG,
    RUN_TAG,
    TASK_TAG,
    InstanceHandle,
)
from prefect_cloudsched.adapters.provision.common import CloudProvisioner, LaunchRequest, Phase
from prefect_cloudsched.adapters.provision.images import aws_arch, aws_image_parameter
from prefect_cloudsched.adapters.provision.lifecycle import OwnedInstance, launch_tags, logger
from prefect_cloudsched.adapters.provision.settings import AwsSettings, secret_value
from prefect_cloudsched.core.catalog import Catalog, Offer, PurchaseOption
from prefect_cloudsched.errors import CapacityError, ProvisioningError

__all__ = ("AwsProvisioner", "AwsSettings", "refresh_spot_prices")

LIVE_SOURCE = "live:aws-spot-price-history"

_GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
_LIVE_STATES = ["pending", "running", "stopping", "stopped"]
SPOT_TERMINATION = "Server.SpotInstanceTermination"


def _tags(item: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


@functools.cache
def _shared_loader() -> Any:
    """One botocore data loader per process: the EC2 model is parsed once, not per session."""
    from botocore.loaders import create_loader

    return create_loader()


def _session(settings: AwsSettings) -> Any:
    import boto3
    import botocore.session

    if bool(settings.aws_access_key_id) != bool(secret_value(settings.aws_secret_access_key)):
        raise ProvisioningError(
            "AwsSettings.aws_access_key_id/aws_secret_access_key: give both or neither "
            "(neither = the environment, profile or instance role)"
        )
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())
    return boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret_value(settings.aws_secret_access_key),
        aws_session_token=secret_value(settings.aws_session_token),
        botocore_session=core,
    )


class AwsProvisioner(CloudProvisioner):
    """Starts, checks, releases and finds our EC2 instances (see ``Provisioner``).

    Thread-safe: the runner calls ``ensure``/``release`` from its worker threads.
    """

    cloud = "aws"
    settings: AwsSettings

    def __init__(self, settings: AwsSettings) -> None:
        self.settings = settings
        self._session = _session(settings)
        self._check_regions()
        self._clients: dict[tuple[str, str], Any] = {}
        self._subnets: dict[str, str | None] = {}
        self._images: dict[tuple[str, str], str] = {}
        self._init_lifecycle()

    def __repr__(self) -> str:
        return (
            f"AwsProvisioner(owner_id={self.settings.owner_id!r}, regions={self.settings.regions})"
        )

    # ------------------------------------------------------------------ clients
    def _check_regions(self) -> None:
        known = set(self._session.get_available_regions("ec2"))
        for region in self.settings.regions:
            if region not in known:
                raise ProvisioningError(
                    f"AwsSettings.regions: {region!r} is not an AWS region; use e.g. us-east-1"
                )

    def client(self, region: str, service: str = "ec2") -> Any:
        """The (cached, thread-safe) client of one region (EC2 unless ``service`` says)."""
        with self._lock:
            found = self._clients.get((service, region))
            if found is not None:
                return found
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1},  # throttling is retried by Backoff
                connect_timeout=10,
                read_timeout=60,
                user_agent_extra="prefect-cloudsched",
            )
            client = self._session.client(
                service, region_name=region, endpoint_url=self.settings.endpoint_url, config=config
            )
            self._clients[(service, region)] = client
            return client

    def _call(self, region: str, operation: str, *, service: str = "ec2", **kwargs: Any) -> Any:
        """One call with throttling backoff; credential/endpoint problems made readable."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        client = self.client(region, service)
        try:
            return self.settings.backoff.call(
                lambda: getattr(client, operation)(**kwargs), is_throttle
            )
        except (NoCredentialsError, PartialCredentialsError):
            raise ProvisioningError(
                "AwsSettings.aws_access_key_id/aws_secret_access_key: no AWS credentials found; "
                "set them, or AWS_PROFILE / an instance role"
            ) from None
        except EndpointConnectionError as err:
            raise ProvisioningError(
                f"AwsSettings.endpoint_url: cannot reach {service} in {region} "
                f"({err.kwargs.get('endpoint_url')}); check the endpoint and the network"
            ) from None
        except ClientError as err:
            if error_code(err) in AUTH_CODES:
                raise ProvisioningError(
                    f"AwsSettings.aws_access_key_id/aws_secret_access_key: AWS refused the "
                    f"credentials for {operation} in {region} ({error_code(err)}); check the "
                    "keys and the IAM policy in docs/real-clouds.md"
                ) from None
            raise

    # ------------------------------------------------------------------ lifecycle hooks
    def _admit(self, offer: Offer) -> str:
        if offer.cloud != "aws":
            raise ProvisioningError(f"AwsProvisioner got a {offer.cloud} offer {offer.key}")
        if offer.region not in self.settings.regions:
            raise CapacityError(
                offer.key,
                "RegionNotInPool",
                f"{offer.region} is not in AwsSettings.regions {list(self.settings.regions)}",
            )
        families = self.settings.allowed_families
        if families is not None and offer.instance_type.split(".")[0] not in families:
            raise CapacityError(
                offer.key,
                "FamilyNotInPool",
                f"{offer.instance_type} is not in AwsSettings.allowed_families {list(families)}",
            )
        return offer.region

    def _image(self, offer: Offer) -> str:
        """``ami_per_region`` if set there, else the public SSM parameter of the shape."""
        region = offer.region
        configured = self.settings.ami_per_region.get(region)
        if configured:
            return configured
        arch = aws_arch(offer.instance_type)
        if offer.gpu_count:
            setting, custom = "gpu_image_parameter", self.settings.gpu_image_parameter
        else:
            setting, custom = "cpu_image_parameter", self.settings.cpu_image_parameter
        name = (custom or aws_image_parameter(offer)).format(arch=arch)
        cached = self._images.get((region, name))
        if cached:
            return cached
        from botocore.exceptions import ClientError

        try:
            answer = self._call(region, "get_parameter", service="ssm", Name=name)
        except ClientError as err:
            raise ProvisioningError(
                f"AwsSettings.{setting}: no image for {offer.instance_type} in {region} "
                f"(SSM parameter {name}: {error_code(err) or err}); set "
                f"AwsSettings.ami_per_region[{region!r}] to an AMI id of that region"
            ) from None
        image = str(answer["Parameter"]["Value"])
        self._images[(region, name)] = image
        return image

    def _launch_once(self, request: LaunchRequest) -> InstanceHandle | None:
        called = datetime.now(UTC)
        region = request.location
        instance = self._launch(request, self._subnet(region))
        if self._replayed_dead(region, instance, called):
            return None
        return InstanceHandle(
            cloud="aws",
            instance_id=instance["InstanceId"],
            offer_key=request.offer.key,
            region=region,
            zone=instance.get("Placement", {}).get("AvailabilityZone"),
            option=request.offer.option.value,
            run_id=request.run_id,
        )

    def _subnet(self, region: str) -> str | None:
        """The configured subnet of ``region``, checked once to exist there."""
        configured = self.settings.subnet_id
        if configured is None:
            return None
        if isinstance(configured, str):
            subnet: str | None = configured
            setting = "AwsSettings.subnet_id"
        else:
            subnet = configured.get(region)
            setting = f"AwsSettings.subnet_id[{region!r}]"
        if subnet is None or region in self._subnets:
            return subnet
        from botocore.exceptions import ClientError

        try:
            self._call(region, "describe_subnets", SubnetIds=[subnet])
        except ClientError as err:
            if error_code(err).startswith("InvalidSubnetID"):
                raise ProvisioningError(
                    f"{setting}: subnet {subnet} does not exist in {region}; give a subnet of "
                    "that region (or none for the default VPC)"
                ) from None
            raise
        self._subnets[region] = subnet
        return subnet

    def _launch(self, request: LaunchRequest, subnet: str | None) -> dict[str, Any]:
        offer, run_id, task_name = request.offer, request.run_id, request.task_name
        image, startup_script = request.image, request.startup_script
        tags = [
            *({"Key": k, "Value": v} for k, v in self.settings.extra_tags.items()),
            *(
                {"Key": k, "Value": v}
                for k, v in launch_tags(
                    self.settings.owner_id, run_id, task_name[:255], offer.option.value
                ).items()
            ),
            {"Key": "Name", "Value": f"cloudsched-{task_name}"[:255]},
        ]
        request: dict[str, Any] = dict(
            ImageId=image,
            InstanceType=offer.instance_type,
            MinCount=1,
            MaxCount=1,
            ClientToken=request.digest[:64],
            InstanceInitiatedShutdownBehavior="terminate",  # a powered-off worker costs nothing
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled"},  # IMDSv2
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        )
        if startup_script:
            request["UserData"] = startup_script  # boto3 base64-encodes it for RunInstances
        if subnet:
            request["SubnetId"] = subnet
        if self.settings.security_group_ids:
            request["SecurityGroupIds"] = list(self.settings.security_group_ids)
        if self.settings.instance_profile_arn:
            request["IamInstanceProfile"] = {"Arn": self.settings.instance_profile_arn}
        if offer.option is PurchaseOption.SPOT:
            request["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        from botocore.exceptions import ClientError

        try:
            response = self._call(offer.region, "run_instances", **request)
        except ClientError as err:
            raise launch_error(offer, err, image) from None
        return response["Instances"][0]

    def _replayed_dead(self, region: str, launched: dict[str, Any], called: datetime) -> bool:
        """Whether EC2 answered the token with an instance of an earlier process, now ended.

        A new process of the same flow run restarts the sequence, so its first token can
        match an instance that was launched long ago or terminated by a user (us): never a
        fresh launch that failed, which is a capacity problem instead.
        """
        current = self._describe(region, launched["InstanceId"])
        if current is not None and current["State"]["Name"] not in _GONE_STATES:
            return False
        launch_time = launched.get("LaunchTime")
        old = (
            isinstance(launch_time, datetime) and launch_time.timestamp() < called.timestamp() - 60
        )
        reason = (current or {}).get("StateReason", {}).get("Code", "")
        return old or reason.startswith("Client.")

    def _describe(self, region: str, instance_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            reservations = self._call(region, "describe_instances", InstanceIds=[instance_id])
        except ClientError as err:
            if error_code(err) == "InvalidInstanceID.NotFound":
                return None
            raise
        for reservation in reservations.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return instance
        return None

    def _state(self, handle: InstanceHandle) -> tuple[Phase, str]:
        instance = self._describe(handle.region, handle.instance_id)
        state = instance["State"]["Name"] if instance else "terminated"
        if state == "running":
            return "running", state
        if state in _GONE_STATES:
            return "gone", (instance or {}).get("StateReason", {}).get("Code", state)
        return "pending", state

    def _lost(self, handle: InstanceHandle) -> tuple[bool, str] | None:
        instance = self._describe(handle.region, handle.instance_id)
        state = instance["State"]["Name"] if instance else "terminated"
        if state not in _GONE_STATES:
            return None
        reason = (instance or {}).get("StateReason", {}).get("Code", "instance vanished")
        if handle.option == PurchaseOption.SPOT.value or reason == SPOT_TERMINATION:
            return True, (
                f"spot instance {handle.instance_id} ({handle.offer_key}) was {state} by EC2: "
                f"{reason}"
            )
        return False, (
            f"instance {handle.instance_id} ({handle.offer_key}) was {state} by someone else: "
            f"{reason}"
        )

    def _relabel(self, handle: InstanceHandle, run_id: str, task_name: str) -> None:
        self._call(
            handle.region,
            "create_tags",
            Resources=[handle.instance_id],
            Tags=[
                {"Key": TASK_TAG, "Value": task_name[:255]},
                {"Key": RUN_TAG, "Value": run_id},
            ],
        )

    def _end(self, handle: InstanceHandle) -> None:
        self._terminate(handle.region, [handle.instance_id])

    def _terminate(self, region: str, instance_ids: list[str]) -> None:
        from botocore.exceptions import ClientError

        if not instance_ids:
            return
        try:
            self._call(region, "terminate_instances", InstanceIds=instance_ids)
        except ClientError as err:
            if error_code(err) != "InvalidInstanceID.NotFound":
                raise
            if len(instance_ids) > 1:  # EC2 fails the whole call: end the others one by one
                for instance_id in instance_ids:
                    self._terminate(region, [instance_id])

    def release_run(self, run_id: str) -> int:
        """Terminate every live instance of ours tagged with ``run_id``; return how many.

        Warm instances kept for other runs (``warm_across_runs``) are spared.
        """
        kept = self.kept_for_other_runs(run_id)
        count = 0
        for region in self.settings.regions:
            found = self._owned(region, [{"Name": f"tag:{RUN_TAG}", "Values": [run_id]}])
            ids = [o.instance_id for o in found if o.instance_id not in kept]
            for start in range(0, len(ids), 500):
                self._terminate(region, ids[start : start + 500])
            count += len(ids)
        for handle in [*self.book.live(run_id), *self.book.parked(run_id)]:
            if handle.instance_id not in kept:
                self.book.stopped(handle)
        return count

    # ------------------------------------------------------------------ discovery
    def list_owned(self, regions: Iterable[str] | None = None) -> list[OwnedInstance]:
        """Every not-yet-terminated instance carrying our owner tag, in our regions."""
        found: list[OwnedInstance] = []
        for region in regions or self.settings.regions:
            found.extend(self._owned(region, []))
        return found

    def _owned(self, region: str, filters: list[dict[str, Any]]) -> list[OwnedInstance]:
        client = self.client(region)
        filters = [
            {"Name": f"tag:{OWNER_TAG}", "Values": [self.settings.owner_id]},
            {"Name": "instance-state-name", "Values": _LIVE_STATES},
            *filters,
        ]
        paginator = client.get_paginator("describe_instances")
        found = []
        pages = self.settings.backoff.call(
            lambda: list(paginator.paginate(Filters=filters)), is_throttle
        )
        for page in pages:
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    found.append(self._owned_view(region, instance))
        return [o for o in found if o.owner_id == self.settings.owner_id]

    def _owned_view(self, region: str, instance: Mapping[str, Any]) -> OwnedInstance:
        tags = _tags(instance)
        launched = instance.get("LaunchTime")
        return OwnedInstance.from_tags(
            tags,
            cloud="aws",
            instance_id=instance["InstanceId"],
            region=region,
            zone=instance.get("Placement", {}).get("AvailabilityZone"),
            instance_type=instance.get("InstanceType", ""),
            state=instance["State"]["Name"],
            spot=instance.get("InstanceLifecycle") == "spot",
            launched_at=launched if isinstance(launched, datetime) else None,
        )

    def terminate_owned(self, instance: OwnedInstance) -> bool:
        """Terminate one instance the reaper chose, after re-reading its owner tag.

        Returns:
            ``False`` (and nothing done) unless the instance still carries our owner tag.
        """
        current = self._describe(instance.region, instance.instance_id)
        if current is None or _tags(current).get(OWNER_TAG) != self.settings.owner_id:
            return False
        self._terminate(instance.region, [instance.instance_id])
        self.book.stopped(instance.handle(), state="reaped")
        return True

    def _refresh_heartbeats(self, handles: list[InstanceHandle]) -> None:
        by_region: dict[str, list[str]] = defaultdict(list)
        for handle in handles:
            by_region[handle.region].append(handle.instance_id)
        stamp = [{"Key": HEARTBEAT_TAG, "Value": str(int(time.time()))}]
        for region, ids in by_region.items():
            self._call(region, "create_tags", Resources=ids, Tags=stamp)

    # ------------------------------------------------------------------ prices, reservations
    def spot_prices(self, region: str, instance_types: Iterable[str]) -> dict[str, float]:
        """Current spot price per instance type in ``region`` (median over its AZs)."""
        client = self.client(region)
        paginator = client.get_paginator("describe_spot_price_history")
        by_type: dict[str, dict[str, float]] = defaultdict(dict)
        pages = self.settings.backoff.call(
            lambda: list(
                paginator.paginate(
                    InstanceTypes=sorted(set(instance_types)),
                    ProductDescriptions=["Linux/UNIX"],
                    StartTime=datetime.now(UTC),
                )
            ),
            is_throttle,
        )
        for page in pages:
            for row in page.get("SpotPriceHistory", []):
                zones = by_type[row["InstanceType"]]
                zones.setdefault(row["AvailabilityZone"], float(row["SpotPrice"]))  # newest first
        return {t: statistics.median(z.values()) for t, z in by_type.items() if z}

    def owned_reservations(self) -> dict[str, int]:
        """Active reserved instances per ``capacity_key`` (zero-marginal-cost capacity).

        From ``describe_reserved_instances`` where the endpoint implements it (moto does
        not), overridden per key by ``AwsSettings.reservations``.
        """
        found: dict[str, int] = defaultdict(int)
        for region in self.settings.regions:
            try:
                response = self.client(region).describe_reserved_instances(
                    Filters=[{"Name": "state", "Values": ["active"]}]
                )
            except Exception as err:  # NotImplementedError in moto; no permission; offline
                if error_code(err) in AUTH_CODES:  # the user's reservations would go unused
                    logger.warning(
                        "ec2:DescribeReservedInstances denied in %s (%s): reserved instances "
                        "there are not used first; grant it, or list them in "
                        "AwsSettings.reservations",
                        region,
                        error_code(err),
                    )
                else:
                    logger.info("describe_reserved_instances unavailable in %s: %s", region, err)
                continue
            for item in response.get("ReservedInstances", []):
                found[f"aws/{region}/{item['InstanceType']}"] += int(item["InstanceCount"])
        return {**found, **self.settings.reservations}


def refresh_spot_prices(catalog: Catalog, provisioner: AwsProvisioner) -> Catalog:
    """The catalog with AWS spot prices of the provisioner's regions re-read live.

    Re-priced offers carry ``source="live:aws-spot-price-history"``; offers whose price
    could not be read (API unreachable, type unknown there, price above on-demand) keep the
    snapshot price and source, so a report can tell which price a decision used.
    """
    wanted: dict[str, set[str]] = defaultdict(set)
    for offer in catalog.offers:
        spot = offer.cloud == "aws" and offer.option is PurchaseOption.SPOT
        if spot and offer.region in provisioner.settings.regions:
            wanted[offer.region].add(offer.instance_type)
    from botocore.exceptions import ConnectionError as EndpointUnreachable

    live: dict[tuple[str, str], float] = {}
    for region, types in wanted.items():
        try:
            prices = provisioner.spot_prices(region, types)
        except EndpointUnreachable as err:  # offline: do not wait out a timeout per region
            logger.warning("AWS unreachable (%s); spot prices from the snapshot", err)
            break
        except Exception as err:
            logger.warning(
                "live spot prices unavailable in %s (%s); using the snapshot", region, err
            )
            continue
        live.update({(region, t): p for t, p in prices.items()})
    if not live:
        return catalog
    offers = []
    for offer in catalog.offers:
        price = live.get((offer.region, offer.instance_type))
        if (
            offer.cloud == "aws"
            and offer.option is PurchaseOption.SPOT
            and price is not None
            and 0 < price <= offer.ondemand_usd_per_hour
        ):
            offer = replace(offer, usd_per_hour=price, source=LIVE_SOURCE)
        offers.append(offer)
    return Catalog(offers)
