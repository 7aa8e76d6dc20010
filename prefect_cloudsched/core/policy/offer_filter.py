"""Which offers may run a task: its shape, then the policy's limits. One filter for all.

``decide()``, the task packer and the simulator's lower bound must agree on what is feasible,
or the bound could price an offer the policy never takes. So they share these masks (numpy
booleans over the catalog's rows). The policy's masks depend only on the catalog and the
configuration, so they are computed once per pair and reused: ``decide()`` runs per task.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np

from prefect_cloudsched.core.catalog import BAND_ORDER, Catalog, PurchaseOption
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy.config import PolicyConfig
from prefect_cloudsched.errors import NoFeasibleOffer

_CACHE: weakref.WeakKeyDictionary[Catalog, dict[object, np.ndarray]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _cached(catalog: Catalog, key: object, compute: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        hash(key)
    except TypeError:  # a hand-built config with a list or set in it: correct, just not cached
        return compute()
    with _CACHE_LOCK:
        masks = _CACHE.setdefault(catalog, {})
        mask = masks.get(key)
    if mask is None:
        mask = compute()
        mask.setflags(write=False)  # shared between callers: nobody may change it in place
        with _CACHE_LOCK:
            masks[key] = mask
    return mask


def in_set(values: np.ndarray, allowed: object) -> np.ndarray:
    """Rows whose value (an object column of the catalog) is in ``allowed``."""
    return np.isin(values, np.array(sorted(allowed), dtype=object))  # type: ignore[call-overload]


def shape_fits(needs: TaskNeeds, catalog: Catalog) -> np.ndarray:
    """Rows with enough vCPUs, memory and GPUs of the named model; CPU work never gets a GPU."""
    fits = (catalog.a_vcpus >= needs.cpus) & (catalog.a_mem >= needs.memory_gib)
    if needs.gpus:
        fits &= catalog.a_gpus >= needs.gpus
        if needs.gpu_type:
            fits &= catalog.a_gpu_type == catalog.gpu_code(needs.gpu_type)
    else:
        fits &= catalog.a_gpus == 0  # never burn a GPU instance on CPU work
    return fits


def _restrictions(catalog: Catalog, config: PolicyConfig) -> list[tuple[str, np.ndarray]]:
    found: list[tuple[str, np.ndarray]] = []
    if config.allowed_clouds is not None:
        found.append(("cloud", in_set(catalog.a_cloud, config.allowed_clouds)))
    if config.allowed_regions is not None:
        found.append(("region", in_set(catalog.a_region, config.allowed_regions)))
    if config.allowed_gpu_types is not None:
        codes = [catalog.gpu_code(g) for g in config.allowed_gpu_types]
        # a CPU row is never excluded by the GPU models: CPU work is not GPU work
        found.append(("gpu_type", np.isin(catalog.a_gpu_type, codes) | (catalog.a_gpus == 0)))
    if config.max_usd_per_hour is not None:
        found.append(("price", catalog.a_price <= config.max_usd_per_hour))
    return found


def policy_allows(catalog: Catalog, config: PolicyConfig) -> np.ndarray:
    """Rows the policy permits: allowed clouds, regions and GPU models, under the price cap."""

    def compute() -> np.ndarray:
        mask = np.ones(len(catalog), dtype=bool)
        for _, restriction in _restrictions(catalog, config):
            mask &= restriction
        return mask

    return _cached(catalog, ("policy", config), compute)


def excluded_by(catalog: Catalog, config: PolicyConfig, rows: np.ndarray) -> str | None:
    """The first policy limit (``cloud``, ``region``, ``gpu_type``, ``price``) that rules
    out every one of ``rows``; ``None`` when each limit leaves at least one."""
    for label, restriction in _restrictions(catalog, config):
        if not (restriction & rows).any():
            return label
    return None


def fitting(needs: TaskNeeds, catalog: Catalog, config: PolicyConfig) -> np.ndarray:
    """Rows that fit ``needs`` and that the policy permits (before purchase-option rules)."""
    return shape_fits(needs, catalog) & policy_allows(catalog, config)


def within_spot_band(catalog: Catalog, band: str) -> np.ndarray:
    """Rows whose interruption band is ``band`` or better (no band: unknown risk, excluded)."""

    def compute() -> np.ndarray:
        ok = set(BAND_ORDER[: BAND_ORDER.index(band) + 1])
        return np.fromiter((o.interruption_band in ok for o in catalog.offers), bool, len(catalog))

    return _cached(catalog, ("band", band), compute)


def spot_within_band(catalog: Catalog, band: str | None) -> np.ndarray:
    """Rows that are not spot, or spot within the policy's worst band (``None``: any)."""
    is_spot = catalog.rows_with_option(PurchaseOption.SPOT)
    if band is None:
        return np.ones(len(catalog), dtype=bool)
    return ~is_spot | within_spot_band(catalog, band)


def explain_nothing_allowed(
    needs: TaskNeeds, catalog: Catalog, config: PolicyConfig, fits: np.ndarray
) -> NoFeasibleOffer | None:
    """The error when the allowed clouds, regions or GPU models, or the price cap, rule out
    every fitting shape.

    It names the setting to widen (for the price cap: the cheapest fitting offer it
    excluded). ``None`` when the policy leaves something.
    """
    allowed = fits.copy()
    for label, restriction in _restrictions(catalog, config):
        before = allowed.copy()
        allowed &= restriction
        if allowed.any():
            continue
        if label == "price":
            return _over_price(needs, catalog, config, before)
        if label == "gpu_type":
            where = f"with GPU types {sorted(config.allowed_gpu_types or ())}"
        else:
            permitted = config.allowed_clouds if label == "cloud" else config.allowed_regions
            where = f"in the allowed {label}s {sorted(permitted or ())}"
        return NoFeasibleOffer(
            f"no offer fits {needs.summary()} {where}; widen allowed_{label}s in the policy"
        )
    return None


def _over_price(
    needs: TaskNeeds, catalog: Catalog, config: PolicyConfig, before: np.ndarray
) -> NoFeasibleOffer:
    """The price cap excluded every offer the other limits left: name it and the cheapest."""
    rows = np.flatnonzero(before)
    cheapest = catalog.offers[rows[np.argmin(catalog.a_price[rows])]]
    return NoFeasibleOffer(
        f"no offer fits {needs.summary()}: max_usd_per_hour ${config.max_usd_per_hour:g}/h"
        f" excludes every one (the cheapest: {cheapest.describe()}); raise max_usd_per_hour"
        " in the policy"
    )


def price_excluded(catalog: Catalog, config: PolicyConfig, rows: np.ndarray) -> int:
    """How many of ``rows`` the price cap alone excludes (0 without a cap)."""
    if config.max_usd_per_hour is None:
        return 0
    return int((rows & (catalog.a_price > config.max_usd_per_hour)).sum())


def explain_nothing_fits(needs: TaskNeeds, catalog: Catalog) -> NoFeasibleOffer:
    """The error for needs no instance shape can meet: says what the largest one has."""
    if needs.gpus:
        same_type = (
            catalog.a_gpu_type == catalog.gpu_code(needs.gpu_type)
            if needs.gpu_type
            else catalog.a_gpus > 0
        )
        if not same_type.any():
            known = ", ".join(catalog.gpu_types)
            return NoFeasibleOffer(f"no offer has GPU type {needs.gpu_type}; known: {known}")
        most = int(catalog.a_gpus[same_type].max())
        if needs.gpus > most:
            return NoFeasibleOffer(
                f"gpus={needs.gpus} of {needs.gpu_type or 'any type'}: the largest instance"
                f" has {most}; split the task or lower gpus"
            )
        rows = same_type & (catalog.a_gpus >= needs.gpus)
        return NoFeasibleOffer(
            f"no {needs.gpu_type or 'GPU'} instance with >= {needs.gpus} GPUs has "
            f"cpus >= {needs.cpus:g} and memory_gib >= {needs.memory_gib:g} (largest: "
            f"{catalog.a_vcpus[rows].max():g} vCPU, {catalog.a_mem[rows].max():g} GiB)"
        )
    cpu_rows = catalog.a_gpus == 0
    return NoFeasibleOffer(
        f"no CPU instance has cpus >= {needs.cpus:g} and memory_gib >= {needs.memory_gib:g}"
        f" (largest: {catalog.a_vcpus[cpu_rows].max():g} vCPU,"
        f" {catalog.a_mem[cpu_rows].max():g} GiB); lower the needs"
    )


__all__ = [
    "excluded_by",
    "explain_nothing_allowed",
    "explain_nothing_fits",
    "fitting",
    "in_set",
    "policy_allows",
    "price_excluded",
    "shape_fits",
    "spot_within_band",
    "within_spot_band",
]
