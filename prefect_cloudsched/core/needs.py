"""What a task asks for: the ``@requires`` decorator, the tag shorthand and call-site overrides.

Pure module: no Prefect import, so the scheduler core and its tests stay fast.

Precedence, lowest to highest: package defaults < ``@requires(...)`` < tags on the task
(``@task(tags=[...])``) < tags from ``with prefect.tags(...)`` at the call site <
``with override(...)``. The more specific to one call, the stronger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from prefect_cloudsched.errors import NeedsError

NEEDS_ATTR = "__cloudsched_needs__"

#: GPU models the shipped catalog knows (SkyPilot naming). Matching is case-insensitive.
KNOWN_GPU_TYPES: tuple[str, ...] = (
    "A100",
    "A100-80GB",
    "A10G",
    "H100",
    "H100-MEGA",
    "H200",
    "L4",
    "L40S",
    "P100",
    "P4",
    "T4",
    "V100",
    "V100-32GB",
)
_GPU_BY_LOWER = {g.lower(): g for g in KNOWN_GPU_TYPES}


class Priority(StrEnum):
    """How urgently a task must run; ``realtime`` never uses spot."""

    REALTIME = "realtime"
    HIGH = "high"
    BATCH = "batch"


@dataclass(frozen=True, slots=True)
class TaskNeeds:
    """Resources and constraints of one task run.

    Attributes:
        gpus: Whole GPUs needed on one instance (unset: 1 with a ``gpu_type``, else 0).
        gpu_type: GPU model (``None`` = any model); a model with ``gpus=0`` is refused.
        cpus: vCPUs needed.
        memory_gib: Memory needed, GiB.
        est_runtime: Estimated run time; placement prices with it.
        deadline: Either a ``timedelta`` counted from submission or an absolute ``datetime``
            (a naive one is local time, as ``datetime.astimezone`` reads it).
        priority: ``realtime`` | ``high`` | ``batch``.
        spot_ok: May run on spot capacity (never for ``realtime``).
        checkpointable: Resumes from a checkpoint after an interruption.
        data_region: Region its input lives in; another region pays egress.
        input_gib: Size of its input, GiB, for the egress estimate.
    """

    gpus: int | None = None  # always an int after __post_init__
    gpu_type: str | None = None
    cpus: float = 1.0
    memory_gib: float = 1.0
    est_runtime: timedelta = timedelta(minutes=10)
    deadline: timedelta | datetime | None = None
    priority: Priority = Priority.BATCH
    spot_ok: bool = False
    checkpointable: bool = False
    data_region: str | None = None
    input_gib: float = 0.0

    def __post_init__(self) -> None:
        if self.gpus is None:  # a model alone asks for one GPU of it
            object.__setattr__(self, "gpus", 1 if self.gpu_type is not None else 0)
        _check_nonneg_int("gpus", self.gpus)
        _check_number("cpus", self.cpus, positive=True)
        _check_number("memory_gib", self.memory_gib, positive=True)
        _check_number("input_gib", self.input_gib, positive=False)
        for name in ("spot_ok", "checkpointable"):
            if not isinstance(getattr(self, name), bool):
                raise NeedsError(
                    f"{name} must be True or False, got {getattr(self, name)!r}; "
                    "a string such as 'no' is not a bool"
                )
        _check_duration("est_runtime", self.est_runtime)
        if isinstance(self.deadline, timedelta):
            _check_duration("deadline", self.deadline)
        elif self.deadline is not None and not isinstance(self.deadline, datetime):
            raise NeedsError(
                f"deadline must be a timedelta or datetime, got {type(self.deadline).__name__}"
            )
        elif self.deadline is not None and self.deadline.tzinfo is None:
            # local time, as Python reads a naive datetime (datetime.now() + 3h means that)
            object.__setattr__(self, "deadline", self.deadline.astimezone(UTC))
        if self.gpu_type is not None:
            object.__setattr__(self, "gpu_type", normalize_gpu_type(self.gpu_type))
            if self.gpus == 0:
                raise NeedsError(
                    f"gpus=0 with gpu_type {self.gpu_type!r}: a GPU model needs gpus >= 1; "
                    "drop gpu_type for a CPU-only task"
                )
        if self.data_region is not None:
            object.__setattr__(self, "data_region", check_region(self.data_region))
        try:
            object.__setattr__(self, "priority", Priority(self.priority))
        except (ValueError, TypeError):
            raise NeedsError(
                f"priority must be one of {', '.join(p.value for p in Priority)};"
                f" got {self.priority!r}"
            ) from None

    @property
    def allows_spot(self) -> bool:
        """Spot is never used for real-time work, whatever the task says."""
        return self.spot_ok and self.priority is not Priority.REALTIME

    def deadline_at(self, submitted_at: datetime) -> datetime | None:
        """The absolute deadline for a run submitted at ``submitted_at``."""
        if self.deadline is None:
            return None
        if isinstance(self.deadline, timedelta):
            return submitted_at + self.deadline
        return self.deadline  # made aware (UTC) at construction

    def merged(self, changes: Mapping[str, Any]) -> TaskNeeds:
        """A copy with ``changes`` applied (validated again)."""
        if not changes:
            return self
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise NeedsError(f"unknown need(s) {sorted(unknown)}; known: {sorted(FIELD_NAMES)}")
        changes = dict(changes)
        if changes.get("gpus") == 0 and "gpu_type" not in changes:
            changes["gpu_type"] = None  # CPU-only (e.g. override(gpus=0)) drops the model
        if changes.get("gpu_type") is not None and "gpus" not in changes and self.gpus == 0:
            changes["gpus"] = None  # a model alone asks for one GPU of it
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """Short human form for logs and the ledger."""
        parts = [f"{self.gpus}x{self.gpu_type or 'any'} GPU" if self.gpus else "cpu-only"]
        parts.append(f"{self.cpus:g} vCPU, {self.memory_gib:g} GiB")
        parts.append(f"~{_fmt_td(self.est_runtime)}")
        if self.deadline is not None:
            parts.append(f"deadline {self.deadline}")
        parts.append(self.priority.value + (", spot ok" if self.allows_spot else ""))
        return "; ".join(parts)


def normalize_gpu_type(name: str) -> str:
    """Canonical GPU name, or a :class:`NeedsError` that lists the known ones."""
    canon = _GPU_BY_LOWER.get(name.strip().lower()) if isinstance(name, str) else None
    if canon is None:
        raise NeedsError(f"gpu_type {name!r} is unknown; use one of: {', '.join(KNOWN_GPU_TYPES)}")
    return canon


#: Public regions of the two clouds (``data_region`` must name one: a typo would silently
#: price every placement as cross-region egress).
AWS_REGIONS: frozenset[str] = frozenset(
    [
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "af-south-1",
        "ap-east-1",
        "ap-east-2",
        "ap-south-1",
        "ap-south-2",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
        "ap-southeast-5",
        "ap-southeast-7",
        "ap-northeast-1",
        "ap-northeast-2",
        "ap-northeast-3",
        "ca-central-1",
        "ca-west-1",
        "eu-central-1",
        "eu-central-2",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "eu-south-1",
        "eu-south-2",
        "eu-north-1",
        "il-central-1",
        "me-south-1",
        "me-central-1",
        "mx-central-1",
        "sa-east-1",
        "us-gov-east-1",
        "us-gov-west-1",
        "cn-north-1",
        "cn-northwest-1",
    ]
)
GCP_REGIONS: frozenset[str] = frozenset(
    [
        "africa-south1",
        "asia-east1",
        "asia-east2",
        "asia-northeast1",
        "asia-northeast2",
        "asia-northeast3",
        "asia-south1",
        "asia-south2",
        "asia-southeast1",
        "asia-southeast2",
        "australia-southeast1",
        "australia-southeast2",
        "europe-central2",
        "europe-north1",
        "europe-north2",
        "europe-southwest1",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "europe-west6",
        "europe-west8",
        "europe-west9",
        "europe-west10",
        "europe-west12",
        "me-central1",
        "me-central2",
        "me-west1",
        "northamerica-northeast1",
        "northamerica-northeast2",
        "northamerica-south1",
        "southamerica-east1",
        "southamerica-west1",
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
    ]
)
KNOWN_REGIONS: frozenset[str] = AWS_REGIONS | GCP_REGIONS


def check_region(name: object, field_name: str = "data_region") -> str:
    """``name`` if it is a public AWS or GCP region, else a :class:`NeedsError` with a hint."""
    if not isinstance(name, str):
        raise NeedsError(f"{field_name} must be a region name such as us-east-1, got {name!r}")
    region = name.strip().lower()
    if region in KNOWN_REGIONS:
        return region
    zone_of = region.rsplit("-", 1)[0]  # GCP: us-central1-a
    if zone_of not in KNOWN_REGIONS:
        zone_of = region.rstrip("abcdefghijklmnopqrstuvwxyz")  # AWS: us-east-1a
    hint = (
        f"{name!r} looks like a zone; use its region {zone_of!r}"
        if zone_of in KNOWN_REGIONS
        else f"{name!r} is not an AWS or GCP region; write e.g. us-east-1 or europe-west4"
    )
    raise NeedsError(f"{field_name}: {hint}")


# --------------------------------------------------------------------------- parsing helpers

_N = TypeVar("_N", int, float)

_DURATION_RE = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*"
    r"(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$",
    re.IGNORECASE,
)
_MEMORY_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(gi|gib|g|gb|mi|mib|m|mb|ti|tib|t|tb)?\s*$", re.IGNORECASE
)
_MEMORY_FACTORS = {"g": 1.0, "m": 1 / 1024, "t": 1024.0}


def parse_duration(text: str, field_name: str = "duration") -> timedelta:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"1d"`` → ``timedelta``."""
    match = _DURATION_RE.match(str(text))
    if not match or not any(match.groups()):
        raise NeedsError(
            f"{field_name} {text!r} is not a duration; write e.g. 90s, 30m, 2h, 1h30m or 1d"
        )
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION.total_seconds():
        raise NeedsError(f"{field_name} {text!r} is too long; at most {MAX_DURATION.days}d")
    value = timedelta(seconds=total)
    if value <= timedelta(0):
        raise NeedsError(f"{field_name} {text!r} must be longer than zero")
    return value


def parse_memory_gib(text: str, label: str = "mem", *, positive: bool = False) -> float:
    """``"32Gi"``, ``"512Mi"``, ``"1Ti"``, ``"16"`` (GiB) → GiB as a float.

    ``label`` names the value in errors (a tag such as ``'input:-1Gi'``).
    """
    match = _MEMORY_RE.match(str(text))
    if not match:
        raise NeedsError(f"{label} {text!r} is not a size; write e.g. 32Gi, 512Mi or 1Ti")
    unit = (match.group(2) or "g")[0].lower()
    value = float(match.group(1)) * _MEMORY_FACTORS[unit]
    if not math.isfinite(value):
        raise NeedsError(f"{label} {text!r} is too large; write e.g. 32Gi, 512Mi or 1Ti")
    if positive and value <= 0:
        raise NeedsError(f"{label} {text!r} must be more than zero; write e.g. 32Gi")
    return value


def _tag_number(tag: str, value: str, kind: Callable[[str], _N], noun: str) -> _N:
    """``value`` converted by ``kind``; else one line naming the tag, not a ValueError."""
    try:
        return kind(value)
    except ValueError:
        raise NeedsError(f"tag {tag!r}: {value!r} is not a {noun}") from None


def _parse_int(tag: str, value: str) -> int:
    number = _tag_number(tag, value, int, "whole number")
    if number < 0:
        raise NeedsError(f"tag {tag!r}: count must be >= 0")
    return number


def _parse_float(tag: str, value: str, *, positive: bool = False) -> float:
    number = _tag_number(tag, value, float, "number")
    if not math.isfinite(number):
        raise NeedsError(f"tag {tag!r}: {value!r} is not a finite number; write e.g. cpu:4")
    if positive and number <= 0:
        raise NeedsError(f"tag {tag!r}: must be more than zero; write e.g. cpu:4")
    return number


def _check_nonneg_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NeedsError(f"{name} must be a whole number >= 0, got {value!r}")


def _check_number(name: str, value: object, *, positive: bool) -> None:
    """A real, finite number (not a bool, not a string): ``"4"`` is refused, not coerced."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NeedsError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise NeedsError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise NeedsError(f"{name} must be > 0, got {value!r}")
    if not positive and value < 0:
        raise NeedsError(f"{name} must be >= 0, got {value!r}")


#: Longest runtime or deadline accepted: longer ones are typos, and they overflow datetimes.
MAX_DURATION = timedelta(days=366)


def _check_duration(name: str, value: object) -> None:
    if not isinstance(value, timedelta):
        raise NeedsError(
            f"{name} must be a timedelta (e.g. timedelta(hours=2)), got {type(value).__name__}"
        )
    if value <= timedelta(0):
        raise NeedsError(f"{name} must be a positive duration, got {value!r}")
    if value > MAX_DURATION:
        raise NeedsError(f"{name} must be at most {MAX_DURATION.days} days, got {value!r}")


def _fmt_td(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds}s"


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(TaskNeeds))
DEFAULT_NEEDS = TaskNeeds()


# --------------------------------------------------------------------------- tag grammar

_VALUE_TAGS: dict[str, Callable[[str, str], tuple[str, Any]]] = {
    "gpu": lambda t, v: ("gpus", _parse_int(t, v)),
    "gpus": lambda t, v: ("gpus", _parse_int(t, v)),
    "gpu-type": lambda t, v: ("gpu_type", normalize_gpu_type(v)),
    "cpu": lambda t, v: ("cpus", _parse_float(t, v, positive=True)),
    "cpus": lambda t, v: ("cpus", _parse_float(t, v, positive=True)),
    "mem": lambda t, v: ("memory_gib", parse_memory_gib(v, f"tag {t!r}:", positive=True)),
    "deadline": lambda t, v: ("deadline", parse_duration(v, "deadline")),
    "runtime": lambda t, v: ("est_runtime", parse_duration(v, "runtime")),
    "priority": lambda t, v: (
        "priority",
        Priority(v.lower()) if v.lower() in Priority._value2member_map_ else _bad_priority(t),
    ),
    "data-region": lambda t, v: ("data_region", check_region(v, f"tag {t!r}")),
    "input": lambda t, v: ("input_gib", parse_memory_gib(v, f"tag {t!r}:")),
}
_FLAG_TAGS: dict[str, tuple[str, Any]] = {
    "spot": ("spot_ok", True),
    "no-spot": ("spot_ok", False),
    "checkpointable": ("checkpointable", True),
}
#: Our own decision label; never parsed as a need.
DECISION_TAG_PREFIX = "cloudsched:"


def _bad_priority(tag: str) -> Any:
    raise NeedsError(f"tag {tag!r}: priority must be one of realtime, high, batch")


def needs_from_tags(tags: Iterable[str]) -> dict[str, Any]:
    """Parse the documented tag shorthand; tags that are not ours are ignored.

    Grammar: ``gpu:N``, ``gpu-type:NAME``, ``cpu:N``, ``mem:SIZE``, ``deadline:DUR``,
    ``runtime:DUR``, ``priority:realtime|high|batch``, ``data-region:REGION``,
    ``input:SIZE``, and the flags ``spot``, ``no-spot``, ``checkpointable``.
    """
    changes: dict[str, Any] = {}
    for raw in sorted(tags):  # sorted: the result must not depend on set order
        tag = raw.strip()
        if tag.startswith(DECISION_TAG_PREFIX):
            continue
        lowered = tag.lower()
        if lowered in _FLAG_TAGS:
            key, value = _FLAG_TAGS[lowered]
            changes[key] = value
            continue
        prefix, sep, value = tag.partition(":")
        parser = _VALUE_TAGS.get(prefix.lower()) if sep else None
        if parser is None:
            continue  # a user's own tag
        if not value.strip():
            raise NeedsError(f"tag {tag!r} has no value; write e.g. {prefix}:…")
        key, parsed = parser(tag, value.strip())
        changes[key] = parsed
    return changes


# --------------------------------------------------------------------------- decorator + override

T = TypeVar("T")


def requires(
    *,
    gpus: int | None = None,
    gpu_type: str | None = None,
    cpus: float | None = None,
    memory_gib: float | None = None,
    est_runtime: timedelta | None = None,
    deadline: timedelta | datetime | None = None,
    priority: Priority | str | None = None,
    spot_ok: bool | None = None,
    checkpointable: bool | None = None,
    data_region: str | None = None,
    input_gib: float | None = None,
) -> Callable[[T], T]:
    """Declare a task's needs. Place it **above** ``@task``.

    The needs are stored on ``task.fn`` so ``task.with_options(...)`` keeps them.

    Example:
        ```python
        from datetime import timedelta
        from prefect import task
        from prefect_cloudsched import requires

        @requires(gpus=1, gpu_type="A10G", est_runtime=timedelta(minutes=20),
                  deadline=timedelta(hours=2), spot_ok=True)
        @task
        def train(config: dict) -> float: ...
        ```
    """
    given = {k: v for k, v in locals().items() if v is not None}
    needs = DEFAULT_NEEDS.merged(given)  # validate at decoration time, not at run time

    def apply(obj: T) -> T:
        target = getattr(obj, "fn", obj)  # a prefect Task, or a plain function
        setattr(target, NEEDS_ATTR, needs)
        return obj

    return apply


_OVERRIDES: ContextVar[dict[str, Any] | None] = ContextVar("cloudsched_overrides", default=None)


@contextlib.contextmanager
def override(**changes: Any) -> Iterator[None]:
    """Override needs for every task submitted inside the block (nests; inner wins).

    Example:
        ```python
        with override(gpus=4, spot_ok=False):
            train.submit(big_config)
        ```
    """
    current = dict(_OVERRIDES.get() or {})
    validated = DEFAULT_NEEDS.merged(changes)  # raise early on a typo or a bad value
    current.update({k: getattr(validated, k) for k in changes})
    token = _OVERRIDES.set(current)
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def current_overrides() -> dict[str, Any]:
    """Overrides active in this context (the runner reads them in ``submit``)."""
    return dict(_OVERRIDES.get() or {})


def declared_needs(fn: object) -> TaskNeeds | None:
    """Needs set by ``@requires`` on a function or task, if any."""
    target = getattr(fn, "fn", fn)
    value = getattr(target, NEEDS_ATTR, None)
    return value if isinstance(value, TaskNeeds) else None


@dataclass(frozen=True, slots=True)
class ResolvedNeeds:
    """Needs after every layer is applied, and whether the task declared any at all."""

    needs: TaskNeeds
    declared: bool
    sources: tuple[str, ...] = field(default=())


def resolve_needs(
    fn: object,
    task_tags: Iterable[str] = (),
    context_tags: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> ResolvedNeeds:
    """Combine decorator, tags and overrides in the documented precedence order."""
    base = declared_needs(fn)
    sources: list[str] = ["requires"] if base is not None else []
    needs = base or DEFAULT_NEEDS
    for name, tags in (("task tags", task_tags), ("call-site tags", context_tags)):
        changes = needs_from_tags(tags)
        if changes:
            needs = needs.merged(changes)
            sources.append(name)
    if overrides:
        needs = needs.merged(overrides)
        sources.append("override")
    return ResolvedNeeds(needs=needs, declared=bool(sources), sources=tuple(sources))
