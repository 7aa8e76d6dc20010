"""A worker joins only when its Python and packages match the flow's.

Task bodies travel as cloudpickles, which carry bytecode (Python major.minor must match) and
rely on ``cloudpickle``/``distributed`` agreeing on both sides. A mismatch otherwise shows up
as an obscure unpickling error deep in the first task — or worse, as subtly different
behaviour. The executor asks each new worker for its versions (``distributed``'s own
``get_versions``, called by reference, so nothing of ours must be installed there) before it
gives the worker any body, and refuses it with one line naming the setting to fix.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from typing import Any

from prefect_cloudsched.errors import ProvisioningError

#: Packages that must match exactly; ``prefect_cloudsched`` only where the worker has it.
STRICT = ("distributed", "cloudpickle")
OPTIONAL = ("prefect_cloudsched",)


class WorkerVersionMismatch(ProvisioningError):
    """A worker's Python or package versions differ from the flow's."""


@functools.cache
def flow_versions() -> dict[str, str | None]:
    """This process's Python (major.minor) and the checked packages' versions."""
    from distributed.versions import get_package_info

    found = get_package_info([*STRICT, *OPTIONAL])
    return {**found, "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def worker_versions(report: Mapping[str, Any]) -> dict[str, str | None]:
    """The same view of a worker, from ``distributed.versions.get_versions`` output."""
    packages = dict(report.get("packages", {}))
    python = str(packages.get("python") or report.get("host", {}).get("python") or "")
    short = ".".join(python.split(".")[:2]) or None
    return {**{name: packages.get(name) for name in (*STRICT, *OPTIONAL)}, "python": short}


def differences(flow: Mapping[str, str | None], worker: Mapping[str, str | None]) -> list[str]:
    """``"name worker-version (flow flow-version)"`` for each mismatch."""
    found = []
    for name in ("python", *STRICT, *OPTIONAL):
        mine, theirs = flow.get(name), worker.get(name)
        if name in OPTIONAL and (theirs is None or mine is None):
            continue
        if mine != theirs:
            found.append(f"{name} {theirs or 'missing'} (flow: {mine})")
    return found


def check_worker(client: Any, address: str, name: str) -> None:
    """Raise :class:`WorkerVersionMismatch` unless the worker at ``address`` matches us."""
    from distributed.versions import get_versions

    answer = client.run(get_versions, list(OPTIONAL), workers=[address])
    report = answer.get(address) or {}
    wrong = differences(flow_versions(), worker_versions(report))
    if wrong:
        raise WorkerVersionMismatch(
            f"CloudSchedExecutor.container_image / python: worker {name} refused, its "
            f"versions differ from the flow's: {'; '.join(wrong)}; use an image (or "
            "container) with the flow's Python and packages"
        )
