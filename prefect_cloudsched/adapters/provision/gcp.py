"""GCP provisioner: Compute Engine VMs (standard and Spot) through ``google-cloud-compute``.

Every client is built from one configurable endpoint (the fake GCE server in tests and the
demo), and operations are polled with our own ``ZoneOperationsClient.wait`` — never
``op.result()``, whose polling client ignores the endpoint. VM names and ``request_id`` are
derived from (owner, run, task, offer, sequence), so a retried insert never makes a second
VM. ``google.cloud.compute_v1`` costs ~0.9 s to import: it is imported on first use.

Example:
    ```python
    from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner, GcpSettings

    gcp = GcpProvisioner(GcpSettings(project="my-proj", zones=("us-central1-a",)))
    runner = CloudSchedTaskRunner(provisioners={"gcp": gcp})
    ```
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from prefect_cloudsched.adapters.provision.base import (
    HEARTBEAT_TAG,
    OWNER_TAG,
    RUN_TAG,
    TASK_TAG,
    InstanceHandle,
)
from prefect_cloudsched.adapters.provision.common import CloudProvisioner, LaunchRequest, Phase
from prefect_cloudsched.adapters.provision.images import gcp_image
from prefect_cloudsched.adapters.provision.lifecycle import (
    OwnedInstance,
    label_value,
    launch_tags,
)
from prefect_cloudsched.adapters.provision.settings import GcpSettings, secret_value
from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.errors import CapacityError, ProvisioningError

__all__ = ("GPU_ACCELERATORS", "GcpProvisioner", "GcpSettings")

#: Catalog GPU name -> GCE accelerator type, for N1 VMs (A2, A3 and G2 have GPUs built in).
GPU_ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
}
#: Operation error codes meaning "not now, try another offer".
CAPACITY_CODES = frozenset(
    {
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "RESOURCE_POOL_EXHAUSTED",
        "QUOTA_EXCEEDED",
        "rateLimitExceeded",
    }
)
_GONE = frozenset({"STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED"})
_PREEMPTED = "compute.instances.preempted"
_ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


#: Tries of a label change whose fingerprint another writer made stale meanwhile.
LABEL_ATTEMPTS = 4


def _retryable(err: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(err, gexc.TooManyRequests | gexc.ServiceUnavailable)


def _reason(err: Any) -> str:
    for item in getattr(err, "errors", None) or []:
        if isinstance(item, Mapping) and item.get("reason"):
            return str(item["reason"])
    return ""


def _is_loopback(endpoint: str | None) -> bool:
    return bool(endpoint) and bool(
        re.match(r"^(https?://)?(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?/?$", endpoint or "")
    )


class GcpProvisioner(CloudProvisioner):
    """Starts, checks, releases and finds our Compute Engine VMs (see ``Provisioner``).

    ``InstanceHandle.instance_id`` is the VM *name* (unique per zone and deterministic).
    """

    cloud = "gcp"
    settings: GcpSettings

    def __init__(self, settings: GcpSettings) -> None:
        if settings.spot_termination_action not in ("DELETE", "STOP"):
            raise ProvisioningError(
                "GcpSettings.spot_termination_action must be DELETE or STOP, got "
                f"{settings.spot_termination_action!r}"
            )
        for zone in settings.zones:
            if not _ZONE.match(zone):
                raise ProvisioningError(
                    f"GcpSettings.zones: {zone!r} is not a zone name; use e.g. us-central1-a"
                )
        self.settings = settings
        self._instances: Any = None
        self._operations: Any = None
        self._init_lifecycle()

    def __repr__(self) -> str:
        s = self.settings
        return f"GcpProvisioner(project={s.project!r}, owner_id={s.owner_id!r}, zones={s.zones})"

    # ------------------------------------------------------------------ clients
    def _credentials(self) -> Any:
        info = secret_value(self.settings.service_account_info)
        scopes = ["https://www.googleapis.com/auth/compute"]
        if info:
            from google.oauth2 import service_account

            try:
                parsed = json.loads(info) if isinstance(info, str) else dict(info)
                return service_account.Credentials.from_service_account_info(parsed, scopes=scopes)
            except (ValueError, TypeError, KeyError):
                raise ProvisioningError(
                    "GcpSettings.service_account_info: not a service-account key JSON; paste "
                    "the key file's content (or leave it empty for Application Default "
                    "Credentials)"
                ) from None
        if _is_loopback(self.settings.endpoint):
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            credentials, _ = google.auth.default(scopes=scopes)
        except DefaultCredentialsError:
            raise ProvisioningError(
                "GcpSettings.service_account_info: no GCP credentials found; set it, or run "
                "`gcloud auth application-default login` / GOOGLE_APPLICATION_CREDENTIALS"
            ) from None
        return credentials

    def _clients(self) -> tuple[Any, Any]:
        """(InstancesClient, ZoneOperationsClient), both on the configured endpoint."""
        with self._lock:
            if self._instances is None:
                from google.cloud import compute_v1

                kwargs: dict[str, Any] = dict(credentials=self._credentials(), transport="rest")
                if self.settings.endpoint:
                    kwargs["client_options"] = {"api_endpoint": self.settings.endpoint}
                self._instances = compute_v1.InstancesClient(**kwargs)
                self._operations = compute_v1.ZoneOperationsClient(**kwargs)
            return self._instances, self._operations

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        return self.settings.backoff.call(lambda: fn(**kwargs), _retryable)

    # ------------------------------------------------------------------ lifecycle hooks
    def _launch_once(self, request: LaunchRequest) -> InstanceHandle | None:
        from google.api_core import exceptions as gexc

        offer, task_name, digest = request.offer, request.task_name, request.digest
        slug = _NAME_BAD.sub("-", task_name.lower()).strip("-")[:40] or "task"
        name = f"cs-{slug}-{digest[:10]}"
        handle = InstanceHandle(
            cloud="gcp",
            instance_id=name,
            offer_key=offer.key,
            region=offer.region,
            zone=request.location,
            option=offer.option.value,
            run_id=request.run_id,
        )
        body = self._instance_body(request, name)
        # Conflict: our own earlier insert of this request, or an earlier process's VM.
        with contextlib.suppress(gexc.Conflict):
            self._insert(handle, body, request_id=str(uuid.UUID(digest[:32])))
        # Adopt only a live VM of this run: GCE may answer the request id with an earlier
        # process's insert whose VM is gone, or the name may be held by another run's VM.
        return handle if self._adoptable(handle) else None

    def _image(self, offer: Offer) -> str:
        return gcp_image(offer, cpu_image=self.settings.image, gpu_image=self.settings.gpu_image)

    def _admit(self, offer: Offer) -> str:
        if offer.cloud != "gcp":
            raise ProvisioningError(f"GcpProvisioner got a {offer.cloud} offer {offer.key}")
        zone = offer.zone
        if zone is None:
            zone = next((z for z in self.settings.zones if z.startswith(offer.region + "-")), None)
        if zone is None or zone not in self.settings.zones:
            raise CapacityError(
                offer.key,
                "ZoneNotInPool",
                f"{offer.location} is not in GcpSettings.zones {list(self.settings.zones)}",
            )
        family = offer.instance_type.split("-")[0]
        if family == "n1" and offer.gpu_type and offer.gpu_type not in GPU_ACCELERATORS:
            raise CapacityError(
                offer.key, "UnknownAccelerator", f"no GCE accelerator for {offer.gpu_type}"
            )
        return zone

    def _labels(self, run_id: str, task_name: str, option: str) -> dict[str, str]:
        extra = {_label_key(k): label_value(str(v)) for k, v in self.settings.extra_labels.items()}
        ours = launch_tags(self.settings.owner_id, run_id, task_name, option)
        return {**extra, **{key: label_value(value) for key, value in ours.items()}}

    def _instance_body(self, request: LaunchRequest, name: str) -> Any:
        from google.cloud import compute_v1

        settings, offer, zone = self.settings, request.offer, request.location
        startup_script = request.startup_script
        labels = self._labels(request.run_id, request.task_name, offer.option.value)
        spot = offer.option is PurchaseOption.SPOT
        gpu = bool(offer.gpu_count)
        scheduling = compute_v1.Scheduling(
            on_host_maintenance="TERMINATE" if spot or gpu else "MIGRATE",
            automatic_restart=not spot,
        )
        if spot:
            scheduling.provisioning_model = "SPOT"
            scheduling.instance_termination_action = settings.spot_termination_action
        interface = compute_v1.NetworkInterface(
            network=settings.network or "global/networks/default"
        )
        if settings.external_ip:
            interface.access_configs = [
                compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")
            ]
        body = compute_v1.Instance(
            name=name,
            machine_type=f"zones/{zone}/machineTypes/{offer.instance_type}",
            labels=labels,
            scheduling=scheduling,
            network_interfaces=[interface],
            disks=[
                compute_v1.AttachedDisk(
                    boot=True,
                    auto_delete=True,
                    initialize_params=compute_v1.AttachedDiskInitializeParams(
                        source_image=request.image,
                        disk_size_gb=settings.disk_size_gb,
                        labels=labels,
                    ),
                )
            ],
        )
        items = []
        if startup_script:
            items.append(compute_v1.Items(key="startup-script", value=startup_script))
        if gpu and settings.install_gpu_driver:
            items.append(compute_v1.Items(key="install-nvidia-driver", value="True"))
        if items:
            body.metadata = compute_v1.Metadata(items=items)
        if offer.instance_type.startswith("n1-") and offer.gpu_type:
            body.guest_accelerators = [
                compute_v1.AcceleratorConfig(
                    accelerator_type=f"zones/{zone}/acceleratorTypes/"
                    f"{GPU_ACCELERATORS[offer.gpu_type]}",
                    accelerator_count=offer.gpu_count,
                )
            ]
        if offer.option is PurchaseOption.RESERVED:
            body.reservation_affinity = compute_v1.ReservationAffinity(
                consume_reservation_type="ANY_RESERVATION"
            )
        if settings.service_account_email:
            body.service_accounts = [
                compute_v1.ServiceAccount(
                    email=settings.service_account_email,
                    scopes=["https://www.googleapis.com/auth/cloud-platform"],
                )
            ]
        return body

    def _insert(self, handle: InstanceHandle, body: Any, *, request_id: str) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        instances, _ = self._clients()
        request = compute_v1.InsertInstanceRequest(
            project=self.settings.project,
            zone=handle.zone,
            instance_resource=body,
            request_id=request_id,
        )
        try:
            operation = self._call(instances.insert_unary, request=request)
        except gexc.Conflict:
            raise
        except gexc.GoogleAPICallError as err:
            raise self._insert_error(handle, err.code, _reason(err), err.message) from None
        operation = self._wait_operation(handle, operation)
        if operation.error and operation.error.errors:
            first = operation.error.errors[0]
            raise self._insert_error(
                handle, operation.http_error_status_code, first.code, first.message
            )

    def _insert_error(
        self, handle: InstanceHandle, status: int | None, code: str, message: str
    ) -> Exception:
        """Map a GCE refusal to CapacityError (try another offer) or ProvisioningError."""
        key, text = handle.offer_key, f"{code}: {message}" if code else message
        lowered = message.lower()
        if code in CAPACITY_CODES or status in (429, 503) or "quota" in lowered:
            return CapacityError(key, code or str(status), message)
        if status in (401, 403):
            return ProvisioningError(
                f"GcpSettings.service_account_info / project {self.settings.project!r}: GCE "
                f"refused permission ({text}); grant the roles in docs/provisioning.md"
            )
        image_setting = "GcpSettings.image"
        if self.settings.gpu_image.rsplit("/", 1)[-1] in message:
            image_setting = "GcpSettings.gpu_image"
        for needle, setting in (
            ("image", image_setting),
            ("network", "GcpSettings.network"),
            ("zone", "GcpSettings.zones"),
            ("project", "GcpSettings.project"),
            ("labels", "GcpSettings.extra_labels"),
        ):
            if needle in lowered:
                return ProvisioningError(f"{setting}: GCE refused the VM for {key}: {text}")
        if "machinetype" in lowered or "acceleratortype" in lowered:
            return CapacityError(key, code or "UnavailableHere", message)
        return ProvisioningError(f"GCE refused to start {key}: {text}")

    def _wait_operation(self, handle: InstanceHandle, operation: Any) -> Any:
        """Poll a zone operation with our own client until DONE (bounded)."""
        from google.cloud import compute_v1

        _, operations = self._clients()
        deadline = time.monotonic() + self.settings.launch_timeout_seconds
        while operation.status != compute_v1.Operation.Status.DONE:
            if time.monotonic() >= deadline:
                raise CapacityError(
                    handle.offer_key, "OperationTimeout", f"{operation.name} did not finish"
                )
            operation = self._call(
                operations.wait,
                project=self.settings.project,
                zone=handle.zone,
                operation=operation.name,
            )
            if operation.status != compute_v1.Operation.Status.DONE:
                time.sleep(self.settings.poll_seconds)
        return operation

    def _get(self, handle: InstanceHandle) -> Any | None:
        from google.api_core import exceptions as gexc

        instances, _ = self._clients()
        try:
            return self._call(
                instances.get,
                project=self.settings.project,
                zone=handle.zone,
                instance=handle.instance_id,
            )
        except gexc.NotFound:
            return None

    def _adoptable(self, handle: InstanceHandle) -> bool:
        vm = self._get(handle)
        return (
            vm is not None
            and vm.labels.get(OWNER_TAG) == label_value(self.settings.owner_id)
            and vm.labels.get(RUN_TAG) == label_value(handle.run_id)
            and vm.status in ("PROVISIONING", "STAGING", "RUNNING")
        )

    def _state(self, handle: InstanceHandle) -> tuple[Phase, str]:
        vm = self._get(handle)
        status = vm.status if vm is not None else "DELETED"
        if status == "RUNNING":
            return "running", status
        return ("gone" if status in _GONE or status == "DELETED" else "pending"), status

    def _relabel(self, handle: InstanceHandle, run_id: str, task_name: str) -> None:
        vm = self._get(handle)
        if vm is not None:
            changes = {TASK_TAG: label_value(task_name), RUN_TAG: label_value(run_id)}
            self._set_labels(handle, vm, changes)

    # ------------------------------------------------------------------ check / release
    def _lost(self, handle: InstanceHandle) -> tuple[bool, str] | None:
        vm = self._get(handle)
        status = vm.status if vm is not None else "DELETED"
        preempted = self._preempted(handle)
        if status not in _GONE and status != "DELETED" and not preempted:
            return None
        if status != "DELETED":
            self._end_quietly(handle)  # a stopped VM still bills its disk
        if handle.option == PurchaseOption.SPOT.value or preempted:
            return True, (
                f"spot VM {handle.instance_id} ({handle.offer_key}) was preempted by GCE "
                f"(status {status})"
            )
        return False, f"VM {handle.instance_id} ({handle.offer_key}) ended without us ({status})"

    def _preempted(self, handle: InstanceHandle) -> bool:
        if handle.option != PurchaseOption.SPOT.value:
            return False
        from google.cloud import compute_v1

        _, operations = self._clients()
        request = compute_v1.ListZoneOperationsRequest(
            project=self.settings.project,
            zone=handle.zone,
            filter=f'operationType = "{_PREEMPTED}"',
        )
        suffix = f"/instances/{handle.instance_id}"
        found = self._call(lambda: list(operations.list(request=request)))
        return any(op.target_link.endswith(suffix) for op in found)

    def _end(self, handle: InstanceHandle) -> None:
        self._delete(handle.zone or "", handle.instance_id, handle.offer_key)

    def _delete(self, zone: str, name: str, offer_key: str = "") -> None:
        from google.api_core import exceptions as gexc

        instances, _ = self._clients()
        try:
            operation = self._call(
                instances.delete_unary, project=self.settings.project, zone=zone, instance=name
            )
        except gexc.NotFound:
            return
        probe = InstanceHandle("gcp", name, offer_key, zone.rsplit("-", 1)[0], zone, "", "")
        self._wait_operation(probe, operation)

    def release_run(self, run_id: str) -> int:
        """Delete every VM of ours labelled with ``run_id``; return how many.

        Warm VMs kept for other runs (``warm_across_runs``) are spared.
        """
        kept = self.kept_for_other_runs(run_id)
        found = self._owned(f'labels.{RUN_TAG} = "{label_value(run_id)}"')
        found = [vm for vm in found if vm.instance_id not in kept]
        for vm in found:
            self._delete(vm.zone or "", vm.instance_id)
        for handle in [*self.book.live(run_id), *self.book.parked(run_id)]:
            if handle.instance_id not in kept:
                self.book.stopped(handle)
        return len(found)

    # ------------------------------------------------------------------ discovery
    def list_owned(self) -> list[OwnedInstance]:
        """Every VM in the project carrying our owner label (any zone)."""
        return self._owned()

    def _owned(self, extra_filter: str | None = None) -> list[OwnedInstance]:
        from google.cloud import compute_v1

        instances, _ = self._clients()
        owner = label_value(self.settings.owner_id)
        text = f'labels.{OWNER_TAG} = "{owner}"'
        if extra_filter:
            text = f"{text} AND {extra_filter}"
        request = compute_v1.AggregatedListInstancesRequest(
            project=self.settings.project, filter=text, max_results=500
        )
        found = []
        pages = self._call(lambda: list(instances.aggregated_list(request=request)))
        for _, scoped in pages:
            for vm in scoped.instances:
                if vm.labels.get(OWNER_TAG) == owner:
                    found.append(self._owned_view(vm))
        return found

    def _owned_view(self, vm: Any) -> OwnedInstance:
        zone = vm.zone.rsplit("/", 1)[-1]
        labels = dict(vm.labels)
        try:
            launched = datetime.fromisoformat(vm.creation_timestamp)
        except ValueError:
            launched = None
        return OwnedInstance.from_tags(
            labels,
            cloud="gcp",
            instance_id=vm.name,
            region=zone.rsplit("-", 1)[0],
            zone=zone,
            instance_type=vm.machine_type.rsplit("/", 1)[-1],
            state=vm.status,
            spot=vm.scheduling.provisioning_model == "SPOT" or vm.scheduling.preemptible,
            launched_at=launched,
        )

    def terminate_owned(self, instance: OwnedInstance) -> bool:
        """Delete one VM the reaper chose, after re-reading its owner label.

        Returns:
            ``False`` (and nothing done) unless the VM still carries our owner label.
        """
        handle = instance.handle()
        vm = self._get(handle)
        if vm is None or vm.labels.get(OWNER_TAG) != label_value(self.settings.owner_id):
            return False
        self._delete(instance.zone or "", instance.instance_id)
        self.book.stopped(handle, state="reaped")
        return True

    def _set_labels(self, handle: InstanceHandle, vm: Any, changes: Mapping[str, str]) -> None:
        """Merge ``changes`` into the VM's labels.

        GCE takes labels with the fingerprint they were read at; when another writer (our
        heartbeat thread, a reuse of the warm VM) changed them in between it answers 412, and
        the labels are read again and the merge retried.
        """
        from google.api_core import exceptions as gexc
        from google.cloud import compute_v1

        instances, _ = self._clients()
        for attempt in range(LABEL_ATTEMPTS):
            try:
                self._call(
                    instances.set_labels_unary,
                    project=self.settings.project,
                    zone=handle.zone,
                    instance=handle.instance_id,
                    instances_set_labels_request_resource=compute_v1.InstancesSetLabelsRequest(
                        labels={**dict(vm.labels), **changes},
                        label_fingerprint=vm.label_fingerprint,
                    ),
                )
                return
            except gexc.PreconditionFailed:
                fresh = self._get(handle)
                if fresh is None or attempt == LABEL_ATTEMPTS - 1:
                    raise
                vm = fresh

    def _refresh_heartbeats(self, handles: list[InstanceHandle]) -> None:
        from google.api_core import exceptions as gexc

        stamp = {HEARTBEAT_TAG: str(int(time.time()))}
        for handle in handles:
            vm = self._get(handle)
            try:
                if vm is not None:
                    self._set_labels(handle, vm, stamp)
            except (gexc.NotFound, gexc.PreconditionFailed):
                continue  # deleted or relabelled meanwhile: the next beat sees it fresh


def _label_key(key: str) -> str:
    value = label_value(key)
    return value if value[:1].isalpha() else f"x{value}"[:63]
