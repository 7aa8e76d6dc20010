"""Jobs for a replay: read a trace, synthesise deadlines and priorities, tile it to any size.

Input format (the shared traces' ``*_jobs.csv``): exactly the columns
``job_id,submit_s,duration_s,gpus,cpus,memory_gib,status,job_class``. No public trace
carries deadlines or priorities, so both are synthesised by documented rules:

* **Deadline** = ``submit_s + slack × duration_s``. ``slack`` is one number (every job), or a
  set of numbers from which each job draws one uniformly with a seeded RNG.
* **Class → priority, spot tolerance, checkpointing** (:data:`CLASS_RULES`): Alibaba QoS
  ``LS`` (latency-sensitive) → high, no spot; ``Guaranteed`` → realtime, no spot; ``BE``
  (best-effort) and ``Burstable`` → batch, spot-ok, checkpointable (best-effort training
  work that tolerates preemption is assumed to checkpoint); GenAI request types
  (``TXT_2_IMG``, ``IMG_2_IMG``, ``INPAINTING``) → realtime, no spot (user-facing
  inference). Any other class → high, no spot (the safe side).
* Missing ``cpus``/``memory_gib`` take the :class:`~prefect_cloudsched.core.needs.TaskNeeds`
  defaults (1 vCPU, 1 GiB); a zero memory request becomes 0.5 GiB and a zero duration 1 s,
  because a placement needs a positive size.
* The status column is kept for reference only: every job is replayed for its recorded
  duration, whatever its final status (a failed pod still held its instance).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np

from prefect_cloudsched.core.needs import Priority, TaskNeeds, normalize_gpu_type
from prefect_cloudsched.errors import InputError, NeedsError

JOB_COLUMNS: tuple[str, ...] = (
    "job_id",
    "submit_s",
    "duration_s",
    "gpus",
    "cpus",
    "memory_gib",
    "status",
    "job_class",
)


@dataclass(frozen=True, slots=True)
class ClassRule:
    """How a trace's workload class maps onto our needs."""

    priority: Priority
    spot_ok: bool
    checkpointable: bool


CLASS_RULES: dict[str, ClassRule] = {
    "LS": ClassRule(Priority.HIGH, False, False),
    "Guaranteed": ClassRule(Priority.REALTIME, False, False),
    "BE": ClassRule(Priority.BATCH, True, True),
    "Burstable": ClassRule(Priority.BATCH, True, True),
    "TXT_2_IMG": ClassRule(Priority.REALTIME, False, False),
    "IMG_2_IMG": ClassRule(Priority.REALTIME, False, False),
    "INPAINTING": ClassRule(Priority.REALTIME, False, False),
}
UNKNOWN_CLASS_RULE = ClassRule(Priority.HIGH, False, False)

MIN_MEMORY_GIB = 0.5
MIN_DURATION_S = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    """One job of a replay, with its synthesised deadline and needs."""

    job_id: str
    submit_s: float
    duration_s: float
    deadline_s: float
    job_class: str
    needs: TaskNeeds

    @property
    def slack_s(self) -> float:
        """Time the job may lose (waiting, change-overs) and still meet its deadline."""
        return self.deadline_s - self.submit_s - self.duration_s


def parse_slack(text: str) -> tuple[float, ...]:
    """``"1.5"`` or ``"1.2,1.5,3"`` → slack factors; each must be ≥ 1."""
    try:
        values = tuple(float(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise InputError(
            f"--deadline-slack {text!r} is not a number or a comma-separated list of numbers"
        ) from None
    if not values or any(not math.isfinite(v) or v < 1 for v in values):
        raise InputError(f"--deadline-slack {text!r}: every factor must be a number >= 1")
    return values


def _number(row: dict[str, str], column: str, line: int, *, default: float | None) -> float:
    text = (row.get(column) or "").strip()
    if not text:
        if default is None:
            raise InputError(f"jobs file line {line}: column {column} is empty; give a number")
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"jobs file line {line}: column {column}={text!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise InputError(f"jobs file line {line}: column {column}={text!r} must be finite")
    if value < 0:
        raise InputError(f"jobs file line {line}: column {column}={text!r} must be >= 0")
    if value > _MAX_VALUE.get(column, math.inf):
        raise InputError(
            f"jobs file line {line}: column {column}={text!r} is too large "
            f"(at most {_MAX_VALUE[column]:,.0f})"
        )
    return value


#: Upper bounds: ten years in seconds (beyond, timedeltas overflow), and counts no offer has.
_MAX_VALUE = {"submit_s": 3.2e8, "duration_s": 3.2e8, "gpus": 1e6, "cpus": 1e7,
              "memory_gib": 1e9}  # fmt: skip


def load_jobs(
    path: str | Path,
    *,
    deadline_slack: Sequence[float] = (1.5,),
    seed: int = 0,
    limit: int | None = None,
    gpu_type: str | None = None,
) -> list[Job]:
    """Read a jobs CSV and synthesise deadlines and needs (rules in the module docstring).

    Args:
        path: A CSV in the shared traces' ``*_jobs.csv`` format.
        deadline_slack: One factor (fixed) or several (drawn per job, seeded).
        seed: Seeds the slack draw.
        limit: Keep only the first ``limit`` jobs in submission order.
        gpu_type: Pin GPU jobs to one GPU model (traces rarely name one).

    Raises:
        InputError: the file is missing or empty, a column is unknown or missing, or a row
            is malformed (the message names the line and column).
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"jobs file {file} does not exist")
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    if gpu_type is not None:
        try:
            gpu_type = normalize_gpu_type(gpu_type)
        except NeedsError as err:
            raise InputError(f"--gpu-type: {err}") from None
    slack = np.asarray(deadline_slack, dtype=float)
    rng = np.random.default_rng(seed)
    rows = _read_rows(file)
    rows.sort(key=lambda r: (r[0], r[3]))
    if limit is not None:
        rows = rows[:limit]
    if len(slack) > 1:
        factors = slack[rng.integers(0, len(slack), len(rows))].tolist()
    else:
        factors = [float(slack[0])] * len(rows)
    return [
        _job(row, line, index, submit, factors[index], gpu_type)
        for index, (submit, line, row, _) in enumerate(rows)
    ]


def _read_rows(file: Path) -> list[tuple[float, int, dict[str, str], int]]:
    """(submit time, line, row, order in the file) of every row, the header checked."""
    rows: list[tuple[float, int, dict[str, str], int]] = []
    with file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = tuple(reader.fieldnames or ())
        if not header:
            raise InputError(
                f"jobs file {file} is empty; expected the header {','.join(JOB_COLUMNS)}"
            )
        unknown = [c for c in header if c not in JOB_COLUMNS]
        if unknown:
            raise InputError(
                f"jobs file {file}: unknown column {unknown[0]!r}; expected {','.join(JOB_COLUMNS)}"
            )
        missing = [c for c in JOB_COLUMNS if c not in header]
        if missing:
            raise InputError(f"jobs file {file}: missing column {missing[0]!r}")
        seen: dict[str, int] = {}  # job id -> its line: per-job results are keyed by it
        for line, row in enumerate(reader, start=2):
            if None in row or any(v is None for v in row.values()):
                raise InputError(
                    f"jobs file line {line}: expected {len(JOB_COLUMNS)} comma-separated fields"
                )
            job_id = (row.get("job_id") or "").strip()
            if job_id and seen.setdefault(job_id, line) != line:
                raise InputError(
                    f"jobs file line {line}: job_id {job_id!r} is already on line "
                    f"{seen[job_id]}; give each job its own id (or leave the cell blank)"
                )
            submit = _number(row, "submit_s", line, default=None)
            rows.append((submit, line, row, len(rows)))
    if not rows:
        raise InputError(f"jobs file {file} has a header but no jobs")
    return rows


def _job(
    row: dict[str, str], line: int, index: int, submit: float, factor: float, gpu_type: str | None
) -> Job:
    """One job: its needs from the row and its class's rule, its deadline from ``factor``."""
    duration = _raw_duration(row, line)
    gpus = _number(row, "gpus", line, default=0.0)
    if gpus != int(gpus):
        raise InputError(f"jobs file line {line}: column gpus={row['gpus']!r} must be whole")
    cpus = _number(row, "cpus", line, default=1.0)
    memory = _number(row, "memory_gib", line, default=1.0)
    job_class = (row.get("job_class") or "").strip()
    rule = CLASS_RULES.get(job_class, UNKNOWN_CLASS_RULE)
    needs = TaskNeeds(
        gpus=int(gpus),
        gpu_type=gpu_type if gpus else None,
        cpus=max(cpus, 0.1),
        memory_gib=max(memory, MIN_MEMORY_GIB),
        est_runtime=timedelta(seconds=duration),
        deadline=timedelta(seconds=factor * duration),
        priority=rule.priority,
        spot_ok=rule.spot_ok,
        checkpointable=rule.checkpointable,
    )
    return Job(
        job_id=(row.get("job_id") or "").strip() or f"job-{index}",
        submit_s=submit,
        duration_s=duration,
        deadline_s=submit + factor * duration,
        job_class=job_class,
        needs=needs,
    )


def _raw_duration(row: dict[str, str], line: int) -> float:
    return max(_number(row, "duration_s", line, default=None), MIN_DURATION_S)


def tile_jobs(jobs: Sequence[Job], count: int) -> list[Job]:
    """Repeat a trace back to back until it holds ``count`` jobs (for throughput runs).

    Copy ``k`` is the original shifted by ``k × span`` (span = last submission + 1 s), so
    arrival rates, sizes and classes are the real trace's, only longer.
    """
    if not jobs:
        raise InputError("cannot tile an empty trace")
    span = max(j.submit_s for j in jobs) + 1.0
    out: list[Job] = []
    copy = 0
    while len(out) < count:
        shift = copy * span
        for job in jobs:
            if len(out) == count:
                break
            out.append(
                replace(
                    job,
                    job_id=f"{job.job_id}#{copy}" if copy else job.job_id,
                    submit_s=job.submit_s + shift,
                    deadline_s=job.deadline_s + shift,
                )
            )
        copy += 1
    return out


__all__ = [
    "CLASS_RULES",
    "JOB_COLUMNS",
    "ClassRule",
    "Job",
    "load_jobs",
    "parse_slack",
    "tile_jobs",
]
