"""What a session is built from, read once when it opens: reservations, prices, executor.

Every function here turns resolved settings (no blocks, no Prefect) into the objects a
:class:`~prefect_cloudsched.runtime.session.Session` owns, and says in the run's log what
it found, so a reader of a flow run sees which capacity and prices its decisions used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_cloudsched.adapters.execute.base import Executor, LocalExecutor
from prefect_cloudsched.adapters.ledger import Ledger
from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.adapters.reservations import (
    HeldReservations,
    check_declared,
    held_reservations,
    unusable_reason,
)
from prefect_cloudsched.core.catalog import Catalog
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.runtime.config import ExecutionMode
from prefect_cloudsched.runtime.observer import RunObserver


def reserved_capacity(
    declared: Mapping[str, int],
    provisioners: Mapping[str, Provisioner],
    ledger: Ledger,
    *,
    use_plan: bool,
    observer: RunObserver,
    catalog: Catalog | None = None,
    policy: PolicyConfig | None = None,
) -> HeldReservations:
    """The reserved capacity this run may use first: owned, declared, or a *bought* plan.

    A plan saved with ``plan --save`` is a draft: it holds nothing, so it never makes a
    placement "reserved" (on a real account that task would start an on-demand instance).
    With the run's catalog and policy, a declared key the catalog does not know is refused,
    and capacity no placement could take (a region the policy forbids, no reserved price)
    is dropped with one warning each, so the log lists only what can really be used.

    Raises:
        InputError: a declared key is not a capacity key of the catalog.
    """
    if catalog is not None:
        check_declared(declared, catalog)
    held = held_reservations(
        owned=owned_reservations(provisioners, observer),
        declared=declared,
        ledger=ledger,
        use_plan=use_plan,
    )
    if catalog is not None and policy is not None:
        for key, count in held.counts.items():
            why = unusable_reason(key, catalog, policy)
            if why is not None:
                held.drop(key)
                observer.log(
                    f"reserved capacity {key} ({count}) will not be used: {why}", "warning"
                )
    if held.counts:
        observer.log(f"reserved capacity used first: {held.counts}")
    return held


def owned_reservations(
    provisioners: Mapping[str, Provisioner], observer: RunObserver
) -> dict[str, int]:
    """Reservations / committed use the clouds (or the pool settings) say we own."""
    owned: dict[str, int] = {}
    for cloud, provisioner in provisioners.items():
        try:
            found = provisioner.owned_reservations()
        except Exception as err:  # a planning aid, never a reason to fail the flow
            observer.log(f"could not read {cloud} reservations ({err}); assuming none", "warning")
            continue
        for key, count in found.items():
            owned[key] = owned.get(key, 0) + int(count)
    return owned


def with_live_prices(
    catalog: Catalog, provisioners: Mapping[str, Provisioner], observer: RunObserver
) -> Catalog:
    """AWS spot prices re-read from ``describe_spot_price_history`` when it answers.

    Re-priced offers carry ``source="live:..."``, which every decision records; offers the
    API did not price keep the snapshot's price and source.
    """
    aws = provisioners.get("aws")
    if aws is None or not hasattr(aws, "settings"):  # stand-ins without AWS settings
        return catalog
    from prefect_cloudsched.adapters.provision.aws import LIVE_SOURCE, refresh_spot_prices

    refreshed = refresh_spot_prices(catalog, aws)  # type: ignore[arg-type]
    live = sum(o.source == LIVE_SOURCE for o in refreshed.offers)
    observer.log(f"live AWS spot prices for {live} offers; the rest from the snapshot")
    return refreshed


def make_executor(
    spec: Executor | str | None,
    options: Mapping[str, Any],
    *,
    provisioners: Mapping[str, Provisioner],
    execution: ExecutionMode = "auto",
) -> Executor:
    """The executor of one flow run, under the rule "never both".

    A body never runs in this process while an instance is started and billed for it: with
    provisioners the default is the Dask executor (each body on its instance's worker);
    ``execution="accounting"`` starts no instance at all (the session drops the
    provisioners); an executor that runs bodies here next to provisioners is refused.

    Raises:
        InputError: the combination would start instances for bodies that run here.
    """
    remote_wanted = bool(provisioners) and execution != "accounting"
    if spec is None:
        spec = "dask" if remote_wanted or execution == "remote" else "local"
    if spec == "dask":
        from prefect_cloudsched.adapters.execute.dask import DaskExecutor

        executor: Executor = DaskExecutor(**options)
    elif spec == "local":
        executor = LocalExecutor()
    elif isinstance(spec, str):
        raise InputError(f'executor must be "local", "dask" or an Executor, got {spec!r}')
    else:
        executor = spec
    runs_there = bool(getattr(executor, "runs_on_instance", False))
    if remote_wanted and not runs_there:
        raise InputError(
            f"executor={getattr(executor, 'name', type(executor).__name__)!r} runs task bodies "
            "in this process while the provisioners would start (and bill) an instance for "
            'each: use executor="dask" to run them on the instances, or '
            'execution="accounting" to start no instance'
        )
    if execution == "remote" and not provisioners:
        raise InputError('execution="remote" needs provisioners or pools to start instances')
    return executor


__all__ = [
    "make_executor",
    "owned_reservations",
    "reserved_capacity",
    "with_live_prices",
]
