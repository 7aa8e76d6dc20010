"""The ``CloudSchedExecutor`` block: where task bodies run, editable in the Prefect UI."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Literal

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from prefect_cloudsched.prefect.blocks._common import _CloudSchedBlock, settings_from_fields

if TYPE_CHECKING:  # pragma: no cover
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.adapters.execute.launcher import WorkerLauncher
    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings


class CloudSchedExecutor(_CloudSchedBlock, Block):
    """Where task bodies run: on the instance each task pays for, or nowhere (accounting).

    In ``remote`` mode every instance the runner starts boots a Dask worker (in a venv on
    the machine image, or in ``container_image``) that dials the flow's scheduler over TLS
    with certificates made for the flow run; each task body runs on the worker of its own
    instance. ``accounting-only`` starts no instance and runs bodies in the flow's process.

    Example:
        ```python
        from prefect_cloudsched.prefect.blocks import CloudSchedExecutor
        executor_block = CloudSchedExecutor.load("BLOCK_NAME")
        executor = executor_block.build_executor()
        ```
    """

    _block_type_name = "CloudSched Executor"
    _block_type_slug = "cloudsched-executor"

    mode: Literal["remote", "accounting-only"] = Field(
        default="remote",
        description=(
            "remote: each body runs on its instance; accounting-only: no instance is "
            "started and bodies run in the flow's process."
        ),
    )
    scheduler_address: str | None = Field(
        default=None,
        description="An existing Dask scheduler, e.g. tls://10.0.1.5:8786 (empty = start one).",
    )
    scheduler_host: str = Field(
        default="127.0.0.1",
        description="Interface our own scheduler binds to: the flow host's private IP, or "
        "127.0.0.1 behind a tunnel.",
    )
    scheduler_port: int = Field(
        default=8786, ge=0, le=65535, description="Port of our own scheduler (0 = any free)."
    )
    worker_scheduler_address: str | None = Field(
        default=None,
        description="The scheduler as the instances reach it (a tunnel end or private DNS "
        "name; empty = the address above).",
    )
    tls: bool = Field(
        default=True,
        description="Encrypt and authenticate the worker link with per-run certificates.",
    )
    tls_ca_file: str | None = Field(
        default=None, description="CA file of an existing TLS scheduler (empty = generated)."
    )
    tls_cert_file: str | None = Field(
        default=None, description="Certificate file the client and workers present to it."
    )
    tls_key_file: str | None = Field(default=None, description="Key file of that certificate.")
    worker_tls_dir: str | None = Field(
        default=None,
        description="Directory on the image holding the worker's ca.pem, worker.pem and "
        "worker-key.pem (empty = sent in the boot script).",
    )
    container_image: str | None = Field(
        default=None,
        description="Run the worker in this container image (GPU access on GPU shapes) "
        "instead of a venv.",
    )
    python: str = Field(
        default="python3", description="Interpreter on the image that creates the worker venv."
    )
    packages: list[str] = Field(
        default_factory=list,
        description="Requirements the task bodies import, e.g. torch==2.5.1.",
    )
    pip_args: list[str] = Field(
        default_factory=list, description="More pip install options, e.g. --index-url URL."
    )
    system_site_packages: bool = Field(
        default=False, description="Let the worker venv see the image's own packages."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the worker (no secrets: boot scripts are readable).",
    )
    idle_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        description="Retire a worker (and power its instance off) after this idle time.",
    )
    join_timeout_seconds: float = Field(
        default=600.0, gt=0, le=7200, description="Longest wait for an instance's worker."
    )
    death_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="A worker without its scheduler this long exits and powers off.",
    )
    check_versions: bool = Field(
        default=True,
        description="Refuse workers whose Python or packages differ from the flow's.",
    )

    @field_validator("scheduler_address", "worker_scheduler_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value and "://" not in value:
            raise ValueError("must include the protocol, e.g. tls://10.0.1.5:8786")
        return value or None

    @field_validator("scheduler_host")
    @classmethod
    def _not_everywhere(cls, value: str) -> str:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return value  # a host name: bound as resolved
        if address.is_unspecified:
            raise ValueError(
                "binding to every interface exposes the scheduler; give the private IP the "
                "instances reach"
            )
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> CloudSchedExecutor:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(files) and not all(files):
            raise ValueError("tls_ca_file, tls_cert_file and tls_key_file go together")
        return self

    def to_settings(self) -> ExecutorSettings:
        """The plain ``ExecutorSettings`` the runtime builds the executor from."""
        from prefect_cloudsched.adapters.execute.settings import ExecutorSettings

        return settings_from_fields(self, ExecutorSettings)

    def build_executor(self, launcher: WorkerLauncher | None = None) -> DaskExecutor:
        """A fresh (not started) remote executor for one flow run."""
        from prefect_cloudsched.adapters.execute.settings import build_executor

        return build_executor(self.to_settings(), launcher=launcher)


def load_executor_settings(spec: str | CloudSchedExecutor | ExecutorSettings) -> ExecutorSettings:
    """The executor settings of a saved block's name, a block, or settings as they are.

    Raises:
        MissingBlockError: no ``cloudsched-executor`` block is saved under that name.
    """
    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings

    if isinstance(spec, ExecutorSettings):
        return spec
    block = CloudSchedExecutor.load_named(spec) if isinstance(spec, str) else spec
    return block.to_settings()
