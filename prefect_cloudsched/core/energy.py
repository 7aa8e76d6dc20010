"""Power and carbon of an instance: the Cloud Carbon Footprint (CCF) estimate, with sources.

Power of one instance at utilisation ``u`` (CCF methodology, cloudcarbonfootprint.org)::

    W = vCPUs × (cpu_min + u_cpu × (cpu_max − cpu_min))
      + GPUs  × (gpu_min + u_gpu × (gpu_max − gpu_min))
      + memory_GB × memory_coefficient

energy = W × hours × PUE of the cloud; emissions = energy × grid intensity of the region.

Coefficients are the CCF numbers as packaged by ``carboniferio/carbonifer`` (Apache-2.0),
copied unchanged into ``prefect_cloudsched/core/data/energy/`` (see ``SOURCE.md`` there). GPUs
newer than that table (H100, H200, L4, L40S) take the vendor's maximum board power from the
NVIDIA datasheet, and an idle power at the idle/max ratio of the nearest listed model
(:data:`VENDOR_GPU_WATTS`). A region missing from the intensity tables gets the mean of its
cloud's listed regions, and :meth:`EnergyModel.intensity` says so via ``intensity_source``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from prefect_cloudsched.core.catalog import Offer, gpu_names

#: 1 GiB = 1.073741824 GB; the CCF memory coefficient is per GB.
GB_PER_GIB = 1.073741824

#: GPUs the CCF table predates: (max board power W, nearest listed model for the idle ratio,
#: source). Max board power is the datasheet's "max thermal design power"; the catalog's H100,
#: H100-MEGA and H200 machines (a3-*, p5) carry the SXM part.
VENDOR_GPU_WATTS: dict[str, tuple[float, str, str]] = {
    "H100": (700.0, "nvidia-a100-80gb", "NVIDIA H100 Tensor Core GPU datasheet: SXM up to 700 W"),
    "H100-MEGA": (
        700.0,
        "nvidia-a100-80gb",
        "NVIDIA H100 Tensor Core GPU datasheet: SXM up to 700 W",
    ),
    "H200": (700.0, "nvidia-a100-80gb", "NVIDIA H200 Tensor Core GPU datasheet: SXM up to 700 W"),
    "L4": (72.0, "nvidia-t4", "NVIDIA L4 Tensor Core GPU datasheet: max power 72 W"),
    "L40S": (350.0, "nvidia-a10g", "NVIDIA L40S datasheet: max power consumption 350 W"),
}


@dataclass(frozen=True, slots=True)
class CloudCoefficients:
    """CCF per-cloud coefficients (watts per vCPU, watts per GB of memory, PUE)."""

    cpu_min_w: float
    cpu_max_w: float
    memory_w_per_gb: float
    pue: float


def _data(name: str):
    return resources.files("prefect_cloudsched.core") / "data" / "energy" / name


@cache
def cloud_coefficients() -> dict[str, CloudCoefficients]:
    """CCF coefficients per cloud (``aws``, ``gcp``, ``azure``)."""
    raw = json.loads(_data("energy_coefficients.json").read_text())
    return {
        cloud.lower(): CloudCoefficients(
            cpu_min_w=float(v["cpu_min_wh"]),
            cpu_max_w=float(v["cpu_max_wh"]),
            memory_w_per_gb=float(v["memory_wh_gb"]),
            pue=float(v["pue_average"]),
        )
        for cloud, v in raw.items()
    }


@cache
def gpu_watts() -> dict[str, tuple[float, float]]:
    """(idle W, max W) per GPU model, in our GPU names; vendor figures fill the CCF gaps."""
    with _data("gpu_watt.csv").open(newline="") as handle:
        table = {
            r["name"]: (float(r["min watts"]), float(r["max watts"]))
            for r in csv.DictReader(handle)
        }
    watts = {ours: table[theirs] for ours, theirs in gpu_names("ccf_gpu_name").items()}
    for ours, (max_w, nearest, _source) in VENDOR_GPU_WATTS.items():
        low, high = table[nearest]
        watts[ours] = (max_w * low / high, max_w)
    return watts


@cache
def grid_intensity() -> dict[tuple[str, str], float]:
    """gCO2e per kWh per (cloud, region)."""
    found: dict[tuple[str, str], float] = {}
    for cloud in ("aws", "gcp"):
        with _data(f"{cloud}_co2_region.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                found[(cloud, row["Region"].strip())] = float(
                    row["Grid carbon intensity (gCO2eq / kWh)"]
                )
    return found


class EnergyModel:
    """Watts, kWh and gCO2e of offers; cached per offer key (the simulator asks per segment).

    Args:
        cpu_utilisation: vCPU load while a job runs (CCF's documented default average: 0.5).
        gpu_utilisation: GPU load while a job runs (ML jobs keep GPUs busy: 1.0).
    """

    def __init__(self, cpu_utilisation: float = 0.5, gpu_utilisation: float = 1.0) -> None:
        if not (0 <= cpu_utilisation <= 1 and 0 <= gpu_utilisation <= 1):
            raise ValueError("utilisations must be within [0, 1]")
        self.cpu_utilisation = cpu_utilisation
        self.gpu_utilisation = gpu_utilisation
        self._busy: dict[str, tuple[float, float]] = {}
        self._idle: dict[str, tuple[float, float]] = {}

    def watts(self, offer: Offer, *, busy: bool = True) -> float:
        """Electrical power of one instance (before PUE), busy or idle."""
        coeff = cloud_coefficients()[offer.cloud]
        u_cpu = self.cpu_utilisation if busy else 0.0
        u_gpu = self.gpu_utilisation if busy else 0.0
        power = offer.vcpus * (coeff.cpu_min_w + u_cpu * (coeff.cpu_max_w - coeff.cpu_min_w))
        if offer.gpu_count and offer.gpu_type:
            low, high = gpu_watts()[offer.gpu_type]
            power += offer.gpu_count * (low + u_gpu * (high - low))
        return power + offer.memory_gib * GB_PER_GIB * coeff.memory_w_per_gb

    def intensity(self, cloud: str, region: str) -> float:
        """gCO2e/kWh of a region; a region the tables lack gets its cloud's mean."""
        table = grid_intensity()
        value = table.get((cloud, region))
        if value is None:
            same = [v for (c, _), v in table.items() if c == cloud]
            value = sum(same) / len(same)
        return value

    def rates(self, offer: Offer, *, busy: bool = True) -> tuple[float, float]:
        """(kWh per hour incl. PUE, gCO2e per hour) of one instance."""
        cache_ = self._busy if busy else self._idle
        found = cache_.get(offer.capacity_key)
        if found is None:
            kwh = self.watts(offer, busy=busy) / 1000 * cloud_coefficients()[offer.cloud].pue
            found = (kwh, kwh * self.intensity(offer.cloud, offer.region))
            cache_[offer.capacity_key] = found
        return found

    def energy(self, offer: Offer, seconds: float, *, busy: bool = True) -> tuple[float, float]:
        """(kWh, gCO2e) of running ``offer`` for ``seconds``."""
        kwh_h, co2_h = self.rates(offer, busy=busy)
        hours = seconds / 3600
        return kwh_h * hours, co2_h * hours


__all__ = [
    "VENDOR_GPU_WATTS",
    "CloudCoefficients",
    "EnergyModel",
    "cloud_coefficients",
    "gpu_watts",
    "grid_intensity",
]
