"""Prefect blocks: the policy, the compute pools and the ledger, editable in the Prefect UI.

This module is the ``prefect.collections`` entry point, so a Prefect server started in an
environment where the package is installed lists the blocks without a manual
``prefect block register``. The runner takes block names or instances::

    CloudSchedTaskRunner(policy="prod", pools=["aws-main", "gcp-main"], ledger="team")

Blocks map onto the plain core objects (``PolicyConfig``, ``BudgetPolicy``, the
provisioners' settings dataclasses, ``Ledger``) so the core never imports Prefect.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import Field, SecretStr, field_validator

from prefect_cloudsched.core.budget import BudgetPolicy
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.needs import normalize_gpu_type
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import CloudSchedError

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.ledger import Ledger
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

DOCS_URL = (
    "https://github.com/prefect-cloudsched/prefect-cloudsched/blob/main/docs/configuration.md"
)
LOGO_URL = (
    "https://raw.githubusercontent.com/prefect-cloudsched/prefect-cloudsched/main/docs/img/logo.png"
)

_OWNER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
#: The catalog's spot interruption bands (``catalog.BAND_ORDER``; a test keeps them equal).
SpotBand = Literal["<5%", "5-10%", "10-15%", "15-20%", ">20%"]


class MissingBlockError(CloudSchedError, ValueError):
    """A block the runner or CLI was told to load is not saved on the Prefect API."""


class _LoadNamed:
    """Loading behaviour shared by every block here (a mixin: not a block type itself)."""

    @classmethod
    def load_named(cls, name: str) -> Any:
        """Load a saved block synchronously, also from inside an async flow.

        ``Block.load`` returns a coroutine in an async context (the runner's ``__enter__``
        under an async flow), so this forces the sync path.

        Raises:
            MissingBlockError: nothing of this block type is saved under ``name``.
        """
        try:
            return cls.load(name, _sync=True)  # type: ignore[attr-defined]
        except ValueError as err:
            if not isinstance(err.__cause__, ObjectNotFound):
                raise
            kind = cls.get_block_type_name()  # type: ignore[attr-defined]
            raise MissingBlockError(
                f"{kind} block {name!r} is not saved on the Prefect API; "
                f"create it with `prefect-cloudsched blocks apply` or "
                f'`{cls.__name__}(...).save("{name}")`'
            ) from None


def _catalog_regions(cloud: str) -> set[str]:
    return {o.region for o in load_catalog().offers if o.cloud == cloud}


def _check_regions(values: list[str] | None, cloud: str | None) -> list[str] | None:
    if values is None:
        return None
    known = set(load_catalog().regions) if cloud is None else _catalog_regions(cloud)
    unknown = sorted(set(values) - known)
    if unknown:
        where = "the price catalog" if cloud is None else f"the price catalog's {cloud} offers"
        raise ValueError(f"unknown region(s) {unknown}; {where} has: {', '.join(sorted(known))}")
    return list(dict.fromkeys(values))


def _check_owner(value: str) -> str:
    if not _OWNER_RE.match(value):
        raise ValueError(
            "must be 1-63 lowercase letters, digits, '_' or '-', starting with a letter "
            "(it becomes a tag on AWS and a label on GCP)"
        )
    return value


class CloudSchedPolicy(_LoadNamed, Block):
    """Where tasks may run, how much they may cost, and how capacity is planned.

    The task runner reads it at the start of every flow run: placement limits (clouds,
    regions, GPU types, spot risk), budget caps per flow run, day and month with hard or
    soft enforcement, and the settings the capacity planner uses.

    Example:
        ```python
        from prefect_cloudsched import CloudSchedPolicy
        policy = CloudSchedPolicy.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "CloudSched Policy"
    _block_type_slug = "cloudsched-policy"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCS_URL  # type: ignore[assignment]

    objective: Literal["cost", "cost_carbon"] = Field(
        default="cost",
        description="What the capacity plan minimises: cost, or cost plus a carbon price.",
    )
    carbon_usd_per_tonne: float = Field(
        default=0.0,
        ge=0,
        description="Carbon price in USD per tonne of CO2 (used with the cost_carbon objective).",
    )
    budget_per_run_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most a single flow run may spend, in USD (empty = no cap).",
    )
    budget_per_day_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most all flow runs may spend per UTC day, in USD (empty = no cap).",
    )
    budget_per_month_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most all flow runs may spend per UTC calendar month, in USD (empty = no cap).",
    )
    budget_enforcement: Literal["hard", "soft"] = Field(
        default="hard",
        description=(
            "hard: a placement whose expected cost would cross a cap is refused; "
            "soft: it runs and a cloudsched.budget.exceeded event is emitted."
        ),
    )
    on_budget: Literal["fail", "cheapest"] = Field(
        default="fail",
        description=(
            "With a hard cap, fail the task, or first try the cheapest offer the task's "
            "hardware allows (spot despite deadline risk) if that fits the cap."
        ),
    )
    spot_max_share: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Largest share of a flow run's placements that may use spot (0 to 1).",
    )
    default_deadline_slack_hours: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Tasks without a deadline get one: their estimated runtime plus this many hours."
        ),
    )
    allowed_clouds: list[Literal["aws", "gcp"]] | None = Field(
        default=None, description="Only these clouds (empty = all)."
    )
    allowed_regions: list[str] | None = Field(
        default=None, description="Only these regions, as named by their cloud (empty = all)."
    )
    allowed_gpu_types: list[str] | None = Field(
        default=None, description="Only these GPU models, e.g. A10G, L4 (empty = all)."
    )
    reserved_first: bool = Field(
        default=True, description="Use idle reserved capacity before any other offer."
    )
    max_spot_band: SpotBand | None = Field(
        default=None,
        description="Worst spot interruption band accepted (empty = any).",
    )
    max_usd_per_hour: float | None = Field(
        default=None, gt=0, description="Never choose an offer dearer than this per hour, in USD."
    )
    change_over_minutes: float = Field(
        default=3.0,
        ge=0,
        le=240,
        description="Minutes to get a replacement instance running after a spot loss.",
    )
    service_level: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="Forecast quantile of demand the capacity plan covers (0.9 = upper 80%).",
    )
    plan_horizon_hours: int = Field(
        default=168, ge=1, le=8760, description="Hours the forecast and capacity plan cover."
    )
    solver: Literal["cbc", "highs"] = Field(
        default="cbc", description="MILP solver of the capacity plan."
    )
    solver_time_limit_s: float = Field(
        default=60.0, gt=0, le=3600, description="Time limit of one plan solve, in seconds."
    )

    @field_validator("allowed_regions")
    @classmethod
    def _known_regions(cls, value: list[str] | None) -> list[str] | None:
        return _check_regions(value, None)

    @field_validator("allowed_gpu_types")
    @classmethod
    def _known_gpus(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(normalize_gpu_type(v) for v in value))

    def to_policy_config(self) -> PolicyConfig:
        """The placement knobs as the pure ``decide()`` takes them."""
        return PolicyConfig(
            allowed_clouds=_frozen(self.allowed_clouds),
            allowed_regions=_frozen(self.allowed_regions),
            allowed_gpu_types=_frozen(self.allowed_gpu_types),
            max_spot_band=self.max_spot_band,
            change_over=timedelta(minutes=self.change_over_minutes),
            reserved_first=self.reserved_first,
            max_usd_per_hour=self.max_usd_per_hour,
        )

    def to_budget(self) -> BudgetPolicy:
        """The budget caps and spot share as the runner enforces them."""
        return BudgetPolicy(
            per_run_usd=self.budget_per_run_usd,
            per_day_usd=self.budget_per_day_usd,
            per_month_usd=self.budget_per_month_usd,
            hard=self.budget_enforcement == "hard",
            fallback_cheapest=self.on_budget == "cheapest",
            spot_max_share=self.spot_max_share,
        )

    def default_deadline_slack(self) -> timedelta | None:
        """Slack added to the estimated runtime of tasks that declare no deadline."""
        if self.default_deadline_slack_hours is None:
            return None
        return timedelta(hours=self.default_deadline_slack_hours)

    def plan_options(self) -> dict[str, Any]:
        """Keyword arguments of ``planning.plan_capacity`` this policy implies."""
        return {
            "service_level": self.service_level,
            "spot_max_share": self.spot_max_share,
            "budget_usd": self.budget_per_month_usd,
            "carbon_usd_per_tonne": self.carbon_usd_per_tonne
            if self.objective == "cost_carbon"
            else None,
            "clouds": self.allowed_clouds,
            "regions": self.allowed_regions,
            "solver": self.solver,
            "time_limit_s": self.solver_time_limit_s,
        }


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


class AwsComputePool(_LoadNamed, Block):
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
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCS_URL  # type: ignore[assignment]
    cloud: ClassVar[str] = "aws"

    if AwsCredentials is not None:
        aws_credentials: AwsCredentials | None = Field(  # type: ignore[valid-type]
            default=None,
            description="A prefect-aws credentials block; overrides the key fields below.",
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
        default_factory=dict, description="Machine image (AMI id) to boot, per region."
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
    owner_id: str = Field(
        default="prefect-cloudsched",
        description="Owner tag on everything started; the reaper only touches this owner.",
    )
    reservations: dict[str, int] = Field(
        default_factory=dict,
        description="Reserved instances you own, e.g. {'aws/us-east-1/g5.xlarge': 2}.",
    )
    warm_seconds: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Keep a released instance idle this long for the next task (0 = terminate).",
    )
    launch_timeout_seconds: float = Field(
        default=600.0, gt=0, le=3600, description="Longest wait for an instance to run."
    )

    @field_validator("regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        return _check_regions(value, "aws") or []

    @field_validator("owner_id")
    @classmethod
    def _tag_safe_owner(cls, value: str) -> str:
        return _check_owner(value)

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
        return AwsSettings(
            regions=tuple(self.regions),
            allowed_families=None
            if self.allowed_families is None
            else tuple(self.allowed_families),
            ami_per_region=dict(self.ami_per_region),
            subnet_id=dict(self.subnet_per_region) or None,
            security_group_ids=tuple(self.security_group_ids),
            instance_profile_arn=self.instance_profile_arn,
            extra_tags=dict(self.extra_tags),
            endpoint_url=self.endpoint_url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            owner_id=self.owner_id,
            reservations=dict(self.reservations),
            warm_seconds=self.warm_seconds,
            launch_timeout_seconds=self.launch_timeout_seconds,
        )

    def build_provisioner(self, ledger_url: str | None = None) -> Provisioner:
        """A ready AWS provisioner; ``ledger_url`` is where it records instance rows."""
        from prefect_cloudsched.adapters.provision.factory import build_provisioner

        return build_provisioner(replace(self.to_settings(), ledger_url=ledger_url))


class GcpComputePool(_LoadNamed, Block):
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
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCS_URL  # type: ignore[assignment]
    cloud: ClassVar[str] = "gcp"

    if GcpCredentials is not None:
        gcp_credentials: GcpCredentials | None = Field(  # type: ignore[valid-type]
            default=None,
            description="A prefect-gcp credentials block; overrides the service account below.",
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
        default="projects/debian-cloud/global/images/family/debian-12",
        description="Boot disk image (URL or family path).",
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
    owner_id: str = Field(
        default="prefect-cloudsched",
        description="Owner label on everything started; the reaper only touches this owner.",
    )
    service_account_email: str | None = Field(
        default=None, description="Service account the VMs run as (empty = none attached)."
    )
    reservations: dict[str, int] = Field(
        default_factory=dict,
        description="Committed-use VMs you own, e.g. {'gcp/us-central1-a/g2-standard-4': 1}.",
    )
    disk_size_gb: int = Field(default=50, ge=10, le=65536, description="Boot disk size in GB.")
    external_ip: bool = Field(default=True, description="Give each VM an ephemeral external IP.")
    warm_seconds: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Keep a released VM idle this long for the next task (0 = delete).",
    )
    launch_timeout_seconds: float = Field(
        default=600.0, gt=0, le=3600, description="Longest wait for a VM to run."
    )

    @field_validator("zones")
    @classmethod
    def _known_zones(cls, value: list[str]) -> list[str]:
        _check_regions([zone.rsplit("-", 1)[0] for zone in value], "gcp")
        return list(dict.fromkeys(value))

    @field_validator("owner_id")
    @classmethod
    def _tag_safe_owner(cls, value: str) -> str:
        return _check_owner(value)

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
        return GcpSettings(
            project=self.project,
            zones=tuple(self.zones),
            image=self.image,
            network=self.network,
            extra_labels=dict(self.extra_labels),
            endpoint=self.endpoint,
            service_account_info=info,
            owner_id=self.owner_id,
            service_account_email=self.service_account_email,
            reservations=dict(self.reservations),
            disk_size_gb=self.disk_size_gb,
            external_ip=self.external_ip,
            warm_seconds=self.warm_seconds,
            launch_timeout_seconds=self.launch_timeout_seconds,
        )

    def build_provisioner(self, ledger_url: str | None = None) -> Provisioner:
        """A ready GCP provisioner; ``ledger_url`` is where it records instance rows."""
        from prefect_cloudsched.adapters.provision.factory import build_provisioner

        return build_provisioner(replace(self.to_settings(), ledger_url=ledger_url))


class CloudSchedLedger(_LoadNamed, Block):
    """The database every flow run records its placements and costs in.

    Point every flow of a team at one PostgreSQL database (``postgresql+psycopg://...``;
    ``pip install 'prefect-cloudsched[postgres]'``) to get one cost report and budgets that
    count all runs. The URL is a secret: it usually carries a password.

    Example:
        ```python
        from prefect_cloudsched import CloudSchedLedger
        ledger_block = CloudSchedLedger.load("BLOCK_NAME")
        ledger = ledger_block.get_ledger()
        ```
    """

    _block_type_name = "CloudSched Ledger"
    _block_type_slug = "cloudsched-ledger"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCS_URL  # type: ignore[assignment]

    url: SecretStr = Field(
        description="SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host/db.",
    )

    def get_ledger(self) -> Ledger:
        """Open (and migrate if needed) the ledger at this URL."""
        from prefect_cloudsched.adapters.ledger import Ledger

        return Ledger(self.url.get_secret_value())


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
        raise ValueError(
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


__all__ = [
    "AwsComputePool",
    "CloudSchedLedger",
    "CloudSchedPolicy",
    "GcpComputePool",
    "MissingBlockError",
    "load_pool",
]
