"""Buy the reservations a stored plan recommends (``prefect-cloudsched plan apply``).

A reservation is a year of spend, so this module is deliberately slow to act: it turns a
plan into :class:`PurchaseItem` rows a person can read, quotes each one against the cloud,
refuses a quote dearer than the plan assumed, and buys only when the caller passes
``confirm=True`` (the CLI's ``--yes``). Nothing here runs on import or on a dry run: cloud
clients are created only to quote or buy.

* **AWS** — ``describe_reserved_instances_offerings`` (filters ``instance-type`` and
  ``product-description``; standard class, 1 year, the payment option the catalog priced),
  then ``purchase_reserved_instances_offering`` with the cheapest matching offering.
* **GCP** — ``RegionCommitmentsClient.insert``: a 12-month resource commitment (vCPUs,
  memory, GPUs) of the machine family's type with an attached specific reservation in the
  plan's zone, so the capacity is really held (GCP requires one for GPU commitments).

Owned reservations then reach the task runner as ``reserved={capacity_key: count}`` (or the
runner reads the latest *bought* plan from the ledger; a draft changes no placement).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect_cloudsched.core.catalog import GCE_ACCELERATOR_TYPES as GCP_ACCELERATORS
from prefect_cloudsched.core.catalog import Catalog
from prefect_cloudsched.errors import InputError, ProvisioningError

HOURS_PER_YEAR = 8760
ONE_YEAR_S = 31_536_000
#: A quote may exceed the plan's amortised rate by this much before we refuse to buy.
PRICE_TOLERANCE = 0.10

#: GCP machine family → commitment type (Compute Engine ``Commitment.Type``).
GCP_COMMITMENT_TYPES: dict[str, str] = {
    "a2": "ACCELERATOR_OPTIMIZED",
    "a3": "ACCELERATOR_OPTIMIZED_A3",
    "c2": "COMPUTE_OPTIMIZED",
    "e2": "GENERAL_PURPOSE_E2",
    "g2": "GRAPHICS_OPTIMIZED",
    "n1": "GENERAL_PURPOSE",
    "n2": "GENERAL_PURPOSE_N2",
}


@dataclass(frozen=True, slots=True)
class PurchaseItem:
    """One reservation to buy: ``count`` instances of one shape in one place for a year.

    Attributes:
        cloud: ``aws`` or ``gcp``.
        region: Region.
        zone: Zone (GCP; ``None`` for AWS regional reservations).
        instance_type: Instance or machine type.
        count: Instances.
        usd_per_hour: Amortised price of one instance the plan assumed.
        capacity_key: What the task runner counts the reservation under.
        vcpus: vCPUs of one instance.
        memory_gib: Memory of one instance.
        gpu_type: GPU model, if any.
        gpu_count: GPUs per instance.
    """

    cloud: str
    region: str
    zone: str | None
    instance_type: str
    count: int
    usd_per_hour: float
    capacity_key: str
    vcpus: int
    memory_gib: float
    gpu_type: str | None
    gpu_count: int

    @property
    def hourly_usd(self) -> float:
        """What all ``count`` instances cost per hour, amortised."""
        return self.usd_per_hour * self.count

    @property
    def term_usd(self) -> float:
        """What the one-year commitment costs in total."""
        return self.hourly_usd * HOURS_PER_YEAR

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "cloud": self.cloud,
            "region": self.region,
            "zone": self.zone,
            "instance_type": self.instance_type,
            "count": self.count,
            "gpu_type": self.gpu_type,
            "gpu_count": self.gpu_count,
            "capacity_key": self.capacity_key,
            "usd_per_hour": round(self.usd_per_hour, 6),
            "hourly_usd": round(self.hourly_usd, 6),
            "term_usd": round(self.term_usd, 2),
        }


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the cloud answered for one purchase."""

    item: PurchaseItem
    reference: str
    detail: str


def purchase_items(plan: Mapping[str, Any], catalog: Catalog) -> list[PurchaseItem]:
    """The reservations of a stored plan (``Ledger.latest_plan()`` or ``plan --json``).

    Raises:
        InputError: the plan has no reservations list, or names an offer the catalog lacks.
    """
    rows = plan.get("reserved")
    if not isinstance(rows, list):
        raise InputError("the plan has no 'reserved' list; make one with prefect-cloudsched plan")
    items: list[PurchaseItem] = []
    for row in rows:
        try:
            offer_key, count = str(row["offer_key"]), int(row["count"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"plan reservation {row!r} needs offer_key and count") from err
        if count <= 0:
            continue
        try:
            offer = catalog.find(offer_key)
        except KeyError:
            raise InputError(
                f"plan reservation {offer_key!r} is not in the price catalog; re-plan"
            ) from None
        items.append(
            PurchaseItem(
                cloud=offer.cloud,
                region=offer.region,
                zone=offer.zone,
                instance_type=offer.instance_type,
                count=count,
                usd_per_hour=float(row.get("usd_per_hour", offer.usd_per_hour)),
                capacity_key=str(row.get("capacity_key", offer.capacity_key)),
                vcpus=offer.vcpus,
                memory_gib=offer.memory_gib,
                gpu_type=row.get("gpu_type", offer.gpu_type),
                gpu_count=int(row.get("gpu_count", offer.gpu_count)),
            )
        )
    return items


# --------------------------------------------------------------------------- AWS
@dataclass(frozen=True, slots=True)
class AwsQuote:
    """The offering AWS would sell for one item."""

    offering_id: str
    fixed_price: float
    hourly_price: float
    offering_type: str

    @property
    def effective_hourly(self) -> float:
        """Upfront spread over the year plus the hourly charge, per instance."""
        return self.fixed_price / HOURS_PER_YEAR + self.hourly_price


class AwsReservedInstances:
    """Quote and buy EC2 Reserved Instances.

    Args:
        client_factory: ``region -> boto3 EC2 client`` (default ``boto3.client("ec2", ...)``,
            credentials from the usual AWS chain).
        offering_type: ``No Upfront`` (what the catalog's reserved rate is), ``Partial
            Upfront`` or ``All Upfront``.
        product_description: Platform of the instances.
    """

    def __init__(
        self,
        client_factory: Callable[[str], Any] | None = None,
        *,
        offering_type: str = "No Upfront",
        product_description: str = "Linux/UNIX",
    ) -> None:
        self._factory = client_factory or _boto3_client
        self.offering_type = offering_type
        self.product_description = product_description

    def quote(self, item: PurchaseItem) -> AwsQuote:
        """The cheapest standard 1-year offering for the item's type and scope.

        Raises:
            ProvisioningError: AWS sells no matching offering.
        """
        client = self._factory(item.region)
        response = client.describe_reserved_instances_offerings(
            Filters=[
                {"Name": "instance-type", "Values": [item.instance_type]},
                {"Name": "product-description", "Values": [self.product_description]},
            ],
            OfferingClass="standard",
            OfferingType=self.offering_type,
            InstanceTenancy="default",
            IncludeMarketplace=False,
            MinDuration=ONE_YEAR_S,
            MaxDuration=ONE_YEAR_S,
        )
        quotes = []
        for o in response.get("ReservedInstancesOfferings", []):
            # Filter again client-side: not every endpoint (nor moto) honours all parameters.
            if o.get("InstanceType", item.instance_type) != item.instance_type:
                continue
            if o.get("OfferingType", self.offering_type) != self.offering_type:
                continue
            if int(o.get("Duration", ONE_YEAR_S)) != ONE_YEAR_S:
                continue
            scope = o.get("Scope") or (
                "Availability Zone" if o.get("AvailabilityZone") else "Region"
            )
            if scope != "Region":  # the plan's AWS capacity is regional, any zone
                continue
            recurring = sum(
                float(c.get("Amount", 0))
                for c in o.get("RecurringCharges", [])
                if c.get("Frequency") == "Hourly"
            )
            quotes.append(
                AwsQuote(
                    offering_id=o["ReservedInstancesOfferingId"],
                    fixed_price=float(o.get("FixedPrice", 0.0)),
                    hourly_price=float(o.get("UsagePrice", 0.0)) + recurring,
                    offering_type=o.get("OfferingType", self.offering_type),
                )
            )
        if not quotes:
            raise ProvisioningError(
                f"AWS offers no {self.offering_type} 1-year reservation of {item.instance_type}"
                f" in {item.region}; pick another offering type or skip this item"
            )
        return min(quotes, key=lambda q: (q.effective_hourly, q.offering_id))

    def purchase(self, item: PurchaseItem) -> Receipt:
        """Quote, check the price against the plan, then buy.

        Raises:
            ProvisioningError: the quote is dearer than the plan assumed, or AWS refused.
        """
        quote = self.quote(item)
        _check_price(item, quote.effective_hourly)
        client = self._factory(item.region)
        answer = client.purchase_reserved_instances_offering(
            ReservedInstancesOfferingId=quote.offering_id, InstanceCount=item.count
        )
        return Receipt(
            item,
            answer["ReservedInstancesId"],
            f"{quote.offering_type}, ${quote.fixed_price:,.2f} upfront + "
            f"${quote.hourly_price:.4f}/h per instance",
        )


def _boto3_client(region: str) -> Any:
    import boto3

    return boto3.client("ec2", region_name=region)


# --------------------------------------------------------------------------- GCP
class GcpCommitments:
    """Buy 12-month GCP resource commitments with an attached specific reservation.

    Args:
        project: The Google Cloud project to commit in.
        client: A ``compute_v1.RegionCommitmentsClient`` (default: a new one, credentials
            from Application Default Credentials).
    """

    def __init__(self, project: str, client: Any = None) -> None:
        if not project:
            raise InputError("a GCP purchase needs a project; pass --gcp-project")
        self.project = project
        self._client = client

    def request(self, item: PurchaseItem) -> Any:
        """The ``InsertRegionCommitmentRequest`` for one item (what :meth:`purchase` sends)."""
        from google.cloud import compute_v1

        family = item.instance_type.split("-", 1)[0]
        commitment_type = GCP_COMMITMENT_TYPES.get(family)
        if commitment_type is None:
            raise InputError(
                f"no GCP commitment type known for machine family {family!r}; "
                f"known: {', '.join(sorted(GCP_COMMITMENT_TYPES))}"
            )
        resources = [
            compute_v1.ResourceCommitment(type_="VCPU", amount=item.vcpus * item.count),
            compute_v1.ResourceCommitment(
                type_="MEMORY", amount=round(item.memory_gib * 1024) * item.count
            ),
        ]
        accelerators = []
        if item.gpu_count and item.gpu_type:
            accelerator = GCP_ACCELERATORS.get(item.gpu_type)
            if accelerator is None:
                raise InputError(f"no GCP accelerator name known for GPU {item.gpu_type!r}")
            resources.append(
                compute_v1.ResourceCommitment(
                    type_="ACCELERATOR",
                    accelerator_type=accelerator,
                    amount=item.gpu_count * item.count,
                )
            )
            if family == "n1":  # N1 GPUs are attached, not part of the machine type
                accelerators = [
                    compute_v1.AcceleratorConfig(
                        accelerator_type=accelerator, accelerator_count=item.gpu_count
                    )
                ]
        # Commitment names are unique per project and permanent: add a stamp of this purchase.
        stamp = hashlib.sha256(
            f"{item.capacity_key}:{datetime.now(UTC).isoformat()}".encode()
        ).hexdigest()[:8]
        name = _gcp_name(f"cloudsched-{item.instance_type}-{stamp}")
        reservation = compute_v1.Reservation(
            name=name,
            zone=item.zone,
            specific_reservation=compute_v1.AllocationSpecificSKUReservation(
                count=item.count,
                instance_properties=compute_v1.AllocationSpecificSKUAllocationReservedInstanceProperties(
                    machine_type=item.instance_type, guest_accelerators=accelerators
                ),
            ),
        )
        commitment = compute_v1.Commitment(
            name=name,
            plan="TWELVE_MONTH",
            type_=commitment_type,
            resources=resources,
            reservations=[reservation] if item.zone else [],
            description=f"prefect-cloudsched plan: {item.count} x {item.capacity_key}",
        )
        return compute_v1.InsertRegionCommitmentRequest(
            project=self.project, region=item.region, commitment_resource=commitment
        )

    def purchase(self, item: PurchaseItem) -> Receipt:
        """Insert the commitment and wait for the operation.

        Raises:
            ProvisioningError: GCP refused the commitment.
        """
        from google.api_core import exceptions as gexc

        request = self.request(item)
        client = self._client
        if client is None:
            from google.cloud import compute_v1

            client = self._client = compute_v1.RegionCommitmentsClient()
        try:
            operation = client.insert(request=request)
            operation.result(timeout=300)
        except gexc.GoogleAPICallError as err:
            raise ProvisioningError(
                f"GCP refused the commitment for {item.capacity_key}: {err.message}"
            ) from err
        return Receipt(item, request.commitment_resource.name, "12-month commitment")


def _gcp_name(text: str) -> str:
    """A valid GCP resource name: lowercase letters, digits, dashes, ≤ 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name[:63].rstrip("-")


def _check_price(item: PurchaseItem, quoted_hourly: float) -> None:
    if quoted_hourly > item.usd_per_hour * (1 + PRICE_TOLERANCE):
        raise ProvisioningError(
            f"{item.capacity_key}: the cloud quotes ${quoted_hourly:.4f}/h, more than "
            f"{PRICE_TOLERANCE:.0%} over the plan's ${item.usd_per_hour:.4f}/h; "
            "re-plan with current prices before buying"
        )


def buy(
    items: Sequence[PurchaseItem],
    *,
    confirm: bool,
    aws: AwsReservedInstances | None = None,
    gcp: GcpCommitments | None = None,
) -> list[Receipt]:
    """Buy every item; without ``confirm`` nothing is bought (a dry run returns ``[]``).

    Raises:
        InputError: an item's cloud has no purchaser configured.
        ProvisioningError: a quote or purchase failed (items bought before it are kept in
            the exception's notes, so the caller can report them).
    """
    if not confirm:
        return []
    receipts: list[Receipt] = []
    for item in items:
        purchaser = {"aws": aws, "gcp": gcp}.get(item.cloud)
        if purchaser is None:
            raise InputError(f"no purchaser for cloud {item.cloud!r} (GCP needs --gcp-project)")
        try:
            receipts.append(purchaser.purchase(item))
        except ProvisioningError as err:
            for done in receipts:
                err.add_note(f"already bought: {done.item.capacity_key} -> {done.reference}")
            raise
    return receipts


__all__ = [
    "GCP_ACCELERATORS",
    "GCP_COMMITMENT_TYPES",
    "AwsQuote",
    "AwsReservedInstances",
    "GcpCommitments",
    "PurchaseItem",
    "Receipt",
    "buy",
    "purchase_items",
]
