"""Remote execution settings (what the ``CloudSchedExecutor`` block maps onto) and the one
function that turns them into an executor.

A plain dataclass so the runtime can build an executor without Prefect; the block
(``prefect_cloudsched.prefect.blocks.CloudSchedExecutor``) is how users set it from the UI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from prefect_cloudsched.errors import ProvisioningError

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import WorkerLauncher

Mode = Literal["remote", "accounting-only"]


@dataclass(frozen=True)
class ExecutorSettings:
    """Where task bodies run and how instances' workers reach the flow.

    Attributes:
        mode: ``remote`` = each body runs on its placement's instance; ``accounting-only``
            = no instance is started and the body runs in the flow's process, accounted as
            if it ran on the chosen offer.
        scheduler_address: An existing Dask scheduler (``tls://10.0.1.5:8786``); ``None``
            starts one in the flow's process, bound to ``scheduler_host``.
        scheduler_host: Interface our own scheduler binds to: the flow host's private IP
            inside the VPC, or ``127.0.0.1`` behind a tunnel (never ``0.0.0.0`` by default).
        scheduler_port: Port of our own scheduler (``0`` = any free port).
        worker_scheduler_address: The scheduler as the instances see it (a tunnel's far end,
            a private DNS name); ``None`` = the address the flow connects to.
        tls: Encrypt and authenticate the scheduler link with per-run certificates.
        tls_ca_file / tls_cert_file / tls_key_file: Certificates of an existing TLS
            scheduler (used by the client and the workers).
        worker_tls_dir: The worker certificates are already on the image in this directory
            (``ca.pem``, ``worker.pem``, ``worker-key.pem``): boot scripts then carry no key.
        container_image: Run the worker in this image (``docker run --gpus all`` on GPU
            shapes) instead of a venv on the machine image.
        python: Interpreter on the image that creates the worker's venv.
        packages: Requirements the task bodies import (installed next to ``distributed``).
        pip_args: More ``pip install`` options (``--index-url``, ``--no-index``).
        system_site_packages: Let the venv see the image's packages (DLAMI's CUDA stack).
        extra_env: Environment of the worker (never secrets: boot scripts are readable).
        idle_seconds: A worker idle this long is retired and its instance powers off; set
            the pools' ``warm_seconds`` to the same value to reuse instances within a run.
        join_timeout_seconds: Longest wait from instance running to worker joined.
        death_timeout_seconds: A worker that lost the scheduler this long exits (and its
            instance powers off): the backstop if the flow process dies.
        check_versions: Refuse workers whose Python or packages differ from the flow's.
    """

    mode: Mode = "remote"
    scheduler_address: str | None = None
    scheduler_host: str = "127.0.0.1"
    scheduler_port: int = 8786
    worker_scheduler_address: str | None = None
    tls: bool = True
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    worker_tls_dir: str | None = None
    container_image: str | None = None
    python: str = "python3"
    packages: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()
    system_site_packages: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    idle_seconds: float = 60.0
    join_timeout_seconds: float = 600.0
    death_timeout_seconds: float = 300.0
    check_versions: bool = True


def build_executor(
    settings: ExecutorSettings, *, launcher: WorkerLauncher | None = None
) -> DaskExecutor:
    """The remote executor these settings describe (one per flow run; not yet started).

    Args:
        settings: The executor settings (from the block: ``block.to_settings()``).
        launcher: Who starts workers the instances do not start themselves (``None`` = the
            boot script does; ``LocalWorkerLauncher()`` on the mock clouds).

    Raises:
        ProvisioningError: ``mode`` is ``accounting-only`` (no executor runs remotely), or a
            TLS file is missing — one line naming the setting.
    """
    from prefect_cloudsched.adapters.execute.bootstrap import BootstrapConfig
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.tls import TlsMaterial

    if settings.mode != "remote":
        raise ProvisioningError(
            f"CloudSchedExecutor.mode: {settings.mode!r} runs no remote executor; use "
            "the local executor without provisioners for accounting only"
        )
    tls: bool | TlsMaterial = settings.tls
    files = (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file)
    if any(files):
        if not all(files):
            raise ProvisioningError(
                "CloudSchedExecutor.tls_ca_file/tls_cert_file/tls_key_file: give all three "
                "(the existing scheduler's CA, and a certificate and key it trusts)"
            )
        try:
            tls = TlsMaterial.from_files(*files)  # type: ignore[arg-type]
        except OSError as err:
            raise ProvisioningError(
                f"CloudSchedExecutor.tls_ca_file/tls_cert_file/tls_key_file: cannot read "
                f"{err.filename}: {err.strerror}"
            ) from None
    elif settings.scheduler_address and settings.tls:
        if settings.scheduler_address.startswith("tls://"):
            raise ProvisioningError(
                "CloudSchedExecutor.tls_ca_file: the scheduler at "
                f"{settings.scheduler_address} uses TLS; give its CA, certificate and key"
            )
        tls = False  # an existing plaintext scheduler: the user chose it
    cluster_kwargs = None
    if settings.scheduler_address is None:
        cluster_kwargs = {
            "host": settings.scheduler_host,
            "scheduler_port": settings.scheduler_port,
        }
    return DaskExecutor(
        settings.scheduler_address,
        cluster_kwargs=cluster_kwargs,
        worker_scheduler_address=settings.worker_scheduler_address,
        launcher=launcher,
        bootstrap=BootstrapConfig(
            python=settings.python,
            packages=tuple(settings.packages),
            pip_args=tuple(settings.pip_args),
            system_site_packages=settings.system_site_packages,
            extra_env=dict(settings.extra_env),
            container_image=settings.container_image,
            tls_dir_on_image=settings.worker_tls_dir,
        ),
        join_timeout=settings.join_timeout_seconds,
        idle_timeout=settings.idle_seconds,
        death_timeout=settings.death_timeout_seconds,
        tls=tls,
        check_versions=settings.check_versions,
    )


__all__ = ["ExecutorSettings", "Mode", "build_executor"]
