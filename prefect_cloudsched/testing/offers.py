"""Offers for tests: a hand-made one with only the fields a test is about, or a shipped one."""

from __future__ import annotations

from prefect_cloudsched.core.catalog import Offer, PurchaseOption, load_catalog


def make_offer(
    instance_type: str, option: PurchaseOption, price: float, od: float | None = None, *,
    gpus: int = 1, gpu: str | None = "A10G", cloud: str = "aws", region: str = "us-east-1",
    band: str | None = "5-10%", vcpus: int | None = None, mem: float | None = None,
) -> Offer:  # fmt: skip
    """An offer priced ``price`` USD/h.

    Args:
        od: Its on-demand price (default ``price``).
        gpus, gpu: GPU count and model (no model when ``gpus`` is 0).
        band: Interruption band, kept on spot offers only.
        vcpus, mem: vCPUs and GiB (default 8 and 32 per GPU, at least one GPU's worth).
    """
    per_gpu = max(gpus, 1)
    return Offer(
        cloud, region, None, instance_type, 8 * per_gpu if vcpus is None else vcpus,
        32.0 * per_gpu if mem is None else mem, gpu if gpus else None, gpus, option, price,
        price if od is None else od, band if option is PurchaseOption.SPOT else None,
    )  # fmt: skip


def shipped_offer(
    cloud: str, instance_type: str, option: str = "spot", location: str | None = None
) -> Offer:
    """The shipped catalog's offer of ``instance_type`` in ``location`` (a region or a zone)."""
    return next(
        o
        for o in load_catalog().offers
        if o.cloud == cloud
        and o.instance_type == instance_type
        and o.option is PurchaseOption(option)
        and location in (None, o.region, o.zone)
    )
