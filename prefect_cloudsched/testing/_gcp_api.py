"""What the fake Compute Engine API knows without state: its resources, errors and list rules.

Machine types, zones and images as the real API names them; its error bodies; the ``filter``
expressions and paging of list calls; the small helpers the state (:mod:`._gcp_state`) uses
to build resources. Nothing here holds data between requests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable
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
NAME_RE = r"(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
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


def new_id() -> str:
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


def fingerprint(value: object) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def is_spot(instance: Json) -> bool:
    sched = instance.get("scheduling") or {}
    return sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True


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


def list_body(kind: str, items: Iterable[Json], query: dict[str, str]) -> Json:
    """A list response; like GCE it has no ``items`` key when nothing matched."""
    found, token = page(list(items), query)
    body: Json = {"kind": kind}
    if found:
        body["items"] = copy.deepcopy(found)
    if token:
        body["nextPageToken"] = token
    return body


def image_key(image: str) -> str:
    return image[image.find("projects/") :] if "projects/" in image else image


def quota_name(inst: Json, mtype: str) -> str:
    accs = [a["acceleratorType"].rsplit("/", 1)[-1] for a in inst.get("guestAccelerators", [])]
    gpu = MACHINE_TYPES[mtype][2] or (accs[0] if accs else None)
    if gpu is None:
        return "CPUS"
    name = _GPU_QUOTA.get(gpu) or gpu.replace("tesla-", "").replace("-", "_").upper()
    return ("PREEMPTIBLE_" if is_spot(inst) else "") + f"{name}_GPUS"


def op_error(status: int, code: str, message: str, details: list[Json] | None = None) -> Json:
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
