"""``MockClouds``: a local AWS (moto) and GCP (fake GCE) with ready provisioners for both.

The demo and the tests run the real provisioners — real boto3 and google-cloud-compute
clients, real HTTP on loopback — against these stand-ins, so a new user sees instances
start, run, get interrupted, fall back and stop without a cloud account or a network.

Example:
    ```python
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.testing.clouds import MockClouds

    with MockClouds(owner_id="demo", interrupt_first_spot=1) as clouds:
        runner = CloudSchedTaskRunner(provisioners=clouds.provisioners)
        my_flow.with_options(task_runner=runner)()
        assert clouds.running_instances(owner_id="demo") == []   # nothing leaked
    ```

**Following a real market.** ``MockClouds(spot_trace="bench/data/aws_p3.2xlarge_avail_….csv",
seconds_per_trace_hour=0.1)`` replays that availability trace in scaled time (trace time 0 =
entering the context): a spot launch of the trace's instance type in a traced region is
refused with EC2's ``InsufficientInstanceCapacity`` while every zone of the region is down,
and a running one is interrupted when the zone it landed in (the first one up, as the
simulator does) goes down. :class:`TraceClock` converts between the two clocks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect_cloudsched.adapters.provision.aws import AwsProvisioner
from prefect_cloudsched.adapters.provision.base import OWNER_TAG, RUN_TAG, InstanceHandle
from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner
from prefect_cloudsched.adapters.provision.retry import Backoff
from prefect_cloudsched.adapters.provision.settings import AwsSettings, GcpSettings
from prefect_cloudsched.core.catalog import Offer, PurchaseOption, load_catalog
from prefect_cloudsched.simulate.spot import SpotTrace, load_spot_trace
from prefect_cloudsched.testing.aws import DUMMY_KEYS, MOCK_AMI, MotoControl, moto_server

_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": DUMMY_KEYS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": DUMMY_KEYS["aws_secret_access_key"],
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_REGION": "us-east-1",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}
_FAST = Backoff(attempts=5, base_seconds=0.02, max_seconds=0.2, deadline_seconds=10)


def _set_env(values: dict[str, str | None]) -> None:
    """Set each variable of ``values`` in ``os.environ``; ``None`` unsets it."""
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class TraceClock:
    """A spot availability trace played back in scaled wall time.

    Args:
        trace: The availability trace (1 = a spot launch would succeed).
        seconds_per_trace_hour: Wall seconds per trace hour (0.1 = an hour in 0.1 s).
        clock: Wall clock (``time.monotonic``; tests may pass their own).
    """

    def __init__(
        self,
        trace: SpotTrace,
        seconds_per_trace_hour: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seconds_per_trace_hour <= 0:
            raise ValueError("seconds_per_trace_hour must be > 0")
        self.trace = trace
        self.scale = seconds_per_trace_hour / 3600.0  # wall seconds per trace second
        self.clock = clock
        self.started = clock()

    def restart(self) -> None:
        """Trace time 0 = now."""
        self.started = self.clock()

    def now(self) -> float:
        """Current trace time (seconds since the trace's first tick)."""
        return (self.clock() - self.started) / self.scale

    def covers(self, offer: Offer) -> bool:
        """Whether the trace decides this offer's spot capacity."""
        return (
            offer.option is PurchaseOption.SPOT
            and offer.instance_type == self.trace.instance_type
            and offer.region in self.trace.regions
        )

    def launch(self, region: str, at: float | None = None) -> tuple[str, float] | None:
        """(zone, trace time its up-run ends) for a launch now, or None if all are down."""
        at = self.now() if at is None else at
        for zone in self.trace.regions[region]:
            end = self.trace.lanes[zone].up_at(at)
            if end is not None:
                return zone, end
        return None

    def wall_delay(self, trace_time: float) -> float:
        """Wall seconds from now until ``trace_time``."""
        return max(0.0, (trace_time - self.now()) * self.scale)


class MockClouds:
    """Start moto (``ThreadedMotoServer``) and the fake GCE server; hand out provisioners.

    Args:
        owner_id: Owner tag/label of every instance the provisioners start.
        interrupt_first_spot: Interrupt the first N spot instances (either cloud) right
            after they start, so a demo shows interruption → retry → fallback.
        interrupt_after: Seconds between a spot instance starting and its interruption
            (0 = before the task body runs, so the interruption is always seen).
        project: GCP project name used on the fake.
        heartbeat_seconds: Heartbeat interval of both provisioners.
        warm_seconds: Warm pool of both provisioners (0 = terminate on release).
        ledger_url: Ledger for instance rows (``None`` = the default ledger).
        record_instances: Write instance rows at all.
        spot_trace: An availability trace (path or loaded) to replay; see the module doc.
        seconds_per_trace_hour: Its time scale.

    Attributes:
        provisioners: ``{"aws": ..., "gcp": ...}`` for ``CloudSchedTaskRunner``.
        aws_url / gcp_url: The endpoints (give them to other processes).
        moto: The :class:`~prefect_cloudsched.testing.aws.MotoControl` (faults, prices).
        gcp: The :class:`~prefect_cloudsched.testing.gcp_server.FakeGcpCompute`.
        interrupted: Instance ids interrupted so far (by any helper).
    """

    def __init__(
        self,
        owner_id: str = "cloudsched-demo",
        *,
        interrupt_first_spot: int = 0,
        interrupt_after: float = 0.0,
        project: str = "cloudsched-demo",
        heartbeat_seconds: float = 5.0,
        warm_seconds: float = 0.0,
        ledger_url: str | None = None,
        record_instances: bool = True,
        spot_trace: SpotTrace | str | Path | None = None,
        seconds_per_trace_hour: float = 0.1,
    ) -> None:
        if interrupt_first_spot < 0 or interrupt_after < 0:
            raise ValueError("interrupt_first_spot and interrupt_after must be >= 0")
        self.owner_id = owner_id
        self.project = project
        self.interrupt_after = interrupt_after
        self._options = dict(
            heartbeat_seconds=heartbeat_seconds,
            warm_seconds=warm_seconds,
            ledger_url=ledger_url,
            record_instances=record_instances,
        )
        self._armed: dict[str | None, int] = {None: interrupt_first_spot}
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None
        self._saved_env: dict[str, str | None] = {}
        self.interrupted: list[str] = []
        #: (trace time, region, zone or None when refused) of every traced spot launch.
        self.trace_launches: list[tuple[float, str, str | None]] = []
        if isinstance(spot_trace, str | Path):
            spot_trace = load_spot_trace(spot_trace)
        self.trace_clock = (
            TraceClock(spot_trace, seconds_per_trace_hour) if spot_trace is not None else None
        )
        self.provisioners: dict[str, Any] = {}
        self.aws_url = self.gcp_url = ""
        self.moto = MotoControl()
        self.gcp: Any = None
        self.aws_settings: AwsSettings | None = None
        self.gcp_settings: GcpSettings | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> MockClouds:
        from prefect_cloudsched.testing.gcp_server import FakeGcpCompute

        self._saved_env = {key: os.environ.get(key) for key in _DUMMY_ENV}
        _set_env(_DUMMY_ENV)
        stack = ExitStack()
        stack.callback(_set_env, self._saved_env)
        try:
            self.aws_url = stack.enter_context(moto_server())
            stack.enter_context(self.moto)
            self.gcp = stack.enter_context(FakeGcpCompute())
            self.gcp_url = self.gcp.url
            self._build()
            if self.trace_clock is not None:
                self.trace_clock.restart()
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *_: Any) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def _build(self) -> None:
        catalog = load_catalog()
        aws_regions = tuple(sorted({o.region for o in catalog.offers if o.cloud == "aws"}))
        gcp_zones = tuple(sorted({o.zone for o in catalog.offers if o.cloud == "gcp" and o.zone}))
        common = dict(owner_id=self.owner_id, poll_seconds=0.02, backoff=_FAST, **self._options)
        self._publish_images(aws_regions)
        self.aws_settings = AwsSettings(
            regions=aws_regions,  # images: moto's SSM, as on a real account (see below)
            endpoint_url=self.aws_url,
            **DUMMY_KEYS,
            **common,  # type: ignore[arg-type]
        )
        self.gcp_settings = GcpSettings(
            project=self.project,
            zones=gcp_zones,
            endpoint=self.gcp_url,
            **common,  # type: ignore[arg-type]
        )
        for offer in catalog.offers:  # live spot prices = the snapshot, not moto's 0.00001
            if offer.cloud == "aws" and offer.option is PurchaseOption.SPOT:
                self.moto.spot_prices[(offer.instance_type, f"{offer.region}a")] = (
                    offer.usd_per_hour
                )
        self.provisioners = self.provisioners_for(self.owner_id)

    def _publish_images(self, aws_regions: tuple[str, ...]) -> None:
        """Make the default images resolvable, as they are on a real account.

        moto's SSM already serves the public Amazon Linux parameters; the Deep Learning AMI
        parameter is published by :func:`publish_aws_gpu_image`. The fake GCE learns the
        Deep Learning VM image family.
        """
        from prefect_cloudsched.adapters.provision.images import GCP_GPU_IMAGE

        for region in aws_regions:
            for arch in ("x86_64", "arm64"):
                publish_aws_gpu_image(region, MOCK_AMI, arch=arch)
        self.gcp.state.add_image(GCP_GPU_IMAGE)

    def provisioners_for(self, owner_id: str, **changes: Any) -> dict[str, Any]:
        """A fresh pair of provisioners for another owner id (same mocks, same faults).

        ``changes`` override settings fields of both (e.g. ``heartbeat_seconds=0.5``).
        """
        if self.aws_settings is None or self.gcp_settings is None:
            raise RuntimeError("MockClouds is not running; use it as a context manager")
        aws = replace(self.aws_settings, owner_id=owner_id, **changes)
        gcp = replace(self.gcp_settings, owner_id=owner_id, **changes)
        return {
            "aws": _Interrupting(AwsProvisioner(aws), self),
            "gcp": _Interrupting(GcpProvisioner(gcp), self),
        }

    # ------------------------------------------------------------------ faults
    def interrupt_next_spot(self, cloud: str | None = None, count: int = 1) -> None:
        """Interrupt the next ``count`` spot instances started (on ``cloud``, or either)."""
        with self._lock:
            self._armed[cloud] = self._armed.get(cloud, 0) + count

    def disarm(self) -> None:
        """Forget every armed interruption (``interrupt_first_spot`` included)."""
        with self._lock:
            self._armed.clear()

    def _take_arm(self, cloud: str) -> bool:
        with self._lock:
            for key in (cloud, None):
                if self._armed.get(key, 0) > 0:
                    self._armed[key] -= 1
                    return True
        return False

    def interrupt(self, instance_id: str) -> None:
        """Reclaim one spot instance now, as its cloud would (AWS id ``i-...`` or GCP name)."""
        if instance_id.startswith("i-"):
            self.moto.interrupt(instance_id)
        else:
            zone = next(
                vm["zone"].rsplit("/", 1)[-1]
                for vm in self.gcp.state.instances(self.project)
                if vm["name"] == instance_id
            )
            self.gcp.state.preempt(self.project, zone, instance_id)
        with self._lock:
            self.interrupted.append(instance_id)

    def zone_went_down(self, instance_id: str) -> None:
        """The trace's zone went down: interrupt the instance unless it already ended."""
        region = self.moto.launched.get(instance_id)
        if region is not None:
            state = self.moto.backend(region).get_instance(instance_id).state
            if state in ("terminated", "shutting-down", "stopped", "stopping"):
                return
        self.interrupt(instance_id)

    def stockout(self, offer: Offer, count: int = 1) -> None:
        """The next ``count`` launches of ``offer``'s instance type there fail for capacity."""
        if offer.cloud == "aws":
            self.moto.inject(
                "InsufficientInstanceCapacity",
                instance_type=offer.instance_type,
                region=offer.region,
                count=count,
                message=f"We currently do not have sufficient {offer.instance_type} capacity "
                f"in the Availability Zone you requested ({offer.region}a).",
            )
        else:
            self.gcp.state.stockout_next(
                count=count, zone=offer.zone, machine_type=offer.instance_type
            )

    def throttle(self, cloud: str, count: int = 1, *, after: bool = False) -> None:
        """The next ``count`` launches on ``cloud`` are throttled (429 / RequestLimitExceeded).

        ``after=True`` (AWS only) starts the instance but loses the response, to prove
        that a retry does not start a second one.
        """
        if cloud == "aws":
            self.moto.inject("RequestLimitExceeded", count=count, after=after)
        else:
            self.gcp.state.fail_next(429, "rateLimitExceeded", count=count, method="insert")

    # ------------------------------------------------------------------ inspection
    def running_instances(self, owner_id: str | None = None) -> list[dict[str, Any]]:
        """Every not-terminated instance on both clouds — ours and foreign.

        Args:
            owner_id: Only those carrying this owner tag/label.

        Returns:
            Dicts with ``cloud, instance_id, location, instance_type, state, owner, run, spot``.
        """
        found: list[dict[str, Any]] = []
        for instance_id, region in sorted(self.moto.launched.items()):
            model = self.moto.backend(region).get_instance(instance_id)
            if model.state in ("terminated", "shutting-down"):
                continue
            tags = {t["key"]: t["value"] for t in model.get_tags()}
            found.append(
                dict(
                    cloud="aws",
                    instance_id=instance_id,
                    location=region,
                    instance_type=model.instance_type,
                    state=model.state,
                    owner=tags.get(OWNER_TAG),
                    run=tags.get(RUN_TAG),
                    spot=model.lifecycle == "spot",
                )
            )
        for vm in self.gcp.state.instances(self.project):
            labels = vm.get("labels", {})
            found.append(
                dict(
                    cloud="gcp",
                    instance_id=vm["name"],
                    location=vm["zone"].rsplit("/", 1)[-1],
                    instance_type=vm["machineType"].rsplit("/", 1)[-1],
                    state=vm["status"],
                    owner=labels.get(OWNER_TAG),
                    run=labels.get(RUN_TAG),
                    spot=vm.get("scheduling", {}).get("provisioningModel") == "SPOT",
                )
            )
        return [i for i in found if owner_id is None or i["owner"] == owner_id]

    def plant_foreign_instance(
        self,
        cloud: str = "aws",
        *,
        owner_id: str | None = None,
        run_id: str | None = None,
        location: str | None = None,
    ) -> str:
        """Start an instance we did not start (another owner's tag, or none); return its id.

        The reaper and ``release_run`` must never touch it — tests prove that with this.
        """
        tags = {k: v for k, v in ((OWNER_TAG, owner_id), (RUN_TAG, run_id)) if v}
        if cloud == "aws":
            import boto3

            region = location or "us-east-1"
            ec2 = boto3.client("ec2", region_name=region, endpoint_url=self.aws_url, **DUMMY_KEYS)
            request: dict[str, Any] = dict(
                ImageId=MOCK_AMI, MinCount=1, MaxCount=1, InstanceType="m5.large"
            )
            if tags:
                request["TagSpecifications"] = [
                    {
                        "ResourceType": "instance",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                    }
                ]
            instance_id = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
            self.moto.launched[instance_id] = region
            return instance_id
        zone = location or "us-central1-a"
        name = f"foreign-{len(self.gcp.state.instances(self.project)) + 1}"
        self.gcp.insert_foreign_instance(self.project, zone, name, tags)
        return name


def publish_aws_gpu_image(region: str, ami: str, *, arch: str = "x86_64") -> None:
    """Put the Deep Learning AMI's public SSM parameter into moto, as AWS publishes it.

    It cannot be created through the API (``/aws/`` names are reserved), so it goes into
    moto's store directly; works for ``mock_aws()`` and the in-process moto server alike.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    from prefect_cloudsched.adapters.provision.images import AWS_GPU_PARAMETER

    name = AWS_GPU_PARAMETER.format(arch=arch)
    store = ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters
    store.pop(name, None)
    store[name].append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=name,
            value=ami,
            parameter_type="String",
            description=None,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=time.time(),
            version=1,
            data_type="aws:ec2:image",
        )
    )


class _Interrupting:
    """A provisioner that lets ``MockClouds`` reclaim armed spot instances after launch."""

    def __init__(self, inner: AwsProvisioner | GcpProvisioner, clouds: MockClouds) -> None:
        self.inner = inner
        self.cloud = inner.cloud
        self._clouds = clouds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"MockClouds({self.inner!r})"

    @property
    def spot_trace_clock(self) -> TraceClock | None:
        """The trace being replayed: the spot controller reads its clock and availability
        (``runtime/spot_live.py``), as a runner would probe a real market."""
        return self._clouds.trace_clock

    def ensure(
        self, offer: Offer, *, run_id: str, task_name: str, startup_script: str | None = None
    ) -> InstanceHandle:
        """The real ``ensure``, then an interruption if one is armed (or the trace says so)."""
        trace = self._clouds.trace_clock
        landed = None
        if trace is not None and trace.covers(offer):
            landed = trace.launch(offer.region)
            with self._clouds._lock:
                self._clouds.trace_launches.append(
                    (trace.now(), offer.region, landed[0] if landed else None)
                )
            if landed is None:  # the cloud refuses it, with its own error
                self._clouds.stockout(offer)
        handle = self.inner.ensure(
            offer, run_id=run_id, task_name=task_name, startup_script=startup_script
        )
        if landed is not None and trace is not None:
            timer = threading.Timer(
                trace.wall_delay(landed[1]), self._clouds.zone_went_down, (handle.instance_id,)
            )
            timer.daemon = True
            timer.start()
            return handle
        if offer.option is PurchaseOption.SPOT and self._clouds._take_arm(self.cloud):
            delay = self._clouds.interrupt_after
            if delay <= 0:
                self._clouds.interrupt(handle.instance_id)
            else:
                timer = threading.Timer(delay, self._clouds.interrupt, (handle.instance_id,))
                timer.daemon = True
                timer.start()
        return handle

    def check(self, handle: InstanceHandle) -> None:
        """See ``Provisioner.check``."""
        self.inner.check(handle)

    def release(self, handle: InstanceHandle) -> None:
        """See ``Provisioner.release``."""
        self.inner.release(handle)

    def release_run(self, run_id: str) -> int:
        """See ``Provisioner.release_run``."""
        return self.inner.release_run(run_id)
