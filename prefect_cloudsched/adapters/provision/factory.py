"""Build a provisioner from its settings (what the pool blocks and ``MockClouds`` call)."""

from __future__ import annotations

import atexit
import hashlib
import logging
import pickle
import threading

from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.adapters.provision.settings import AwsSettings, GcpSettings

logger = logging.getLogger("prefect_cloudsched.provision")

#: Provisioners whose warm pool serves every flow run of this process (``warm_across_runs``),
#: by a digest of their settings: a pool block loaded by each run gets the same one.
_SHARED: dict[str, Provisioner] = {}
_SHARED_LOCK = threading.Lock()


def build_provisioner(settings: AwsSettings | GcpSettings) -> Provisioner:
    """The provisioner for ``settings``: ``AwsProvisioner`` or ``GcpProvisioner``.

    With ``warm_across_runs`` the provisioner is shared by every flow run of this process
    that uses the same settings, so a warm instance one run parked can serve the next run;
    when the process exits, the warm instances still parked are ended.

    Raises:
        ProvisioningError: a setting is invalid (e.g. an unknown AWS region).
        TypeError: ``settings`` is neither ``AwsSettings`` nor ``GcpSettings``.
    """
    if not getattr(settings, "warm_across_runs", False):
        return _build(settings)
    key = hashlib.sha256(pickle.dumps(settings)).hexdigest()  # secrets stay in memory only
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            if not _SHARED:
                atexit.register(end_shared_warm_pools)
            found = _SHARED[key] = _build(settings)
        return found


def end_shared_warm_pools() -> int:
    """End the warm instances every shared provisioner still parks (at process exit)."""
    ended = 0
    with _SHARED_LOCK:
        shared = list(_SHARED.values())
    for provisioner in shared:
        try:
            ended += provisioner.end_parked()  # type: ignore[attr-defined]
        except Exception as err:  # the heartbeat stops: the reaper ends them
            logger.warning("could not end warm instances at exit: %s", err)
    return ended


def _build(settings: AwsSettings | GcpSettings) -> Provisioner:
    if isinstance(settings, AwsSettings):
        from prefect_cloudsched.adapters.provision.aws import AwsProvisioner

        return AwsProvisioner(settings)
    if isinstance(settings, GcpSettings):
        from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner

        return GcpProvisioner(settings)
    raise TypeError(f"expected AwsSettings or GcpSettings, got {type(settings).__name__}")
