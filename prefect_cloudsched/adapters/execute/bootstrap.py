"""What a provisioned instance runs at boot: one Dask worker that serves one placement pool.

Every instance the Dask executor asks for boots from :func:`startup_script` (AWS user-data,
GCP ``startup-script`` metadata). The script writes the run's worker TLS files, installs
``distributed`` (pinned to the client's version, so pickles and the wire protocol agree) in a
venv, or runs the worker in a container image instead, reads the instance's own id from the cloud
metadata server (the worker's name is the instance id, which is how the executor recognises
the worker of a placement), and starts ``dask worker`` advertising one resource: the pool
(``pool-<cloud>-<location>-<type>[-<n>x<gpu>]-<option>``) with as many slots as the instance
has GPUs (or vCPUs when it has none). When the worker exits (retired when idle, or the
scheduler gone for ``death_timeout``) the instance powers itself off, so a lost flow process
cannot leave a worker instance burning money even before the reaper runs.

Pure module: no Dask import, so scripts can be generated and tested anywhere.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import PurePosixPath

from prefect_cloudsched.adapters.execute.tls import TlsMaterial, worker_tls_args
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.core.needs import TaskNeeds

#: Where the worker's output goes on the instance (quoted in errors and docs).
WORKER_LOG = "/var/log/cloudsched-worker.log"

_UNSAFE = re.compile(r"[^a-z0-9.-]+")

#: Shell snippets printing the instance id the provisioner reports as ``instance_id``;
#: ``{base}`` is the metadata server (overridable for the sandbox test).
_INSTANCE_ID_COMMANDS: dict[str, str] = {
    # IMDSv2 (session token first): the provisioner launches with HttpTokens=required.
    "aws": (
        'TOKEN=$(curl -sf -m 5 -X PUT "{base}/latest/api/token" '
        '-H "X-aws-ec2-metadata-token-ttl-seconds: 300")\n'
        'curl -sf -m 5 -H "X-aws-ec2-metadata-token: $TOKEN" '
        '"{base}/latest/meta-data/instance-id"'
    ),
    # GCP: the VM *name*, because GcpProvisioner's InstanceHandle.instance_id is the name it
    # inserts (``cs-<task>-<digest>``), never GCE's numeric ``instance/id``; every other call
    # (get, delete, setLabels) addresses the VM by that name too. tests/test_dask_mockclouds.py
    # checks that the worker of each fake-GCE VM carries the VM's name.
    "gcp": ('curl -sf -m 5 -H "Metadata-Flavor: Google" "{base}/computeMetadata/v1/instance/name"'),
}
_METADATA_URLS = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal"}


def pool_name(offer: Offer) -> str:
    """The Dask resource naming ``offer``'s pool: cloud, place, type, GPUs, purchase option.

    Spot and on-demand capacity of one type are different pools: a task placed on spot
    must not land on an on-demand worker, or the bill and the interruption risk disagree
    with the decision. The GPUs are part of the name because GCP attaches GPUs to N1 types,
    so ``n1-highmem-4`` with and without a T4 share an instance type but not a pool.
    """
    gpus = f"/{offer.gpu_count}x{offer.gpu_type}" if offer.gpu_count else ""
    raw = f"{offer.cloud}/{offer.location}/{offer.instance_type}{gpus}/{offer.option.value}"
    return "pool-" + _UNSAFE.sub("-", raw.lower()).strip("-")


def pool_slots(offer: Offer) -> int:
    """Slots one instance of ``offer`` advertises: its GPUs, or its vCPUs when it has none."""
    return offer.gpu_count if offer.gpu_count else max(1, offer.vcpus)


def slots_needed(needs: TaskNeeds, offer: Offer) -> float:
    """Slots of ``offer``'s pool a task with ``needs`` takes (never more than one instance has).

    GPU pools count GPUs (a CPU-only task on a GPU instance takes one GPU slot, so it does
    not share the GPU with another task); CPU pools count vCPUs.
    """
    wanted = (needs.gpus or 1) if offer.gpu_count else needs.cpus
    return float(min(wanted, pool_slots(offer)))


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One Dask worker to start for one instance.

    Attributes:
        scheduler_address: Address the worker dials (``tcp://host:8786``, ``tls://...``).
        name: Worker name; the instance id, so the executor can find the worker of a handle.
        resources: Resources it advertises, ``{"pool-aws-us-east-1a-g5.xlarge-spot": 1}``.
        nthreads: Threads running task bodies at once (the pool's slots).
        death_timeout: Seconds without a scheduler before the worker exits.
        extra_args: More ``dask worker`` options (TLS files, ``--memory-limit``, ...).
        tls: The run's certificates (in-process and subprocess workers use them directly).
    """

    scheduler_address: str
    name: str
    resources: Mapping[str, float]
    nthreads: int = 1
    death_timeout: float = 300.0
    extra_args: tuple[str, ...] = ()
    tls: TlsMaterial | None = field(default=None, repr=False, compare=False)

    @classmethod
    def for_offer(
        cls,
        offer: Offer,
        *,
        scheduler_address: str,
        name: str,
        death_timeout: float = 300.0,
        extra_args: Sequence[str] = (),
        tls: TlsMaterial | None = None,
    ) -> WorkerSpec:
        """The worker an instance of ``offer`` runs."""
        slots = pool_slots(offer)
        return cls(
            scheduler_address=scheduler_address,
            name=name,
            resources={pool_name(offer): float(slots)},
            nthreads=max(1, math.ceil(slots)),
            death_timeout=death_timeout,
            extra_args=tuple(extra_args),
            tls=tls,
        )

    def cli_args(self) -> list[str]:
        """Arguments after ``dask worker`` (the name is included as given)."""
        resources = " ".join(f"{k}={v:g}" for k, v in sorted(self.resources.items()))
        return [
            self.scheduler_address,
            "--name",
            self.name,
            "--nthreads",
            str(self.nthreads),
            "--resources",
            resources,
            "--death-timeout",
            f"{self.death_timeout:g}",
            *self.extra_args,
        ]


@dataclass(frozen=True, slots=True)
class BootstrapConfig:
    """How the startup script prepares the instance's Python environment.

    Attributes:
        python: Interpreter on the image; its major.minor must equal the flow's (task bodies
            are cloudpickled by value, and bytecode is version-specific).
        install: Create a venv and ``pip install`` the worker's packages; ``False`` when the
            image already has them (faster boot, no PyPI access needed).
        packages: Extra requirements the task bodies import (``"torch==2.5.1"``, ...).
        venv: Where the venv goes on the instance.
        power_off_on_exit: Power the instance off when the worker exits (on AWS set the
            instance-initiated shutdown behaviour to ``terminate``).
        extra_env: Environment for the worker (``{"HF_HOME": "/mnt/cache"}``). Boot scripts
            are readable in the instance metadata: never put secrets here.
        log_path: Where the script and the worker write their output on the instance.
        container_image: Run the worker in this container image (``docker run`` with the
            host network and, on GPU shapes, ``--gpus all``) instead of a venv; the image
            must hold the flow's Python and ``distributed``.
        system_site_packages: Create the venv with ``--system-site-packages`` (reuse what
            the image has, e.g. the Deep Learning AMI's CUDA wheels).
        pip_args: More ``pip install`` options (``--no-index``, ``--find-links DIR``).
        site_dirs: Directories of packages the venv also sees, after its own (a ``.pth``
            file: e.g. a volume holding a prepared environment, or an offline sandbox).
        workdir: Where the script keeps the TLS files.
        metadata_url: The cloud metadata server (``None`` = the cloud's; a loopback URL in
            the sandbox test).
        power_off_command: What powers the instance off when the worker exits.
        tls_dir_on_image: The worker's ``ca.pem``, ``worker.pem`` and ``worker-key.pem``
            are already on the image here (baked in, or fetched by an earlier boot step
            with the instance role): the script then carries no key.
    """

    python: str = "python3"
    install: bool = True
    packages: tuple[str, ...] = ()
    venv: str = "/opt/cloudsched-worker"
    power_off_on_exit: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)
    log_path: str = WORKER_LOG
    container_image: str | None = None
    system_site_packages: bool = False
    pip_args: tuple[str, ...] = ()
    site_dirs: tuple[str, ...] = ()
    workdir: str = "/var/lib/cloudsched"
    metadata_url: str | None = None
    power_off_command: str = "shutdown -h now"
    tls_dir_on_image: str | None = None


@functools.cache
def worker_requirements() -> tuple[str, ...]:
    """``distributed`` and ``cloudpickle`` pinned to this process's versions."""
    return tuple(f"{dist}=={metadata.version(dist)}" for dist in ("distributed", "cloudpickle"))


def startup_script(
    offer: Offer,
    *,
    scheduler_address: str,
    run_id: str,
    config: BootstrapConfig | None = None,
    death_timeout: float = 300.0,
    extra_worker_args: Sequence[str] = (),
    tls: TlsMaterial | None = None,
) -> str:
    """A bash boot script that starts the Dask worker of one ``offer`` instance.

    Args:
        offer: The placement's offer; decides the pool resource, slots and metadata server.
        scheduler_address: Address reachable *from the instance*.
        run_id: The flow run, written into the log for tracing.
        config: Python environment preparation (``None`` = defaults).
        death_timeout: Seconds without a scheduler before the worker (and instance) stop.
        extra_worker_args: More ``dask worker`` options.
        tls: The run's certificates; the worker's are written to ``workdir/tls`` (mode 600).

    Raises:
        ValueError: the cloud has no known metadata server for the instance id.
    """
    cfg = config or BootstrapConfig()
    id_template = _INSTANCE_ID_COMMANDS.get(offer.cloud)
    if id_template is None:
        raise ValueError(
            f"cloud {offer.cloud!r} has no worker bootstrap; use one of "
            f"{sorted(_INSTANCE_ID_COMMANDS)}"
        )
    id_command = id_template.format(base=cfg.metadata_url or _METADATA_URLS[offer.cloud])
    tls_dir = cfg.tls_dir_on_image or f"{cfg.workdir}/tls"
    in_container = cfg.container_image is not None
    seen_tls_dir = "/cloudsched-tls" if in_container else tls_dir
    tls_args = (
        worker_tls_args(
            f"{seen_tls_dir}/ca.pem", f"{seen_tls_dir}/worker.pem", f"{seen_tls_dir}/worker-key.pem"
        )
        if tls is not None
        else []
    )
    spec = WorkerSpec.for_offer(
        offer,
        scheduler_address=scheduler_address,
        name="__NAME__",
        death_timeout=death_timeout,
        extra_args=[*tls_args, *extra_worker_args],
    )
    args = shlex.join(spec.cli_args()).replace("__NAME__", '"$WORKER_NAME"')
    lines = [
        "#!/bin/bash",
        f"# prefect-cloudsched: Dask worker for {offer.key} (flow run {run_id})",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(str(PurePosixPath(cfg.log_path).parent))}",
        f"exec >>{shlex.quote(cfg.log_path)} 2>&1",
        f"mkdir -p {shlex.quote(cfg.workdir)} && cd {shlex.quote(cfg.workdir)}",
    ]
    for key, value in sorted(cfg.extra_env.items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    if tls is not None and cfg.tls_dir_on_image is None:
        lines += _tls_lines(tls, tls_dir)
    lines += ["WORKER_NAME=$(", id_command, ")"]
    lines.append(f'echo "cloudsched: starting worker $WORKER_NAME for run {run_id}"')
    if in_container:
        lines += _container_lines(offer, cfg, args, tls_dir if tls else None, seen_tls_dir)
    else:
        lines += _venv_lines(cfg)
        lines.append(f'"$PY" -m dask worker {args} || true')
    if cfg.power_off_on_exit:
        lines += ['echo "cloudsched: worker exited; powering off"', cfg.power_off_command]
    return "\n".join(lines) + "\n"


def _tls_lines(tls: TlsMaterial, tls_dir: str) -> list[str]:
    """Write the worker's CA, certificate and key readable by root only."""
    quoted = shlex.quote(tls_dir)
    lines = ["umask 077", f"mkdir -p {quoted}"]
    for name, text in (
        ("ca.pem", tls.ca_pem),
        ("worker.pem", tls.worker_cert_pem),
        ("worker-key.pem", tls.worker_key_pem),
    ):
        lines += [f"cat > {quoted}/{name} <<'CLOUDSCHED_PEM'", text.rstrip("\n"), "CLOUDSCHED_PEM"]
    return [*lines, "umask 022"]


def _venv_lines(cfg: BootstrapConfig) -> list[str]:
    py = shlex.quote(cfg.python)
    if not cfg.install:
        return [f"PY={py}"]
    venv = shlex.quote(cfg.venv)
    site = " --system-site-packages" if cfg.system_site_packages else ""
    requirements = shlex.join([*cfg.pip_args, *worker_requirements(), *cfg.packages])
    lines = [f"{py} -m venv{site} {venv}"]
    if cfg.site_dirs:
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        lines += [
            f"SITE=$({venv}/bin/python -c {shlex.quote(purelib)})",
            f'printf "%s\\n" {shlex.join(cfg.site_dirs)} > "$SITE/cloudsched-extra.pth"',
        ]
    return [
        *lines,
        f"{venv}/bin/python -m pip install --quiet --disable-pip-version-check {requirements}",
        f"PY={venv}/bin/python",
    ]


def _container_lines(
    offer: Offer, cfg: BootstrapConfig, args: str, tls_dir: str | None, seen_tls_dir: str
) -> list[str]:
    image = shlex.quote(cfg.container_image or "")
    options = ["--rm", "--name", "cloudsched-worker", "--network", "host"]
    if offer.gpu_count:
        options += ["--gpus", "all"]
    if tls_dir is not None:
        options += ["-v", f"{tls_dir}:{seen_tls_dir}:ro"]
    for key in sorted(cfg.extra_env):
        options += ["-e", key]
    return [
        f"docker pull --quiet {image}",
        f"docker run {shlex.join(options)} {image} python -m dask worker {args} || true",
    ]
