"""State and behaviour of the fake Compute Engine API, kept apart from the HTTP plumbing.

Every public method of :class:`GcpState` takes the lock, so tests, the HTTP handler threads
and the ``/_fake`` hooks can all use it at once. Resources are stored as the JSON dicts the
real API returns, so the HTTP layer only serialises them.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefect_cloudsched.testing._gcp_api import (
    DEFAULT_IMAGES,
    LINK_BASE,
    MACHINE_TYPES,
    NAME_RE,
    GceError,
    Json,
    check_labels,
    fingerprint,
    image_key,
    invalid_field,
    is_spot,
    list_body,
    machine_type_json,
    new_id,
    not_found,
    now,
    op_error,
    page,
    quota_name,
    short_name,
)


@dataclass
class Operation:
    """A zone operation; ``on_done`` applies its effect when it first reports DONE."""

    body: Json
    polls_left: int
    on_done: Callable[[], None] | None = None
    failure: Json = field(default_factory=dict)

    def finish(self) -> None:
        self.polls_left = 0
        self.body.update(status="DONE", progress=100, endTime=now(), **self.failure)
        if self.on_done:
            self.on_done()
            self.on_done = None


@dataclass
class FailRule:
    """An injected HTTP error for the next ``count`` calls of ``method`` (or any method)."""

    error: GceError
    count: int
    method: str | None

    def matches(self, method_id: str) -> bool:
        m = self.method
        return m is None or m == method_id or method_id.endswith(f".{m}")


@dataclass
class InsertRule:
    """An injected failure (stockout or quota) for the next matching instance inserts."""

    kind: str
    count: int
    zone: str | None = None
    machine_type: str | None = None
    quota: str | None = None
    limit: float = 0.0
    region: str | None = None

    def matches(self, zone: str, machine_type: str) -> bool:
        return self.zone in (None, zone) and self.machine_type in (None, machine_type)


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the fake received (``/_fake`` hooks are not recorded)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


class GcpState:
    """Instances, operations and injected faults of one fake GCE; all methods thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    # --- hooks --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every instance, operation, injected fault, extra image and request."""
        with self.lock:
            #: Polls (operation get/wait) an operation reports RUNNING before DONE.
            self.op_polls_before_done = 0
            self._instances: dict[tuple[str, str, str], Json] = {}
            self._ops: dict[tuple[str, str, str], Operation] = {}
            self._request_ids: dict[str, Operation] = {}
            self._fail_rules: list[FailRule] = []
            self._insert_rules: list[InsertRule] = []
            self._images = set(DEFAULT_IMAGES)
            self._requests: list[RecordedRequest] = []
            self._nics = 0

    def fail_next(
        self,
        status: int,
        reason: str | None = None,
        message: str | None = None,
        count: int = 1,
        method: str | None = None,
    ) -> None:
        """Make the next ``count`` API calls (of ``method``, e.g. ``instances.insert`` or
        just ``insert``; any if None) answer HTTP ``status`` with GCE's error JSON."""
        if not 400 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP error code, not {status!r}")
        error = GceError(int(status), message or f"Injected error {status}", reason)
        with self.lock:
            self._fail_rules.append(FailRule(error, int(count), method))

    def stockout_next(
        self, count: int = 1, zone: str | None = None, machine_type: str | None = None
    ) -> None:
        """Make the next matching inserts end in a ZONE_RESOURCE_POOL_EXHAUSTED operation."""
        with self.lock:
            self._insert_rules.append(InsertRule("stockout", int(count), zone, machine_type))

    def quota_next(
        self,
        count: int = 1,
        quota: str | None = None,
        limit: float = 0.0,
        region: str | None = None,
        zone: str | None = None,
        machine_type: str | None = None,
    ) -> None:
        """Make the next matching inserts end in a QUOTA_EXCEEDED operation.

        ``quota`` defaults to what GCE would name: the GPU quota of the machine
        (``PREEMPTIBLE_`` prefixed for spot) or ``CPUS``; ``region`` to the insert's region.
        """
        rule = InsertRule("quota", int(count), zone, machine_type, quota, float(limit), region)
        with self.lock:
            self._insert_rules.append(rule)

    def add_image(self, image: str) -> None:
        """Accept ``image`` (``projects/P/global/images/[family/]NAME``) as a boot image."""
        with self.lock:
            self._images.add(image_key(image))

    def preempt(self, project: str, zone: str, name: str) -> Json:
        """Reclaim a running spot VM like GCE does; returns the ``preempted`` operation.

        Raises GceError 404 if there is no such instance, 400 if it is not a running spot VM.
        """
        with self.lock:
            inst = self._instance(project, zone, name)
            if not is_spot(inst) or inst["status"] != "RUNNING":
                why = "is not a running spot VM" if is_spot(inst) else "is not a spot VM"
                raise GceError(400, f"Instance '{name}' {why}; only those can be preempted.")
            action = inst["scheduling"].get("instanceTerminationAction", "STOP")
            if action == "DELETE":
                del self._instances[(project, zone, name)]
            else:
                inst.update(status="TERMINATED", lastStopTimestamp=now())
            op = self._new_op(project, zone, "compute.instances.preempted", inst, polls=0)
            op.body.update(user="system", statusMessage="Instance was preempted.")
            op.finish()
            return copy.deepcopy(op.body)

    def instances(self, project: str | None = None, zone: str | None = None) -> list[Json]:
        """A snapshot of the instances (as the API shows them), for assertions."""
        with self.lock:
            return [
                copy.deepcopy(inst)
                for (p, z, _), inst in sorted(self._instances.items())
                if project in (None, p) and zone in (None, z)
            ]

    @property
    def requests(self) -> list[RecordedRequest]:
        """The API requests received so far, oldest first."""
        with self.lock:
            return list(self._requests)

    # --- used by the HTTP layer ---------------------------------------------------------

    def record(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
        with self.lock:
            self._requests.append(RecordedRequest(method, path, query, body))

    def take_failure(self, method_id: str) -> GceError | None:
        """Consume and return the first injected HTTP error matching this call."""
        with self.lock:
            rule = next((r for r in self._fail_rules if r.matches(method_id)), None)
            if rule is None:
                return None
            rule.count -= 1
            if rule.count <= 0:
                self._fail_rules.remove(rule)
            return rule.error

    # --- instances ----------------------------------------------------------------------

    def _instance(self, project: str, zone: str, name: str) -> Json:
        inst = self._instances.get((project, zone, name))
        if inst is None:
            raise not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def insert_instance(self, project: str, zone: str, query: dict[str, str], body: Json) -> Json:
        with self.lock:
            request_id = query.get("requestId")
            if request_id and request_id in self._request_ids:
                return copy.deepcopy(self._request_ids[request_id].body)
            inst = self._validated_instance(project, zone, body)
            mtype = inst["machineType"].rsplit("/", 1)[-1]
            failure = self._insert_failure(project, zone, mtype, inst)
            polls = self.op_polls_before_done
            inst["status"] = "PROVISIONING" if polls else "RUNNING"
            if not failure:
                self._instances[(project, zone, inst["name"])] = inst
            op = self._new_op(project, zone, "insert", inst, polls, failure=failure)
            if not failure:
                op.on_done = lambda: inst.update(status="RUNNING")
            if request_id:
                self._request_ids[request_id] = op
            return self._report(op)

    def _validated_instance(self, project: str, zone: str, body: Json) -> Json:
        """The stored instance for an insert body, or the 400/409 GCE would answer."""
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (project, zone, name) in self._instances:
            raise GceError(
                409,
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
            )
        link = body.get("machineType", "")
        parsed = short_name(link, "machineTypes")
        if parsed is None:
            why = "Must be a URL to a valid Compute resource of the correct type."
            raise invalid_field("resource.machineType", link, why)
        if parsed[0] not in (None, zone) or parsed[1] not in MACHINE_TYPES:
            why = f"Machine type with name '{parsed[1]}' does not exist in zone '{zone}'."
            raise invalid_field("resource.machineType", link, why)
        check_labels(body.get("labels") or {})
        inst = copy.deepcopy(body)
        zone_link = f"{LINK_BASE}projects/{project}/zones/{zone}"
        sched = inst.setdefault("scheduling", {})
        sched.setdefault("provisioningModel", "STANDARD")
        no_migrate = is_spot(inst) or inst.get("guestAccelerators") or MACHINE_TYPES[parsed[1]][2]
        if no_migrate and sched.get("onHostMaintenance") == "MIGRATE":
            why = "Spot VMs and instances with guest accelerators do not support live migration."
            raise invalid_field("resource.scheduling.onHostMaintenance", "MIGRATE", why)
        sched.setdefault("onHostMaintenance", "TERMINATE" if no_migrate else "MIGRATE")
        sched.setdefault("automaticRestart", not is_spot(inst))
        if is_spot(inst):
            sched.setdefault("instanceTerminationAction", "STOP")
        for acc in inst.get("guestAccelerators", []):
            acc_name = acc.get("acceleratorType", "").rsplit("/", 1)[-1]
            acc["acceleratorType"] = f"{zone_link}/acceleratorTypes/{acc_name}"
        for i, nic in enumerate(inst.get("networkInterfaces", [])):
            self._nics += 1
            n = self._nics
            nic.update(kind="compute#networkInterface", name=f"nic{i}")
            nic.setdefault("networkIP", f"10.128.{n // 250}.{n % 250 + 2}")
            for ac in nic.get("accessConfigs", []):
                ac.update(kind="compute#accessConfig", natIP=f"34.16.{n // 250}.{n % 250 + 2}")
        if "metadata" in inst:
            meta = inst["metadata"]
            meta.update(kind="compute#metadata", fingerprint=fingerprint(meta))
        inst.update(
            kind="compute#instance",
            id=new_id(),
            creationTimestamp=now(),
            zone=zone_link,
            selfLink=f"{zone_link}/instances/{name}",
            machineType=f"{zone_link}/machineTypes/{parsed[1]}",
            labelFingerprint=fingerprint(inst.get("labels") or {}),
            cpuPlatform="Intel Cascade Lake",
        )
        return inst

    def _insert_failure(self, project: str, zone: str, mtype: str, inst: Json) -> Json:
        """The operation error an insert ends with (bad image, injected quota/stockout)."""
        for disk in inst.get("disks", []):
            image = (disk.get("initializeParams") or {}).get("sourceImage")
            if image and image_key(image) not in self._images:
                return op_error(404, "RESOURCE_NOT_FOUND", f"The resource '{image}' was not found")
        rule = next((r for r in self._insert_rules if r.matches(zone, mtype)), None)
        if rule is None:
            return {}
        rule.count -= 1
        if rule.count <= 0:
            self._insert_rules.remove(rule)
        if rule.kind == "stockout":
            msg = (
                f"The zone 'projects/{project}/zones/{zone}' does not have enough resources"
                " available to fulfill the request. Try a different zone, or try again later."
            )
            return op_error(503, "ZONE_RESOURCE_POOL_EXHAUSTED", msg)
        region = rule.region or zone.rsplit("-", 1)[0]
        quota = rule.quota or quota_name(inst, mtype)
        msg = f"Quota '{quota}' exceeded. Limit: {rule.limit:.1f} in region {region}."
        info = {
            "metricName": f"compute.googleapis.com/{quota.lower()}",
            "limitName": f"{quota.replace('_', '-')}-per-project-region",
            "dimensions": {"region": region},
            "limit": rule.limit,
        }
        return op_error(403, "QUOTA_EXCEEDED", msg, [{"quotaInfo": info}])

    def get_instance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        with self.lock:
            return copy.deepcopy(self._instance(project, zone, name))

    def list_instances(self, project: str, zone: str, query: dict[str, str], **_: Any) -> Json:
        with self.lock:
            items = [
                i for (p, z, _), i in sorted(self._instances.items()) if (p, z) == (project, zone)
            ]
            return list_body("compute#instanceList", items, query)

    def aggregated_instances(self, project: str, query: dict[str, str], **_: Any) -> Json:
        """``aggregated/instances``: the matching instances of all zones, grouped by zone."""
        with self.lock:
            items = [i for (p, _, _), i in sorted(self._instances.items()) if p == project]
            found, token = page(items, query)
            scoped: dict[str, Json] = {}
            for inst in found:
                zone_key = "zones/" + inst["zone"].rsplit("/", 1)[-1]
                scoped.setdefault(zone_key, {"instances": []})["instances"].append(inst)
            body = {"kind": "compute#instanceAggregatedList", "items": copy.deepcopy(scoped)}
            return body | ({"nextPageToken": token} if token else {})

    def delete_instance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        with self.lock:
            inst = self._instance(project, zone, name)
            inst["status"] = "STOPPING"
            op = self._new_op(project, zone, "delete", inst, self.op_polls_before_done)
            op.on_done = lambda: self._instances.pop((project, zone, name), None)
            return self._report(op)

    def stop_instance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        return self._transition(project, zone, name, "stop", "STOPPING", "TERMINATED")

    def start_instance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        return self._transition(project, zone, name, "start", "STAGING", "RUNNING")

    def _transition(self, project: str, zone: str, name: str, kind: str, via: str, to: str) -> Json:
        """stop/start: a no-op if already there, else ``via`` until the operation is DONE."""
        with self.lock:
            inst = self._instance(project, zone, name)
            op = self._new_op(project, zone, kind, inst, self.op_polls_before_done)
            if inst["status"] != to:
                inst["status"] = via
                op.on_done = lambda: inst.update(status=to)
            return self._report(op)

    def simulate_maintenance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        """On a running spot VM this is a preemption, as on real GCE; others live-migrate."""
        with self.lock:
            inst = self._instance(project, zone, name)
            if is_spot(inst) and inst["status"] == "RUNNING":
                self.preempt(project, zone, name)
            op = self._new_op(
                project, zone, "simulateMaintenanceEvent", inst, self.op_polls_before_done
            )
            return self._report(op)

    def set_labels(self, project: str, zone: str, name: str, body: Json, **_: Any) -> Json:
        """Replace the labels; like GCE, the current ``labelFingerprint`` must be sent."""
        with self.lock:
            inst = self._instance(project, zone, name)
            if body.get("labelFingerprint") != inst["labelFingerprint"]:
                raise GceError(
                    412,
                    "Labels fingerprint either invalid or resource labels have changed",
                    "conditionNotMet",
                )
            labels = body.get("labels") or {}
            check_labels(labels)
            inst.update(labels=labels, labelFingerprint=fingerprint(labels))
            op = self._new_op(project, zone, "setLabels", inst, self.op_polls_before_done)
            return self._report(op)

    # --- operations ---------------------------------------------------------------------

    def _new_op(
        self,
        project: str,
        zone: str,
        kind: str,
        inst: Json,
        polls: int,
        failure: Json | None = None,
    ) -> Operation:
        name = f"operation-{int(time.time() * 1000)}-{secrets.token_hex(6)}-{secrets.token_hex(4)}"
        zone_link = f"{LINK_BASE}projects/{project}/zones/{zone}"
        stamp = now()
        body = {
            "kind": "compute#operation",
            "id": new_id(),
            "name": name,
            "zone": zone_link,
            "operationType": kind,
            "targetLink": f"{zone_link}/instances/{inst['name']}",
            "targetId": inst["id"],
            "status": "RUNNING",
            "user": "fake@example.com",
            "progress": 0,
            "insertTime": stamp,
            "startTime": stamp,
            "selfLink": f"{zone_link}/operations/{name}",
        }
        op = Operation(body, polls, failure=failure or {})
        self._ops[(project, zone, name)] = op
        return op

    def _report(self, op: Operation) -> Json:
        """The operation as a call returning it shows it: DONE unless polls are pending."""
        if op.polls_left <= 0:
            op.finish()
        return copy.deepcopy(op.body)

    def poll_operation(self, project: str, zone: str, name: str, **_: Any) -> Json:
        """Operation get/wait: one poll; RUNNING while polls are pending, then DONE."""
        with self.lock:
            op = self._ops.get((project, zone, name))
            if op is None:
                raise not_found(f"projects/{project}/zones/{zone}/operations/{name}")
            if op.polls_left > 0:
                op.polls_left -= 1
                return copy.deepcopy(op.body)
            return self._report(op)

    def list_operations(self, project: str, zone: str, query: dict[str, str], **_: Any) -> Json:
        with self.lock:
            items = [op.body for (p, z, _), op in self._ops.items() if (p, z) == (project, zone)]
            return list_body("compute#operationList", items, query)

    # --- machine types ------------------------------------------------------------------

    def get_machine_type(self, project: str, zone: str, name: str, **_: Any) -> Json:
        if name not in MACHINE_TYPES:
            raise not_found(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return machine_type_json(project, zone, name)

    def list_machine_types(self, project: str, zone: str, query: dict[str, str], **_: Any) -> Json:
        items = [machine_type_json(project, zone, n) for n in sorted(MACHINE_TYPES)]
        return list_body("compute#machineTypeList", items, query)
