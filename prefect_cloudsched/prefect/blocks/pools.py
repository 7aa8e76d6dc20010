"""The compute pool blocks: the AWS account / GCP project the runner may start instances in."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from prefect_cloudsched.adapters.provision.images import GCP_CPU_IMAGE, GCP_GPU_IMAGE
from prefect_cloudsched.errors import InputError, MissingBlockError
from prefect_cloudsched.prefect.blocks._common import (
    _check_owner,
    _check_regions,
    _CloudSchedBlock,
    settings_from_fields,
)

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.provision.base import Provisioner
    from prefect_cloudsched.adapters.provision.settings import AwsSettings, GcpSettings

try:  # optional extras: prefect-aws / prefect-gcp credentials blocks
    from prefect_aws import AwsCredentials
except ImportError:  # pragma: no cover - depends on the installed extras
    AwsCredentials = None  # type: ignore[assignment,misc]
try:
    from prefect_gcp import GcpCredentials
except ImportError:  # pragma: no cover - depends on the installed extras
    GcpCredentials = None  # type: ignore[assignment,misc]


# The fields both pools have, with one default and one set of bounds (the provisioners share
# the lifecycle they configure); only the wording names the cloud's instance or marker.
def _credentials_field(collection: str, overridden: str) -> Any:
    return Field(
        default=None,
        description=f"A {collection} credentials block; overrides the {overridden} below.",
    )


def _owner_id_field(marker: str) -> Any:
    return Field(
        default="prefect-cloudsched",
        description=f"Owner {marker} on everything started; the reaper only touches this owner.",
    )


def _warm_seconds_field(noun: str, release: str) -> Any:
    return Field(
        default=0.0,
        ge=0,
        le=3600,
        description=f"Keep a released {noun} idle this long for the next task (0 = {release}).",
    )


def _warm_across_runs_field(noun: str) -> Any:
    return Field(
        default=False, description=f"Let a warm {noun} serve the next flow run too (opt-in)."
    )


def _launch_timeout_field(an_instance: str) -> Any:
    return Field(
        default=600.0,
        gt=0,
        le=3600,
        description=f"Longest wait for {an_instance} to run. A hard budget cap holds this "
        "much instance time for each launch (a boot cannot be stopped midway).",
    )


class _ComputePool(_CloudSchedBlock, Block, ABC):
    """What both pool blocks share: the owner check and building the provisioner.

    Not a block type: ``ABC`` among its bases keeps Prefect from registering it.
    """

    @field_validator("owner_id", check_fields=False)
    @classmethod
    def _tag_safe_owner(cls, value: str) -> str:
        return _check_owner(value)

    @abstractmethod
    def to_settings(self) -> AwsSettings | GcpSettings:
        """The provisioner's settings (secrets stay ``SecretStr``)."""

    def build_provisioner(self, ledger_url: str | None = None) -> Provisioner:
        """A ready provisioner of this pool's cloud; ``ledger_url`` is where it records
        instance rows."""
        from prefect_cloudsched.adapters.provision.factory import build_provisioner

        return build_provisioner(replace(self.to_settings(), ledger_url=ledger_url))


class AwsComputePool(_ComputePool):
    """The AWS account, regions and network the runner may start EC2 instances in.

    Credentials come from a prefect-aws ``AwsCredentials`` block when prefect-aws is
    installed (``pip install 'prefect-cloudsched[aws]'``), else from the explicit key
    fields, else from the environment / instance role as boto3 finds them. Every instance
    is tagged with ``owner_id`` and the flow run id, so the reaper finds it.

    Example:
        ```python
        from prefect_cloudsched import AwsComputePool
        pool = AwsComputePool.load("BLOCK_NAME")
        provisioner = pool.build_provisioner()
        ```
    """

    _block_type_name = "CloudSched AWS Compute Pool"
    _block_type_slug = "aws-compute-pool"
    cloud: ClassVar[str] = "aws"

    if AwsCredentials is not None:
        aws_credentials: AwsCredentials | None = _credentials_field(  # type: ignore[valid-type]
            "prefect-aws", "key fields"
        )
    aws_access_key_id: str | None = Field(
        default=None, description="Access key id (empty = the environment or instance role)."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key that goes with the access key id."
    )
    aws_session_token: SecretStr | None = Field(
        default=None, description="Session token of temporary credentials (optional)."
    )
    regions: list[str] = Field(
        default_factory=lambda: ["us-east-1"],
        min_length=1,
        description="AWS regions the runner may place tasks in.",
    )
    allowed_families: list[str] | None = Field(
        default=None,
        description="Only these instance families, e.g. g5, p4d (empty = all in the catalog).",
    )
    ami_per_region: dict[str, str] = Field(
        default_factory=dict,
        description="AMI id to boot, per region (empty = the current public image per shape).",
    )
    gpu_image_parameter: str | None = Field(
        default=None,
        description="SSM parameter naming the GPU-shape image (empty = Deep Learning Base "
        "OSS Nvidia Driver GPU AMI, Amazon Linux 2023).",
    )
    cpu_image_parameter: str | None = Field(
        default=None,
        description="SSM parameter naming the CPU-shape image (empty = Amazon Linux 2023).",
    )
    subnet_per_region: dict[str, str] = Field(
        default_factory=dict, description="Subnet id to launch into, per region (empty = default)."
    )
    security_group_ids: list[str] = Field(
        default_factory=list, description="Security groups attached to every instance."
    )
    instance_profile_arn: str | None = Field(
        default=None, description="IAM instance profile ARN given to every instance."
    )
    extra_tags: dict[str, str] = Field(
        default_factory=dict, description="Tags added to every instance besides ours."
    )
    endpoint_url: str | None = Field(
        default=None, description="EC2 endpoint override, e.g. a local moto server for tests."
    )
    owner_id: str = _owner_id_field("tag")
    reservations: dict[str, int] = Field(
        default_factory=dict,
        description="Reserved instances you own, e.g. {'aws/us-east-1/g5.xlarge': 2}.",
    )
    warm_seconds: float = _warm_seconds_field("instance", "terminate")
    warm_across_runs: bool = _warm_across_runs_field("instance")
    launch_timeout_seconds: float = _launch_timeout_field("an instance")

    @field_validator("regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        return _check_regions(value, "aws") or []

    def to_settings(self) -> AwsSettings:
        """The provisioner's ``AwsSettings`` (secrets stay ``SecretStr``)."""
        from prefect_cloudsched.adapters.provision.settings import AwsSettings

        key_id, secret = self.aws_access_key_id, self.aws_secret_access_key
        token = self.aws_session_token
        credentials = getattr(self, "aws_credentials", None)
        if credentials is not None:
            key_id = credentials.aws_access_key_id
            secret = credentials.aws_secret_access_key
            token = credentials.aws_session_token
        return settings_from_fields(
            self,
            AwsSettings,
            subnet_id=dict(self.subnet_per_region) or None,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
        )


class GcpComputePool(_ComputePool):
    """The GCP project, zones and network the runner may start Compute Engine VMs in.

    Credentials come from a prefect-gcp ``GcpCredentials`` block when prefect-gcp is
    installed, else from the service-account JSON field, else from Application Default
    Credentials (or anonymous ones against a local fake endpoint). Every VM carries the
    ``owner_id`` and flow run labels, so the reaper finds it.

    Example:
        ```python
        from prefect_cloudsched import GcpComputePool
        pool = GcpComputePool.load("BLOCK_NAME")
        provisioner = pool.build_provisioner()
        ```
    """

    _block_type_name = "CloudSched GCP Compute Pool"
    _block_type_slug = "gcp-compute-pool"
    cloud: ClassVar[str] = "gcp"

    if GcpCredentials is not None:
        gcp_credentials: GcpCredentials | None = _credentials_field(  # type: ignore[valid-type]
            "prefect-gcp", "service account"
        )
    service_account_info: SecretStr | None = Field(
        default=None,
        description="Service-account key JSON (empty = Application Default Credentials).",
    )
    project: str = Field(
        default="cloudsched-dev",
        min_length=1,
        description="GCP project id the VMs are created in.",
    )
    zones: list[str] = Field(
        default_factory=lambda: ["us-central1-a"],
        min_length=1,
        description="Zones the runner may place tasks in, e.g. us-central1-a.",
    )
    image: str = Field(
        default=GCP_CPU_IMAGE,
        description="Boot disk image of CPU shapes (URL or family path).",
    )
    gpu_image: str = Field(
        default=GCP_GPU_IMAGE,
        description="Boot disk image of GPU shapes (a Deep Learning VM family with CUDA).",
    )
    network: str | None = Field(
        default=None, description="VPC network (empty = the project's default network)."
    )
    extra_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every VM besides ours."
    )
    endpoint: str | None = Field(
        default=None,
        description="Compute API endpoint override, e.g. the local fake GCE server for tests.",
    )
    owner_id: str = _owner_id_field("label")
    service_account_email: str | None = Field(
        default=None, description="Service account the VMs run as (empty = none attached)."
    )
    reservations: dict[str, int] = Field(
        default_factory=dict,
        description="Committed-use VMs you own, e.g. {'gcp/us-central1-a/g2-standard-4': 1}.",
    )
    disk_size_gb: int = Field(default=50, ge=10, le=65536, description="Boot disk size in GB.")
    external_ip: bool = Field(default=True, description="Give each VM an ephemeral external IP.")
    warm_seconds: float = _warm_seconds_field("VM", "delete")
    warm_across_runs: bool = _warm_across_runs_field("VM")
    launch_timeout_seconds: float = _launch_timeout_field("a VM")

    @field_validator("zones")
    @classmethod
    def _known_zones(cls, value: list[str]) -> list[str]:
        _check_regions([zone.rsplit("-", 1)[0] for zone in value], "gcp")
        return list(dict.fromkeys(value))

    @field_validator("service_account_info")
    @classmethod
    def _json_object(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            parsed = json.loads(value.get_secret_value())
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError("must be the JSON text of a service-account key (an object)")
        return value

    def to_settings(self) -> GcpSettings:
        """The provisioner's ``GcpSettings`` (the key stays ``SecretStr``)."""
        from prefect_cloudsched.adapters.provision.settings import GcpSettings

        info = self.service_account_info
        credentials = getattr(self, "gcp_credentials", None)
        if credentials is not None and credentials.service_account_info is not None:
            info = SecretStr(json.dumps(credentials.service_account_info.get_secret_value()))
        return settings_from_fields(self, GcpSettings, service_account_info=info)


POOL_BLOCKS: tuple[type[AwsComputePool] | type[GcpComputePool], ...] = (
    AwsComputePool,
    GcpComputePool,
)


def load_pool(spec: str | AwsComputePool | GcpComputePool) -> AwsComputePool | GcpComputePool:
    """A pool block from an instance, ``"slug/name"`` or a bare name (AWS tried first)."""
    if not isinstance(spec, str):
        return spec
    if "/" in spec:
        slug, name = spec.split("/", 1)
        for cls in POOL_BLOCKS:
            if cls.get_block_type_slug() == slug:
                return cls.load_named(name)
        raise InputError(
            f"pool {spec!r}: unknown block type {slug!r}; use "
            + " or ".join(f"{c.get_block_type_slug()}/NAME" for c in POOL_BLOCKS)
        )
    for cls in POOL_BLOCKS:
        try:
            return cls.load_named(spec)
        except MissingBlockError:
            continue
    raise MissingBlockError(
        f"no compute pool block named {spec!r} (looked for "
        + " and ".join(c.get_block_type_slug() for c in POOL_BLOCKS)
        + "); create it with `prefect-cloudsched blocks apply` or "
        f'`AwsComputePool(...).save("{spec}")`'
    )
