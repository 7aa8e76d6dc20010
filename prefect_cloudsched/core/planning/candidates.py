"""Candidate offers for the capacity plan: filter, price, prune — before any model is built.

720 hours × the whole catalog would be millions of integer variables; almost all of them can
never be in an optimal plan. Offers are kept in three passes (SkyPilot's optimizer does the
same before it builds its program):

1. vectorised filters on the catalog arrays: resource class, purchase option, cloud, region;
2. exact dominance: among offers with the same units per class, purchase option, spot risk
   weight and quota scopes only the cheapest can be optimal, wherever it is;
3. the cheapest ``max_candidates`` per class, cloud, region and option by price per unit,
   plus the cheapest offer of every size (so small demand is not forced onto big machines).

Prices here are *hourly expected* costs: spot carries its interruption overhead
(``spot_expected_cost`` over one hour) and, with a carbon price, every offer its emissions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefect_cloudsched.core.accounting import spot_expected_cost
from prefect_cloudsched.core.catalog import BAND_MONTHLY_FRACTION, Catalog, Offer, PurchaseOption
from prefect_cloudsched.errors import InputError

VCPU = "vcpu"
MEMORY = "memory_gib"
GPU_PREFIX = "gpu:"
NO_SPOT = frozenset({PurchaseOption.ON_DEMAND, PurchaseOption.RESERVED})
ON_DEMAND_ONLY = frozenset({PurchaseOption.ON_DEMAND})
#: Risk of a spot band relative to the 5–10 % band; a worse band uses the spot cap faster.
_REFERENCE_BAND_FRACTION = BAND_MONTHLY_FRACTION["5-10%"]


def risk_weight(offer: Offer) -> float:
    """How much of the spot cap one unit of this spot offer uses (1 = safest bands)."""
    if offer.option is not PurchaseOption.SPOT or not offer.interruption_band:
        return 1.0
    return max(1.0, BAND_MONTHLY_FRACTION[offer.interruption_band] / _REFERENCE_BAND_FRACTION)


def instance_family(offer: Offer) -> str:
    """``g5`` for ``g5.xlarge`` (AWS), ``a2`` for ``a2-highgpu-1g`` (GCP): the quota grain."""
    separator = "." if offer.cloud == "aws" else "-"
    return offer.instance_type.split(separator, 1)[0]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One offer the model may buy, with its per-class units and hourly prices."""

    offer: Offer
    units: tuple[tuple[str, float], ...]
    hourly_cost: float  # what the objective minimises: expected USD/h + carbon price
    money_per_hour: float  # expected USD/h alone (spot with its interruption overhead)
    weight: float
    scopes: tuple[tuple[str, float], ...]
    tonnes_per_hour: float


@dataclass(frozen=True, slots=True)
class Quota:
    """A concurrent limit on vCPUs (region or family) or GPUs of one model in a region."""

    key: str
    cloud: str
    region: str
    family: str | None
    gpu_type: str | None
    limit: float

    def usage(self, offer: Offer) -> float:
        """vCPUs or GPUs one instance of ``offer`` uses of this quota (0 if outside it)."""
        if offer.cloud != self.cloud or offer.region != self.region:
            return 0.0
        if self.gpu_type is not None:
            return float(offer.gpu_count) if offer.gpu_type == self.gpu_type else 0.0
        if self.family is not None and instance_family(offer) != self.family:
            return 0.0
        return float(offer.vcpus)

    def describe(self) -> str:
        """``quota aws/us-east-1 (64 vCPUs)``."""
        unit = f"{self.gpu_type} GPUs" if self.gpu_type else "vCPUs"
        return f"quota {self.key} ({self.limit:g} {unit})"


def parse_quotas(quotas: Mapping[str, float] | None, catalog: Catalog) -> list[Quota]:
    """Quota keys: ``cloud/region`` or ``cloud/region/family`` (vCPUs), ``.../gpu:MODEL``."""
    parsed: list[Quota] = []
    for key, limit in (quotas or {}).items():
        parts = key.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InputError(
                f"quota {key!r}: write cloud/region, cloud/region/family or cloud/region/gpu:MODEL"
            )
        cloud, region = parts[0].lower(), parts[1]
        if catalog.cloud_of_region(region) != cloud:
            raise InputError(f"quota {key!r}: {cloud}/{region} is not a region in the catalog")
        if not isinstance(limit, int | float) or not math.isfinite(limit) or limit < 0:
            raise InputError(f"quota {key!r} must be a number >= 0, got {limit!r}")
        family = gpu = None
        if len(parts) == 3:
            if parts[2].startswith(GPU_PREFIX):
                gpu = next(
                    (g for g in catalog.gpu_types if g.lower() == parts[2][4:].lower()), None
                )
                if gpu is None:
                    raise InputError(
                        f"quota {key!r}: unknown GPU type; known: {', '.join(catalog.gpu_types)}"
                    )
            else:
                family = parts[2]
        parsed.append(Quota(key, cloud, region, family, gpu, float(limit)))
    return parsed


def units_of(offer: Offer, classes: Sequence[str]) -> tuple[tuple[str, float], ...]:
    units: list[tuple[str, float]] = []
    for k in classes:
        if k.startswith(GPU_PREFIX):
            if offer.gpu_type == k[len(GPU_PREFIX) :] and offer.gpu_count:
                units.append((k, float(offer.gpu_count)))
        elif offer.gpu_count == 0:
            units.append((k, float(offer.vcpus if k == VCPU else offer.memory_gib)))
    return tuple(units)


def select_candidates(
    classes: Sequence[str],
    catalog: Catalog,
    *,
    options: frozenset[PurchaseOption],
    clouds: Sequence[str] | None,
    regions: Sequence[str] | None,
    quotas: Sequence[Quota],
    max_candidates: int,
    carbon_usd_per_tonne: float | None,
    carbon_intensity: Mapping[str, float] | None,
    power_kw: Callable[[Offer], float] | None,
) -> list[Candidate]:
    wanted = np.zeros(len(catalog), dtype=bool)
    for k in classes:
        if k.startswith(GPU_PREFIX):
            wanted |= catalog.a_gpu_type == catalog.gpu_code(k[len(GPU_PREFIX) :])
        else:
            wanted |= catalog.a_gpus == 0
    wanted &= np.isin(catalog.a_option, [catalog.option_code(o) for o in options])
    if clouds:
        wanted &= np.isin(catalog.a_cloud, np.array([c.lower() for c in clouds], dtype=object))
    if regions:
        allowed = np.array(list(regions), dtype=object)
        zones = np.array([o.zone or "" for o in catalog.offers], dtype=object)
        wanted &= np.isin(catalog.a_region, allowed) | np.isin(zones, allowed)
    spot_code = catalog.option_code(PurchaseOption.SPOT)
    spot_cost, _ = spot_expected_cost(
        catalog.a_price, catalog.a_od_price, catalog.a_hazard, 1.0, False
    )
    hourly = np.where(catalog.a_option == spot_code, spot_cost, catalog.a_price)
    emissions = carbon_rate(carbon_intensity, power_kw) if carbon_usd_per_tonne else None

    best: dict[tuple[Any, ...], Candidate] = {}
    for i in np.flatnonzero(wanted):
        offer = catalog.offers[i]
        units = units_of(offer, classes)
        if not units:
            continue
        tonnes = 0.0
        money = cost = float(hourly[i])
        if emissions is not None and carbon_usd_per_tonne:
            tonnes = emissions(offer)
            cost += carbon_usd_per_tonne * tonnes
        scopes = tuple((q.key, u) for q in quotas if (u := q.usage(offer)) > 0)
        candidate = Candidate(offer, units, cost, money, risk_weight(offer), scopes, tonnes)
        # Exact dominance: same units, option, risk and quota scopes -> only the cheapest
        # can be in an optimal plan, wherever it is.
        signature = (units, offer.option, candidate.weight, scopes)
        kept = best.get(signature)
        if kept is None or (cost, offer.key) < (kept.hourly_cost, kept.offer.key):
            best[signature] = candidate

    groups: dict[tuple[str, str, str, PurchaseOption], list[Candidate]] = defaultdict(list)
    for c in best.values():
        for k, _ in c.units:
            groups[(k, c.offer.cloud, c.offer.region, c.offer.option)].append(c)
    chosen: dict[str, Candidate] = {}
    for (k, *_), members in groups.items():
        members.sort(key=lambda c: (c.hourly_cost / dict(c.units)[k], c.offer.key))
        for c in members[:max_candidates]:
            chosen[c.offer.key] = c
    # Keep the cheapest offer of every size per class and option, so the plan can match
    # small demand without buying a whole 8-GPU machine.
    smallest: dict[tuple[str, PurchaseOption, float], Candidate] = {}
    for c in best.values():
        for k, u in c.units:
            slot = (k, c.offer.option, u)
            if slot not in smallest or c.hourly_cost < smallest[slot].hourly_cost:
                smallest[slot] = c
    for c in smallest.values():
        chosen[c.offer.key] = c
    return sorted(chosen.values(), key=lambda c: c.offer.key)


def carbon_rate(
    carbon_intensity: Mapping[str, float] | None, power_kw: Callable[[Offer], float] | None
) -> Callable[[Offer], float]:
    """tCO2e per instance-hour of an offer.

    Either input may be given (region → gCO2e/kWh; offer → kW drawn, PUE included); what is
    not given comes from :class:`prefect_cloudsched.core.energy.EnergyModel` (Cloud Carbon
    Footprint coefficients and grid intensities, sources in ``data/energy/SOURCE.md``).
    """
    model: Any = None
    if carbon_intensity is None or power_kw is None:
        from prefect_cloudsched.core.energy import EnergyModel

        model = EnergyModel()

    def tonnes(offer: Offer) -> float:
        kw = power_kw(offer) if power_kw is not None else model.rates(offer)[0]
        if carbon_intensity is None:
            grams = model.intensity(offer.cloud, offer.region)
        elif offer.region in carbon_intensity:
            grams = carbon_intensity[offer.region]
        else:
            raise InputError(
                f"no carbon intensity for region {offer.region}; add it to carbon_intensity"
            )
        return kw * grams / 1e6

    return tonnes


__all__ = [
    "GPU_PREFIX",
    "MEMORY",
    "NO_SPOT",
    "ON_DEMAND_ONLY",
    "VCPU",
    "Candidate",
    "Quota",
    "carbon_rate",
    "instance_family",
    "parse_quotas",
    "risk_weight",
    "select_candidates",
    "units_of",
]
