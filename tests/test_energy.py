"""The power and carbon model: CCF formula, vendor GPU figures, region intensity."""

from __future__ import annotations

import pytest

from prefect_cloudsched.core.catalog import Offer, PurchaseOption
from prefect_cloudsched.core.energy import (
    GB_PER_GIB,
    EnergyModel,
    cloud_coefficients,
    gpu_watts,
    grid_intensity,
)


def offer(
    cloud: str = "aws", region: str = "us-east-1", gpu: str | None = "T4", n: int = 1
) -> Offer:
    return Offer(cloud, region, None, "x", 8, 32.0, gpu, n if gpu else 0,
                 PurchaseOption.ON_DEMAND, 1.0, 1.0)  # fmt: skip


def test_watts_follow_the_ccf_formula() -> None:
    aws = cloud_coefficients()["aws"]
    low, high = gpu_watts()["T4"]
    model = EnergyModel(cpu_utilisation=0.5, gpu_utilisation=1.0)
    expected = (8 * (aws.cpu_min_w + 0.5 * (aws.cpu_max_w - aws.cpu_min_w)) + high
                + 32 * GB_PER_GIB * aws.memory_w_per_gb)  # fmt: skip
    assert model.watts(offer()) == pytest.approx(expected)
    idle = 8 * aws.cpu_min_w + low + 32 * GB_PER_GIB * aws.memory_w_per_gb
    assert model.watts(offer(), busy=False) == pytest.approx(idle)


def test_energy_and_emissions_scale_with_time_pue_and_grid() -> None:
    model = EnergyModel()
    kwh, co2 = model.energy(offer(), 7200)
    assert kwh == pytest.approx(model.watts(offer()) / 1000 * 2 * cloud_coefficients()["aws"].pue)
    assert co2 == pytest.approx(kwh * grid_intensity()[("aws", "us-east-1")])
    clean = model.energy(offer("gcp", "europe-west1"), 7200)[1]
    dirty = model.energy(offer("gcp", "asia-south1"), 7200)[1]
    assert clean < dirty


def test_newer_gpus_use_datasheet_power() -> None:
    watts = gpu_watts()
    assert watts["H100"][1] == 700 and watts["L4"][1] == 72 and watts["L40S"][1] == 350
    a100_low, a100_high = watts["A100-80GB"]
    assert watts["H100"][0] == pytest.approx(700 * a100_low / a100_high)
    assert EnergyModel().watts(offer(gpu="H100", n=8)) > EnergyModel().watts(offer(gpu="A100", n=8))


def test_unknown_region_gets_the_cloud_mean() -> None:
    table = grid_intensity()
    aws = [v for (c, _), v in table.items() if c == "aws"]
    assert EnergyModel().intensity("aws", "mars-north-1") == pytest.approx(sum(aws) / len(aws))


def test_utilisation_must_be_a_share() -> None:
    with pytest.raises(ValueError):
        EnergyModel(cpu_utilisation=1.5)
