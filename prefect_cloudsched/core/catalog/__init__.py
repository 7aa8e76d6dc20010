"""Price catalog: the offers a task can be placed on.

An *offer* is where (cloud, region, zone) × what (instance type, vCPUs, memory, GPUs) ×
purchase option (on-demand, spot, reserved) × price. The shipped snapshot
(``catalog/data/offers.csv``, provenance in ``catalog/data/SOURCE.md``) is built from public
price data by ``scripts/build_catalog.py``. Pure module: no Prefect, no cloud SDK.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

import numpy as np

from prefect_cloudsched.errors import InputError, read_errors


class PurchaseOption(StrEnum):
    """How capacity is bought."""

    ON_DEMAND = "on-demand"
    SPOT = "spot"
    RESERVED = "reserved"


#: AWS Spot Advisor bands ("frequency of interruption over the trailing month") and the
#: midpoint fraction of instances interrupted per month we assume for each.
BAND_MONTHLY_FRACTION: dict[str, float] = {
    "<5%": 0.025,
    "5-10%": 0.075,
    "10-15%": 0.125,
    "15-20%": 0.175,
    ">20%": 0.25,
}
BAND_ORDER: tuple[str, ...] = tuple(BAND_MONTHLY_FRACTION)
#: GCP publishes no interruption frequency; we assume the middle band and say so.
GCP_ASSUMED_BAND = "10-15%"
HOURS_PER_MONTH = 730.0


def band_hazard_per_hour(band: str | None) -> float:
    """Constant hourly interruption hazard λ with P(interrupted within a month) = band midpoint."""
    if not band:
        return 0.0
    return -math.log1p(-BAND_MONTHLY_FRACTION[band]) / HOURS_PER_MONTH


@dataclass(frozen=True, slots=True)
class Offer:
    """One purchasable way to run on one instance type in one place."""

    cloud: str
    region: str
    zone: str | None
    instance_type: str
    vcpus: int
    memory_gib: float
    gpu_type: str | None
    gpu_count: int
    option: PurchaseOption
    usd_per_hour: float
    ondemand_usd_per_hour: float
    interruption_band: str | None = None
    source: str = ""

    @property
    def location(self) -> str:
        """Zone when known, region otherwise."""
        return self.zone or self.region

    @property
    def shape(self) -> str:
        """The instance type, plus the attached GPUs where the type alone does not fix them.

        A GCP N1 machine type takes 0 to 8 GPUs of several models, so ``n1-highmem-16`` names
        many different hosts; ``n1-highmem-16+2xP4`` names one. Other types carry fixed GPUs.
        """
        if self.cloud == "gcp" and self.instance_type.startswith("n1-") and self.gpu_count:
            return f"{self.instance_type}+{self.gpu_count}x{self.gpu_type}"
        return self.instance_type

    @property
    def key(self) -> str:
        """Stable unique identifier: ``cloud/location/shape/option``."""
        return f"{self.cloud}/{self.location}/{self.shape}/{self.option.value}"

    @property
    def capacity_key(self) -> str:
        """Identifies the instance shape and place, independent of purchase option."""
        return f"{self.cloud}/{self.location}/{self.shape}"

    @property
    def hazard_per_hour(self) -> float:
        """Hourly interruption hazard (0 unless spot)."""
        if self.option is not PurchaseOption.SPOT:
            return 0.0
        return band_hazard_per_hour(self.interruption_band)

    def describe(self) -> str:
        """``aws us-east-1 g5.xlarge (1xA10G) spot $0.42/h``."""
        gpu = f" ({self.gpu_count}x{self.gpu_type})" if self.gpu_count else ""
        return (
            f"{self.cloud} {self.location} {self.instance_type}{gpu} "
            f"{self.option.value} ${self.usd_per_hour:.4f}/h"
        )


_OPTION_CODES = {PurchaseOption.ON_DEMAND: 0, PurchaseOption.SPOT: 1, PurchaseOption.RESERVED: 2}


class Catalog:
    """An immutable set of offers with column arrays for fast vectorised filtering.

    ``decide()`` runs once per task submission over the whole catalog, so the filters are
    numpy masks rather than a Python loop (p99 per decision is benchmarked in ``bench/``).
    """

    def __init__(self, offers: Iterable[Offer]) -> None:
        self.offers: tuple[Offer, ...] = tuple(offers)
        self.gpu_types: tuple[str, ...] = tuple(
            sorted({o.gpu_type for o in self.offers if o.gpu_type})
        )
        self.clouds: tuple[str, ...] = tuple(sorted({o.cloud for o in self.offers}))
        self.regions: tuple[str, ...] = tuple(sorted({o.region for o in self.offers}))
        self._region_cloud = {o.region: o.cloud for o in self.offers}
        gpu_code = {g: i + 1 for i, g in enumerate(self.gpu_types)}
        offers_ = self.offers
        self.a_vcpus = np.fromiter((o.vcpus for o in offers_), float, len(offers_))
        self.a_mem = np.fromiter((o.memory_gib for o in offers_), float, len(offers_))
        self.a_gpus = np.fromiter((o.gpu_count for o in offers_), float, len(offers_))
        self.a_gpu_type = np.fromiter(
            (gpu_code.get(o.gpu_type or "", 0) for o in offers_), np.int16, len(offers_)
        )
        self.a_option = np.fromiter(
            (_OPTION_CODES[o.option] for o in offers_), np.int8, len(offers_)
        )
        self.a_price = np.fromiter((o.usd_per_hour for o in offers_), float, len(offers_))
        self.a_od_price = np.fromiter(
            (o.ondemand_usd_per_hour for o in offers_), float, len(offers_)
        )
        self.a_hazard = np.fromiter((o.hazard_per_hour for o in offers_), float, len(offers_))
        self.a_cloud = np.array([o.cloud for o in offers_], dtype=object)
        self.a_region = np.array([o.region for o in offers_], dtype=object)
        self.a_key = np.array([o.key for o in offers_], dtype=object)
        self.a_capacity_key = np.array([o.capacity_key for o in offers_], dtype=object)
        self._gpu_code = gpu_code

    def __len__(self) -> int:
        return len(self.offers)

    @functools.cached_property
    def _rows_by_key(self) -> dict[str, list[int]]:
        return _index_rows(o.key for o in self.offers)

    @functools.cached_property
    def _rows_by_capacity(self) -> dict[str, list[int]]:
        return _index_rows(o.capacity_key for o in self.offers)

    def rows_of(self, keys: Iterable[str]) -> np.ndarray:
        """Row indices, ascending, of the offers with these :attr:`Offer.key` values.

        A dict lookup per key: ``decide()`` marks blocked offers and idle reservations on
        every call, where ``np.isin`` over an object column cost more than the rest of it.
        """
        return _rows(self._rows_by_key, keys)

    def rows_of_capacity(self, capacity_keys: Iterable[str]) -> np.ndarray:
        """Row indices, ascending, of every offer (any option) on these capacity keys."""
        return _rows(self._rows_by_capacity, capacity_keys)

    def gpu_code(self, gpu_type: str | None) -> int:
        """Integer code of a GPU model in :attr:`a_gpu_type` (0 = none or unknown)."""
        return self._gpu_code.get(gpu_type or "", -1 if gpu_type else 0)

    def rows_with_option(self, option: PurchaseOption) -> np.ndarray:
        """Boolean mask of the offers bought as ``option`` (computed once, read-only)."""
        return self._option_rows[option]

    @functools.cached_property
    def _option_rows(self) -> dict[PurchaseOption, np.ndarray]:
        rows = {option: self.a_option == code for option, code in _OPTION_CODES.items()}
        for mask in rows.values():
            mask.setflags(write=False)
        return rows

    def option_code(self, option: PurchaseOption) -> int:
        """Integer code of a purchase option in :attr:`a_option`."""
        return _OPTION_CODES[option]

    def cloud_of_region(self, region: str) -> str | None:
        """Which cloud a region name belongs to, if the catalog knows it."""
        return self._region_cloud.get(region)

    def filter(
        self,
        *,
        cloud: str | None = None,
        region: str | None = None,
        gpu_type: str | None = None,
        option: PurchaseOption | None = None,
        max_price: float | None = None,
        min_gpus: int | None = None,
    ) -> list[Offer]:
        """Offers matching every given criterion, cheapest first (for the ``prices`` CLI)."""
        gpu = gpu_type.lower() if gpu_type else None
        found = [
            o
            for o in self.offers
            if (cloud is None or o.cloud == cloud)
            and (region is None or o.region == region or o.zone == region)
            and (gpu is None or (o.gpu_type or "").lower() == gpu)
            and (option is None or o.option is option)
            and (max_price is None or o.usd_per_hour <= max_price)
            and (min_gpus is None or o.gpu_count >= min_gpus)
        ]
        return sorted(found, key=lambda o: (o.usd_per_hour, o.key))

    def find(self, key: str) -> Offer:
        """The offer with this :attr:`Offer.key`."""
        for offer in self.offers:
            if offer.key == key:
                return offer
        raise KeyError(key)


def _index_rows(values: Iterable[str]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for row, value in enumerate(values):
        index.setdefault(value, []).append(row)
    return index


def _rows(index: dict[str, list[int]], values: Iterable[str]) -> np.ndarray:
    return np.array(sorted({i for v in values for i in index.get(v, ())}), dtype=np.intp)


#: The catalog's numeric columns, and whether a row must fill each.
_NUMERIC_COLUMNS = (
    ("ondemand_usd_per_hour", True),
    ("spot_usd_per_hour", False),
    ("reserved_1yr_usd_per_hour", False),
    ("vcpus", True),
    ("memory_gib", True),
    ("accelerator_count", False),
)


def _price(text: str) -> float | None:
    return float(text) if text else None


def _bad_cell(row: dict[str, str], line: int) -> str:
    """The first numeric column of a row that does not parse (for a one-line error)."""
    for column, required in _NUMERIC_COLUMNS:
        text = (row.get(column) or "").strip()
        if not text and not required:
            continue
        try:
            float(text)
        except (ValueError, TypeError, OverflowError):
            return f"price catalog line {line}: column {column}={text!r} is not a number"
    return f"price catalog line {line}: a value does not parse; check the row"


def _check_row(line: int, on_demand: float, spot: float | None, reserved: float | None,
               common: dict) -> None:  # fmt: skip
    """Prices finite and positive, sizes sane: a NaN price would win every comparison."""
    for label, price in (("ondemand", on_demand), ("spot", spot), ("reserved", reserved)):
        if price is not None and not (math.isfinite(price) and price >= 0):
            raise InputError(f"price catalog line {line}: {label} price {price} must be >= 0")
    if on_demand <= 0:
        raise InputError(f"price catalog line {line}: ondemand_usd_per_hour must be > 0")
    if common["vcpus"] < 0 or not math.isfinite(common["memory_gib"]) or common["gpu_count"] < 0:
        raise InputError(f"price catalog line {line}: vcpus/memory_gib/accelerator_count invalid")
    if not common["cloud"] or not common["region"] or not common["instance_type"]:
        raise InputError(f"price catalog line {line}: cloud, region and instance_type are needed")


def offers_from_rows(rows: Iterable[dict[str, str]]) -> list[Offer]:
    """Expand catalog rows (one per instance type and place) into offers (one per option)."""
    offers: list[Offer] = []
    for line, row in enumerate(rows, start=2):
        try:
            on_demand = float(row["ondemand_usd_per_hour"])
            spot = _price(row.get("spot_usd_per_hour", ""))
            reserved = _price(row.get("reserved_1yr_usd_per_hour", ""))
            cloud = row["cloud"].strip().lower()
            band = row.get("interruption_band") or (GCP_ASSUMED_BAND if cloud == "gcp" else None)
            common = dict(
                cloud=cloud,
                region=row["region"].strip(),
                zone=row.get("zone", "").strip() or None,
                instance_type=row["instance_type"].strip(),
                vcpus=int(float(row["vcpus"])),
                memory_gib=float(row["memory_gib"]),
                gpu_type=row.get("accelerator", "").strip() or None,
                gpu_count=int(float(row.get("accelerator_count") or 0)),
                ondemand_usd_per_hour=on_demand,
                source=row.get("source", ""),
            )
        except KeyError as err:
            raise InputError(
                f"price catalog line {line}: column {err} is missing; see the catalog's header"
            ) from None
        except (ValueError, TypeError, AttributeError, OverflowError):
            raise InputError(_bad_cell(row, line)) from None
        _check_row(line, on_demand, spot, reserved, common)
        if band and band not in BAND_MONTHLY_FRACTION:
            raise InputError(
                f"price catalog line {line}: interruption_band {band!r}; use one of "
                f"{', '.join(BAND_ORDER)} or leave it empty"
            )
        offers.append(Offer(option=PurchaseOption.ON_DEMAND, usd_per_hour=on_demand, **common))
        if spot is not None and 0 < spot <= on_demand:
            offers.append(
                Offer(
                    option=PurchaseOption.SPOT, usd_per_hour=spot, interruption_band=band, **common
                )
            )
        if reserved is not None and 0 < reserved <= on_demand:
            offers.append(Offer(option=PurchaseOption.RESERVED, usd_per_hour=reserved, **common))
    return offers


#: Where ``prefect-cloudsched prices refresh`` writes a fresh catalog, under the cloudsched
#: home; when present it is used over the shipped snapshot.
REFRESHED_CATALOG = Path("catalog") / "offers.csv"
HOME_ENV = "PREFECT_CLOUDSCHED_HOME"


def refreshed_catalog_path() -> Path:
    """``$PREFECT_CLOUDSCHED_HOME/catalog/offers.csv`` (the home defaults as the ledger's)."""
    home = os.environ.get(HOME_ENV) or Path.home() / ".prefect-cloudsched"
    return Path(home).expanduser() / REFRESHED_CATALOG


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog CSV; ``None`` loads the refreshed catalog if any, else the snapshot."""
    if path is None:
        fresh = refreshed_catalog_path()
        if fresh.is_file():
            stat = fresh.stat()
            return _cached_file(str(fresh), stat.st_mtime_ns, stat.st_size)
        return _shipped_catalog()
    file = Path(path)
    if not file.is_file():
        raise InputError(f"price catalog {file} does not exist; pass a CSV in the offers format")
    return _read_file(file)


@functools.lru_cache(maxsize=4)
def _cached_file(path: str, _mtime_ns: int, _size: int) -> Catalog:
    return _read_file(Path(path))


def _read_file(file: Path) -> Catalog:
    with (
        read_errors("price catalog", file.name, str(file)),
        file.open(newline="", encoding="utf-8") as handle,
    ):
        return catalog_from_csv(handle, str(file))


REQUIRED_COLUMNS = ("cloud", "region", "instance_type", "vcpus", "memory_gib",
                    "ondemand_usd_per_hour")  # fmt: skip


def catalog_from_csv(handle: Iterable[str], name: str = "price catalog") -> Catalog:
    """Parse catalog CSV text; an empty file, a missing column or no offer is an error."""
    reader = csv.DictReader(handle)
    columns = reader.fieldnames or []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"{name}: missing column(s) {', '.join(missing)}; the header must name "
            f"{', '.join(REQUIRED_COLUMNS)} (see scripts/build_catalog.py)"
        )
    offers = offers_from_rows(reader)
    if not offers:
        raise InputError(f"{name} has a header but no offers; add rows or use the shipped one")
    return Catalog(offers)


def snapshot_rows() -> list[dict[str, str]]:
    """The shipped snapshot's raw rows (``prices refresh`` keeps its types and places)."""
    data = resources.files("prefect_cloudsched.core.catalog") / "data" / "offers.csv"
    with data.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _data_rows(name: str) -> list[dict[str, str]]:
    data = resources.files("prefect_cloudsched.core.catalog") / "data" / name
    with data.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@functools.cache
def gpu_names(system: str) -> dict[str, str]:
    """Our GPU names → another system's (a column of ``data/gpus.csv``), where it has one.

    ``system`` is ``gce_accelerator_type`` or ``ccf_gpu_name``.
    """
    return {row["gpu"]: row[system] for row in _data_rows("gpus.csv") if row[system]}


#: Our GPU names → GCE accelerator types: what an N1 VM attaches (A2, A3 and G2 machine types
#: have theirs built in) and what a GCP commitment reserves. The one map for both.
GCE_ACCELERATOR_TYPES: dict[str, str] = dict(gpu_names("gce_accelerator_type"))


@functools.cache
def _shipped_catalog() -> Catalog:
    return Catalog(offers_from_rows(_data_rows("offers.csv")))


__all__: Sequence[str] = (
    "BAND_ORDER",
    "GCE_ACCELERATOR_TYPES",
    "Catalog",
    "Offer",
    "PurchaseOption",
    "band_hazard_per_hour",
    "gpu_names",
    "load_catalog",
    "offers_from_rows",
)
