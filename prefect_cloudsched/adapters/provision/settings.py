"""Settings of the AWS and GCP provisioners: plain dataclasses the pool blocks map onto.

Field names are a contract: ``AwsComputePool``/``GcpComputePool`` (``blocks.py``) and user
code build these by keyword. Secrets may be ``pydantic.SecretStr`` or ``str``; they are
excluded from ``repr`` and read only when a client is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect_cloudsched.adapters.provision.images import GCP_CPU_IMAGE, GCP_GPU_IMAGE
from prefect_cloudsched.adapters.provision.retry import Backoff


@dataclass(frozen=True, kw_only=True)
class ProvisionerSettings:
    """What both provisioners read the same way: the owner, reservations, the warm pool,
    the heartbeat, the waits and the ledger (``CloudProvisioner`` uses these).

    Keyword-only, so each cloud's own fields keep their places before them.

    Attributes:
        owner_id: Owner tag (AWS) or label (GCP) on everything started; the reaper only
            touches this owner.
        reservations: Reserved / committed-use instances you own per ``Offer.capacity_key``
            (``{"aws/us-east-1/g5.xlarge": 2}``); on AWS merged over what
            ``describe_reserved_instances`` reports.
        warm_seconds: Keep a released instance idle this long for the run's next task of
            the same offer (0 = terminate / delete at once).
        warm_across_runs: A warm instance may also serve other flow runs this provisioner
            serves (opt-in; its run tag moves to the new run).
        heartbeat_seconds: Refresh the heartbeat tag this often while instances run
            (0 = off; the reaper's heartbeat TTL must then not be used for this owner).
        launch_timeout_seconds: Longest wait for an instance to be running.
        poll_seconds: Interval between state/operation polls while waiting.
        backoff: Retry budget for throttled calls.
        ledger_url: Ledger for instance rows (``None`` = the default ledger).
        record_instances: Write instance rows to the ledger.
    """

    owner_id: str = "prefect-cloudsched"
    reservations: Mapping[str, int] = field(default_factory=dict)
    warm_seconds: float = 0.0
    warm_across_runs: bool = False
    heartbeat_seconds: float = 60.0
    launch_timeout_seconds: float = 600.0
    poll_seconds: float = 2.0
    backoff: Backoff = field(default_factory=Backoff)
    ledger_url: str | None = None
    record_instances: bool = True


@dataclass(frozen=True)
class AwsSettings(ProvisionerSettings):
    """Where and how the AWS provisioner starts EC2 instances.

    Attributes:
        regions: Regions tasks may be placed in (offers elsewhere are refused as capacity,
            so the runner falls back).
        allowed_families: Only these instance families (``("g5", "p4d")``); ``None`` = all.
        ami_per_region: Machine image to boot, per region (overrides the SSM lookup there).
        gpu_image_parameter: SSM parameter naming the image of GPU shapes (``None`` = the
            Deep Learning Base OSS Nvidia Driver GPU AMI, Amazon Linux 2023; ``{arch}`` is
            replaced by ``x86_64`` or ``arm64``).
        cpu_image_parameter: SSM parameter naming the image of CPU shapes (``None`` = the
            current Amazon Linux 2023).
        subnet_id: A subnet per region (``{"us-east-1": "subnet-..."}``), one subnet id for
            a single-region pool, or ``None`` for the region's default VPC.
        security_group_ids: Security groups on every instance.
        instance_profile_arn: IAM instance profile for the instance (e.g. to read data).
        extra_tags: Tags besides ours on every instance and volume.
        endpoint_url: EC2 endpoint override (a local moto server in tests and the demo).
        aws_access_key_id: Explicit key id (``None`` = boto3's chain: env, profile, role).
        aws_secret_access_key: Its secret (``SecretStr`` or ``str``); never logged.
        aws_session_token: Optional session token (secret).

    The owner, reservations, warm pool, heartbeat, waits and ledger: see
    ``ProvisionerSettings``.
    """

    regions: tuple[str, ...] = ("us-east-1",)
    allowed_families: tuple[str, ...] | None = None
    ami_per_region: Mapping[str, str] = field(default_factory=dict)
    gpu_image_parameter: str | None = None
    cpu_image_parameter: str | None = None
    subnet_id: str | Mapping[str, str] | None = None
    security_group_ids: tuple[str, ...] = ()
    instance_profile_arn: str | None = None
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: Any = field(default=None, repr=False)
    aws_session_token: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class GcpSettings(ProvisionerSettings):
    """Where and how the GCP provisioner starts Compute Engine VMs.

    Attributes:
        project: Project id the VMs are created in.
        zones: Zones tasks may be placed in (offers elsewhere are refused as capacity).
        image: Boot disk image of CPU shapes (``projects/P/global/images/[family/]N`` or a URL).
        gpu_image: Boot disk image of GPU shapes (default: a Deep Learning VM family with
            CUDA; the driver is installed at first boot, see ``install_gpu_driver``).
        install_gpu_driver: Set the ``install-nvidia-driver=True`` metadata on GPU VMs (the
            Deep Learning VM images read it).
        network: VPC network (``None`` = ``global/networks/default``).
        extra_labels: Labels besides ours on every VM (sanitised to GCP's label rules).
        endpoint: Compute API endpoint override (the local fake GCE server); every GCP
            client (instances, zone operations) is built from it.
        service_account_info: Service-account key JSON text (``SecretStr``, ``str`` or a
            dict); ``None`` = Application Default Credentials, or anonymous credentials
            when ``endpoint`` is a loopback fake.
        spot_termination_action: ``"DELETE"`` (nothing is left to pay for once preempted)
            or ``"STOP"``.
        disk_size_gb: Boot disk size.
        external_ip: Give each VM an ephemeral external IP (one-to-one NAT).
        service_account_email: Service account the VM runs as (``None`` = none attached).

    The owner, reservations, warm pool, heartbeat, waits and ledger: see
    ``ProvisionerSettings`` (GCP retries 429 and 503 under ``backoff``).
    """

    project: str = "cloudsched-dev"
    zones: tuple[str, ...] = ("us-central1-a",)
    image: str = GCP_CPU_IMAGE
    gpu_image: str = GCP_GPU_IMAGE
    install_gpu_driver: bool = True
    network: str | None = None
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    service_account_info: Any = field(default=None, repr=False)
    spot_termination_action: str = "DELETE"
    disk_size_gb: int = 50
    external_ip: bool = True
    service_account_email: str | None = None


def secret_value(value: Any) -> Any:
    """The plain value of a ``SecretStr`` (or the value itself); call only to build clients."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if getter else value
