"""Spot availability during a replay: a real trace where we have one, a parametric model elsewhere.

Both sources describe, per spot capacity (``Offer.capacity_key``), one or more *lanes* (the
zones of a region) as sorted, disjoint "up" intervals ``[start, end)`` in seconds of the replay.

* **Trace replay** (:func:`load_spot_trace`): the shared CSVs ``timestamp_utc,<zone>,...``
  where **1 = a spot launch succeeded (available), 0 = it failed**, the convention of every
  file in the shared ``spot/`` folder (the Can't Be Late simulators store the opposite; we
  do not invert). Tick ``i`` holds from its timestamp to the next one. Zones map to regions
  (``us-east-1a`` → ``us-east-1``; ``us-central1-a`` → ``us-central1``), and the offer of that
  region with the trace's instance type replays those zones. Replay time 0 = the first
  timestamp. A launch lands in the first available zone (file order) and is preempted when
  that zone's run of 1s ends. Past its end the trace repeats (only for work pushed past the
  jobs' own span; :meth:`SpotModel.check_covers` rejects a trace shorter than the jobs).
* **Parametric** (every other spot offer): alternating up/down periods, exponentially
  distributed. Mean up time = 1/λ with λ = ``Offer.hazard_per_hour`` (the catalog's AWS
  Spot Advisor band, or the assumed GCP band); mean outage = :data:`MEAN_OUTAGE_S` (1 h, the
  order of the real traces' mean unavailable runs, 0.8–3.6 h). Seeded per capacity key, so a
  replay is deterministic and does not depend on the order of queries.
"""

from __future__ import annotations

import bisect
import csv
import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.errors import InputError

MEAN_OUTAGE_S = 3600.0
INF = math.inf


@dataclass(slots=True)
class Lane:
    """Up intervals of one zone (sorted, disjoint)."""

    starts: list[float]
    ends: list[float]

    def up_at(self, t: float) -> float | None:
        """End of the up interval holding ``t``, or None if the lane is down at ``t``."""
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and t < self.ends[i]:
            return self.ends[i]
        return None

    def next_up(self, t: float) -> float:
        """Earliest time ≥ ``t`` at which the lane is up (inf if never)."""
        if self.up_at(t) is not None:
            return t
        i = bisect.bisect_right(self.starts, t)
        return self.starts[i] if i < len(self.starts) else INF


@dataclass(slots=True)
class SpotTrace:
    """A real availability trace for one instance type: zone → lane, region → zones."""

    instance_type: str
    span_s: float
    regions: dict[str, list[str]]
    lanes: dict[str, Lane]
    path: str = ""


def zone_region(zone: str) -> str:
    """``us-east-1a`` → ``us-east-1``; ``us-central1-a`` → ``us-central1``."""
    if zone[-2] == "-":
        return zone[:-2]
    return zone[:-1]


def _lanes_from_ticks(times: np.ndarray, values: np.ndarray) -> Lane:
    """Up intervals from ticks: tick i covers [times[i], times[i+1])."""
    up = values > 0
    edges = np.diff(np.concatenate(([0], up.astype(np.int8), [0])))
    first = np.flatnonzero(edges == 1)
    last = np.flatnonzero(edges == -1)  # exclusive index
    return Lane(starts=times[first].tolist(), ends=times[last].tolist())


def load_spot_trace(
    path: str | Path, instance_type: str | None = None, *, uniform_ticks: bool = False
) -> SpotTrace:
    """Read ``timestamp_utc,<zone>,...`` (1 = available) into lanes.

    Args:
        path: The CSV.
        instance_type: The instance type probed; by default parsed from a file name of the
            form ``<cloud>_<instance_type>_avail_<date>.csv``.
        uniform_ticks: Tick ``i`` holds from ``i`` × the median gap instead of its own
            timestamp: the time axis of the single-job replay
            (:func:`~prefect_cloudsched.simulate.spot_replay.load_market`), so a stand-in
            cloud following this trace shows the market the replay replays (the shared p3
            trace's real ticks drift up to ~40 s from it within a day, 1.9 h over 45 days).

    Raises:
        InputError: unreadable file, no zone columns, bad timestamps or values.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"spot trace {file} does not exist")
    if instance_type is None:
        parts = file.name.split("_")
        if len(parts) < 3 or parts[2] != "avail":
            raise InputError(
                f"spot trace {file.name}: cannot tell the instance type from the name; "
                "pass --spot-instance TYPE"
            )
        instance_type = parts[1]
    with file.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or header[0] != "timestamp_utc" or len(header) < 2:
            raise InputError(f"spot trace {file}: expected a header 'timestamp_utc,<zone>,...'")
        stamps: list[float] = []
        rows: list[list[int]] = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise InputError(f"spot trace {file} line {line}: expected {len(header)} fields")
            try:
                stamps.append(datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp())
                rows.append([int(v) for v in row[1:]])
            except ValueError:
                raise InputError(
                    f"spot trace {file} line {line}: bad timestamp or a value that is not 0/1"
                ) from None
    if len(stamps) < 2:
        raise InputError(f"spot trace {file} has fewer than two ticks")
    times = np.asarray(stamps) - stamps[0]
    if np.any(np.diff(times) <= 0):
        raise InputError(f"spot trace {file}: timestamps must increase")
    gap = float(np.median(np.diff(times)))
    if uniform_ticks:
        times = np.arange(len(times)) * gap
    span = float(times[-1] + gap)
    tick_times = np.concatenate((times, [span]))
    values = np.asarray(rows)
    lanes: dict[str, Lane] = {}
    regions: dict[str, list[str]] = {}
    for col, zone in enumerate(header[1:]):
        zone = zone.strip()
        lanes[zone] = _lanes_from_ticks(tick_times, values[:, col])
        regions.setdefault(zone_region(zone), []).append(zone)
    return SpotTrace(instance_type, span, regions, lanes, str(file))


@dataclass
class SpotModel:
    """Availability of every spot offer: trace lanes where covered, parametric elsewhere.

    Args:
        trace: A real trace (optional).
        seed: Seeds the parametric lanes.
        horizon_s: Lanes are generated/tiled up to here (the engine extends it on demand).
    """

    trace: SpotTrace | None = None
    seed: int = 0
    horizon_s: float = 86400.0
    mean_outage_s: float = MEAN_OUTAGE_S
    _lanes: dict[str, list[Lane]] = field(default_factory=dict, repr=False)
    _union: dict[str, Lane] = field(default_factory=dict, repr=False)

    def covers(self, offer: Offer) -> bool:
        """Whether this offer is replayed from the real trace."""
        return (
            self.trace is not None
            and offer.instance_type == self.trace.instance_type
            and offer.region in self.trace.regions
        )

    def check_covers(self, end_s: float) -> None:
        """The trace must span the jobs (last submission + duration), else a clear error."""
        if self.trace is not None and self.trace.span_s < end_s:
            raise InputError(
                f"spot trace {self.trace.path or '(given)'} covers {self.trace.span_s / 3600:.1f} h"
                f" but the jobs span {end_s / 3600:.1f} h; pass a longer trace or --limit"
            )

    def lanes(self, offer: Offer) -> list[Lane]:
        """The zones' up intervals for a spot offer (built once per capacity key)."""
        key = offer.capacity_key
        found = self._lanes.get(key)
        if found is None:
            if self.covers(offer):
                assert self.trace is not None
                found = [
                    _tile(self.trace.lanes[z], self.trace.span_s, self.horizon_s)
                    for z in self.trace.regions[offer.region]
                ]
            else:
                found = [self._parametric(offer)]
            self._lanes[key] = found
        return found

    def launch(self, offer: Offer, t: float) -> float | None:
        """Preemption time of an instance launched at ``t``, or None if no zone has capacity."""
        for lane in self.lanes(offer):
            end = lane.up_at(t)
            if end is not None:
                return end
        return None

    def next_up(self, offer: Offer, t: float) -> float:
        """Earliest time ≥ ``t`` at which a launch would succeed."""
        return min(lane.next_up(t) for lane in self.lanes(offer))

    def union(self, offer: Offer) -> Lane:
        """Times when at least one zone is up (what an omniscient scheduler could use)."""
        key = offer.capacity_key
        found = self._union.get(key)
        if found is None:
            found = _merge(self.lanes(offer))
            self._union[key] = found
        return found

    def _parametric(self, offer: Offer) -> Lane:
        rate = offer.hazard_per_hour / 3600
        rng = np.random.default_rng([self.seed, zlib.crc32(offer.capacity_key.encode())])
        starts: list[float] = []
        ends: list[float] = []
        t = 0.0
        while t < self.horizon_s:
            up = rng.exponential(1 / rate) if rate > 0 else INF
            starts.append(t)
            ends.append(t + up)
            t += up + rng.exponential(self.mean_outage_s)
        return Lane(starts, ends)


def _tile(lane: Lane, span: float, horizon: float) -> Lane:
    """Repeat a trace lane every ``span`` seconds until ``horizon``."""
    starts, ends = list(lane.starts), list(lane.ends)
    copy = 1
    while copy * span < horizon:
        shift = copy * span
        for s, e in zip(lane.starts, lane.ends, strict=True):
            if starts and ends[-1] == s + shift:  # joins across the seam
                ends[-1] = e + shift
            else:
                starts.append(s + shift)
                ends.append(e + shift)
        copy += 1
    return Lane(starts, ends)


def _merge(lanes: list[Lane]) -> Lane:
    pairs = sorted((s, e) for lane in lanes for s, e in zip(lane.starts, lane.ends, strict=True))
    starts: list[float] = []
    ends: list[float] = []
    for s, e in pairs:
        if ends and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            starts.append(s)
            ends.append(e)
    return Lane(starts, ends)


__all__ = ["MEAN_OUTAGE_S", "Lane", "SpotModel", "SpotTrace", "load_spot_trace", "zone_region"]
