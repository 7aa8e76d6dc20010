"""State and behaviour of the fake Compute Engine API, kept apart from the HTTP plumbing.

Every public method of :class:`GcpState` takes the lock, so tests, the HTTP handler threads
and the ``/_fake`` hooks can all use it at once. Resources are stored as the JSON dicts the
real API returns, so the HTTP layer only serialises them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]

#: What real resource links start with; only an identifier, the client never fetches it.
LINK_BASE = "https://www.googleapis.com/compute/v1/"

_ZONE_LETTERS = {
    "us-central1": "abcf",
    "us-east1": "bcd",
    "us-east4": "abc",
    "us-east5": "abc",
    "us-west1": "abc",
    "europe-west1": "bcd",
    "europe-west4": "abc",
    "asia-southeast1": "abc",
}
#: The real zones of the regions the catalog uses; anything else is an unknown zone.
KNOWN_ZONES = frozenset(f"{r}-{z}" for r, letters in _ZONE_LETTERS.items() for z in letters)

DEFAULT_IMAGES = frozenset(
    {
        "projects/debian-cloud/global/images/family/debian-12",
        "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
        "projects/deeplearning-platform-release/global/images/family/common-cu121",
    }
)


def _machine_types() -> dict[str, tuple[int, int, str | None, int]]:
    """name -> (guestCpus, memoryMb, accelerator type, accelerator count)."""
    table: dict[str, tuple[int, int, str | None, int]] = {}
    gb_per_cpu = {
        "n1": {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9},
        "n2": {"standard": 4, "highmem": 8, "highcpu": 1},
        "e2": {"standard": 4, "highmem": 8, "highcpu": 1},
        "c2": {"standard": 4},
    }
    sizes = {
        "n1": (1, 2, 4, 8, 16, 32, 64, 96),
        "n2": (2, 4, 8, 16, 32, 48, 64, 80, 96, 128),
        "e2": (2, 4, 8, 16, 32),
        "c2": (4, 8, 16, 30, 60),
    }
    for family, shapes in gb_per_cpu.items():
        for shape, ratio in shapes.items():
            for cpus in sizes[family]:
                if shape == "standard" or cpus > 1:
                    table[f"{family}-{shape}-{cpus}"] = (cpus, int(cpus * ratio * 1024), None, 0)
    table |= {"e2-micro": (2, 1024, None, 0), "e2-small": (2, 2048, None, 0)}
    table |= {"e2-medium": (2, 4096, None, 0)}
    gpu_shapes = [
        (
            "g2-standard",
            "nvidia-l4",
            4,
            [(4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8)],
        ),
        ("a2-highgpu", "nvidia-tesla-a100", 85 / 12, [(12, 1), (24, 2), (48, 4), (96, 8)]),
        ("a2-megagpu", "nvidia-tesla-a100", 85 / 6, [(96, 16)]),
        ("a2-ultragpu", "nvidia-a100-80gb", 170 / 12, [(12, 1), (24, 2), (48, 4), (96, 8)]),
        ("a3-highgpu", "nvidia-h100-80gb", 9, [(26, 1), (52, 2), (104, 4), (208, 8)]),
        ("a3-megagpu", "nvidia-h100-mega-80gb", 9, [(208, 8)]),
        ("a3-ultragpu", "nvidia-h200-141gb", 2952 / 224, [(224, 8)]),
    ]
    for prefix, gpu, gb_cpu, shapes_ in gpu_shapes:
        for cpus, gpus in shapes_:
            name = f"{prefix}-{cpus}" if prefix.startswith("g2") else f"{prefix}-{gpus}g"
            table[name] = (cpus, round(cpus * gb_cpu * 1024), gpu, gpus)
    return table


MACHINE_TYPES = _machine_types()

_GPU_QUOTA = {
    "nvidia-tesla-a100": "NVIDIA_A100",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB",
    "nvidia-h100-80gb": "NVIDIA_H100",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA",
    "nvidia-h200-141gb": "NVIDIA_H200",
}
_CANONICAL = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
_DEFAULT_REASON = {400: "invalid", 403: "forbidden", 404: "notFound", 409: "alreadyExists"}
_DEFAULT_REASON |= {429: "rateLimitExceeded", 500: "backendError", 503: "backendError"}
_NAME_RE = r"(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


class GceError(Exception):
    """An error the API answers with an HTTP status and GCE's JSON error body."""

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _DEFAULT_REASON.get(code, "error")

    def body(self) -> Json:
        """The JSON body real GCE sends; api_core reads ``message`` and ``errors`` from it."""
        domain = "usageLimits" if self.code == 429 or "quota" in self.reason.lower() else "global"
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": _CANONICAL.get(self.code, "UNKNOWN"),
                "errors": [{"message": self.message, "domain": domain, "reason": self.reason}],
            }
        }


def invalid_field(name: str, value: object, why: str) -> GceError:
    """GCE's wording for a bad request field (400 ``invalid``)."""
    return GceError(400, f"Invalid value for field '{name}': '{value}'. {why}")


def not_found(resource: str) -> GceError:
    return GceError(404, f"The resource '{resource}' was not found")


# --- list filters -------------------------------------------------------------------------

_TERM = re.compile(
    r"""\(?\s*(?P<field>[A-Za-z][\w.-]*)\s*(?P<op>!=|=|:|eq(?=\s)|ne(?=\s))\s*"""
    r"""(?P<value>"[^"]*"|'[^']*'|[^\s()]+)\s*\)?"""
)
_CONJ = re.compile(r"(AND|OR)(?=[\s(])")

Predicate = Callable[[Json], bool]


def parse_filter(text: str) -> list[Predicate]:
    """Parse the subset of GCE list filters we use: conjunctions of simple comparisons.

    ``field = v``, ``field != v``, ``field eq regex``, ``field ne regex``, ``field:*`` (is set),
    each optionally in parentheses, joined by ``AND`` or whitespace. ``OR`` is refused (400)
    rather than answered wrongly.
    """
    preds: list[Predicate] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        conj = _CONJ.match(text, pos)
        if conj and conj.group(1) == "OR":
            raise invalid_field("filter", text, "The fake GCE server supports only AND filters.")
        if conj:
            pos = conj.end()
            continue
        term = _TERM.match(text, pos)
        if not term:
            raise invalid_field("filter", text, "Invalid list filter expression.")
        preds.append(_predicate(term["field"], term["op"], term["value"].strip("\"'")))
        pos = term.end()
    return preds


def _predicate(path: str, op: str, want: str) -> Predicate:
    def actual(res: Json) -> str | None:
        node: Any = res
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or isinstance(node, dict | list):
            return None if node is None else json.dumps(node)
        return str(node).lower() if isinstance(node, bool) else str(node)

    try:
        regex = re.compile(want) if op in ("eq", "ne") else None
    except re.error as exc:
        raise invalid_field("filter", want, f"Invalid regular expression: {exc}.") from exc
    checks: dict[str, Callable[[str | None], bool]] = {
        "=": lambda v: v == want,
        "!=": lambda v: v != want,
        ":": lambda v: v is not None and (want == "*" or v == want),
        "eq": lambda v: v is not None and regex is not None and regex.fullmatch(v) is not None,
        "ne": lambda v: v is None or regex is None or regex.fullmatch(v) is None,
    }
    check = checks[op]
    return lambda res: check(actual(res))


def page(items: list[Json], query: dict[str, str], limit: int = 500) -> tuple[list[Json], str]:
    """Filter then page ``items``; returns the page and the next page token ("" if last)."""
    preds = parse_filter(query.get("filter", ""))
    matched = [it for it in items if all(p(it) for p in preds)]
    raw_size, token = query.get("maxResults") or str(limit), query.get("pageToken")
    if not raw_size.isdigit():
        raise invalid_field("maxResults", raw_size, "Must be a non-negative integer.")
    size = min(int(raw_size), limit) or limit
    try:
        start = (
            int(base64.urlsafe_b64decode(token).decode().removeprefix("offset=")) if token else 0
        )
    except ValueError as exc:
        raise invalid_field("pageToken", token, "Invalid page token.") from exc
    end = start + size
    nxt = base64.urlsafe_b64encode(f"offset={end}".encode()).decode() if end < len(matched) else ""
    return matched[start:end], nxt


# --- state --------------------------------------------------------------------------------


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _new_id() -> str:
    return str(10**18 + secrets.randbelow(9 * 10**18))


def check_labels(labels: Json) -> None:
    """GCE's label rules (ASCII only here; GCE also allows international lowercase letters)."""
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(str(value)):
            why = (
                f"Label '{key}: {value}' violates format constraints: keys start with a"
                " lowercase letter; keys and values use only lowercase letters, digits,"
                " '_' and '-', at most 63 characters."
            )
            raise invalid_field("resource.labels", key, why)


def short_name(link: str, collection: str) -> tuple[str | None, str] | None:
    """``(zone or None, name)`` from a full or partial link like ``zones/Z/machineTypes/N``."""
    m = re.search(rf"(?:^|/)(?:zones/([^/]+)/)?{collection}/([^/]+)$", link)
    return (m[1], m[2]) if m else None


def _fingerprint(value: object) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def is_spot(instance: Json) -> bool:
    sched = instance.get("scheduling") or {}
    return sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True


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
            self._images.add(_image_key(image))

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
        if not re.fullmatch(_NAME_RE, name):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{_NAME_RE}'")
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
            meta.update(kind="compute#metadata", fingerprint=_fingerprint(meta))
        inst.update(
            kind="compute#instance",
            id=_new_id(),
            creationTimestamp=now(),
            zone=zone_link,
            selfLink=f"{zone_link}/instances/{name}",
            machineType=f"{zone_link}/machineTypes/{parsed[1]}",
            labelFingerprint=_fingerprint(inst.get("labels") or {}),
            cpuPlatform="Intel Cascade Lake",
        )
        return inst

    def _insert_failure(self, project: str, zone: str, mtype: str, inst: Json) -> Json:
        """The operation error an insert ends with (bad image, injected quota/stockout)."""
        for disk in inst.get("disks", []):
            image = (disk.get("initializeParams") or {}).get("sourceImage")
            if image and _image_key(image) not in self._images:
                return _op_error(404, "RESOURCE_NOT_FOUND", f"The resource '{image}' was not found")
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
            return _op_error(503, "ZONE_RESOURCE_POOL_EXHAUSTED", msg)
        region = rule.region or zone.rsplit("-", 1)[0]
        quota = rule.quota or _quota_name(inst, mtype)
        msg = f"Quota '{quota}' exceeded. Limit: {rule.limit:.1f} in region {region}."
        info = {
            "metricName": f"compute.googleapis.com/{quota.lower()}",
            "limitName": f"{quota.replace('_', '-')}-per-project-region",
            "dimensions": {"region": region},
            "limit": rule.limit,
        }
        return _op_error(403, "QUOTA_EXCEEDED", msg, [{"quotaInfo": info}])

    def get_instance(self, project: str, zone: str, name: str, **_: Any) -> Json:
        with self.lock:
            return copy.deepcopy(self._instance(project, zone, name))

    def list_instances(self, project: str, zone: str, query: dict[str, str], **_: Any) -> Json:
        with self.lock:
            items = [
                i for (p, z, _), i in sorted(self._instances.items()) if (p, z) == (project, zone)
            ]
            return _list_body("compute#instanceList", items, query)

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
            inst.update(labels=labels, labelFingerprint=_fingerprint(labels))
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
            "id": _new_id(),
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
            return _list_body("compute#operationList", items, query)

    # --- machine types ------------------------------------------------------------------

    def get_machine_type(self, project: str, zone: str, name: str, **_: Any) -> Json:
        if name not in MACHINE_TYPES:
            raise not_found(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return machine_type_json(project, zone, name)

    def list_machine_types(self, project: str, zone: str, query: dict[str, str], **_: Any) -> Json:
        items = [machine_type_json(project, zone, n) for n in sorted(MACHINE_TYPES)]
        return _list_body("compute#machineTypeList", items, query)


def machine_type_json(project: str, zone: str, name: str) -> Json:
    cpus, memory_mb, gpu, gpus = MACHINE_TYPES[name]
    body: Json = {
        "kind": "compute#machineType",
        "id": str(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)),
        "name": name,
        "description": f"{cpus} vCPUs, {memory_mb / 1024:g} GB RAM",
        "guestCpus": cpus,
        "memoryMb": memory_mb,
        "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168",
        "zone": zone,
        "isSharedCpu": name in ("e2-micro", "e2-small", "e2-medium"),
        "selfLink": f"{LINK_BASE}projects/{project}/zones/{zone}/machineTypes/{name}",
    }
    if gpu:
        body["accelerators"] = [{"guestAcceleratorType": gpu, "guestAcceleratorCount": gpus}]
    return body


def _list_body(kind: str, items: Iterable[Json], query: dict[str, str]) -> Json:
    """A list response; like GCE it has no ``items`` key when nothing matched."""
    found, token = page(list(items), query)
    body: Json = {"kind": kind}
    if found:
        body["items"] = copy.deepcopy(found)
    if token:
        body["nextPageToken"] = token
    return body


def _image_key(image: str) -> str:
    return image[image.find("projects/") :] if "projects/" in image else image


def _quota_name(inst: Json, mtype: str) -> str:
    accs = [a["acceleratorType"].rsplit("/", 1)[-1] for a in inst.get("guestAccelerators", [])]
    gpu = MACHINE_TYPES[mtype][2] or (accs[0] if accs else None)
    if gpu is None:
        return "CPUS"
    name = _GPU_QUOTA.get(gpu) or gpu.replace("tesla-", "").replace("-", "_").upper()
    return ("PREEMPTIBLE_" if is_spot(inst) else "") + f"{name}_GPUS"


def _op_error(status: int, code: str, message: str, details: list[Json] | None = None) -> Json:
    """The fields a failed operation carries; api_core picks the exception from the status."""
    names = {403: "FORBIDDEN", 404: "NOT FOUND", 503: "SERVICE UNAVAILABLE"}
    err: Json = {"code": code, "message": message}
    if details:
        err["errorDetails"] = details
    return {
        "httpErrorStatusCode": status,
        "httpErrorMessage": names.get(status, "ERROR"),
        "error": {"errors": [err]},
    }
