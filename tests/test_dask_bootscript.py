"""The boot script is executed, not string-matched.

The user-data / startup script the Dask executor generates for an EC2 instance or a GCE VM
runs here for real, with bash, in a sandbox: a fresh directory and venv, the package
installed from a wheel built from this checkout (offline: ``--no-index``; ``distributed``
and friends come from this interpreter's site-packages through a ``.pth``), the instance id
read from a loopback stand-in of the metadata service (EC2's IMDSv2: token first; GCE's: the
``Metadata-Flavor`` header). The worker it starts must join our scheduler over loopback
*with TLS* (per-run certificates written by the script), pass the version check, run a task
body in the sandbox venv, and — once idle — be retired and run the script's power-off step.
Only the metadata URL, the paths and the power-off command differ from what a real instance
gets.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.execute.bootstrap import BootstrapConfig
from prefect_cloudsched.adapters.execute.dask import DaskExecutor
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import load_catalog
from prefect_cloudsched.core.needs import TaskNeeds
from prefect_cloudsched.core.policy import PlacementState, PolicyConfig, decide

REPO = Path(__file__).resolve().parents[1]
#: The instance id each cloud's metadata server reports (AWS: the id; GCP: the VM name).
INSTANCE_IDS = {"aws": "i-0sandbox0000001", "gcp": "cs-sandbox-4f2a9c01"}
TOKEN = "sandbox-imds-token"


def build_wheel(out: Path) -> Path:
    """A wheel of this checkout's package, built offline with the installed setuptools.

    The project's own ``pyproject.toml`` needs a newer setuptools than the shared
    environment has (and build isolation would download one), so the wheel is built from a
    copy of the package with a minimal project table carrying the same name, version and
    package data. Dependencies are not declared: the sandbox installs with ``--no-deps``
    semantics (everything else is already importable).
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    src = out / "src"
    shutil.copytree(
        REPO / "prefect_cloudsched",
        src / "prefect_cloudsched",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    data = project["tool"]["setuptools"]["package-data"]["prefect_cloudsched"]
    (src / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools", "wheel"]\n'
        'build-backend = "setuptools.build_meta"\n'
        "[project]\n"
        f'name = "{project["project"]["name"]}"\n'
        f'version = "{project["project"]["version"]}"\n'
        "[tool.setuptools.packages.find]\n"
        'include = ["prefect_cloudsched*"]\n'
        "[tool.setuptools.package-data]\n"
        f"prefect_cloudsched = {data!r}\n".replace("'", '"')
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "-w", str(out / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    [wheel] = (out / "dist").glob("prefect_cloudsched-*.whl")
    return wheel


class _Imds(BaseHTTPRequestHandler):
    """EC2's instance metadata service (IMDSv2 only: a token is required) and GCE's."""

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token":
            self._answer(200, TOKEN)
        else:
            self._answer(404, "")

    def do_GET(self) -> None:
        if self.path == "/computeMetadata/v1/instance/name":
            google = self.headers.get("Metadata-Flavor") == "Google"
            self._answer(200 if google else 403, INSTANCE_IDS["gcp"] if google else "")
        elif self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._answer(401, "")
        elif self.path == "/latest/meta-data/instance-id":
            self._answer(200, INSTANCE_IDS["aws"])
        else:
            self._answer(404, "")

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:
        """Quiet."""


@pytest.fixture
def imds() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _placement(cloud: str) -> Placement:
    now = datetime.now(UTC)
    needs = TaskNeeds(gpus=1, spot_ok=True)
    decision = decide(
        needs, load_catalog(), now=now, submitted_at=now, state=PlacementState(),
        config=PolicyConfig(allowed_clouds=frozenset({cloud})),
    )  # fmt: skip
    return Placement(decision, "run-sandbox", "task-1", 1, INSTANCE_IDS[cloud])


def _sandbox_probe() -> object:
    """A body that reports where its interpreter and our package come from.

    Built in a closure so cloudpickle ships it by value (this test module is not
    importable on the worker).
    """

    def probe() -> dict[str, str]:
        import os
        import sys

        import prefect_cloudsched

        return {
            "prefix": sys.prefix,
            "package": prefect_cloudsched.__file__,
            "pid": str(os.getpid()),
        }

    return probe


@pytest.mark.slow
@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_generated_user_data_boots_a_tls_worker_that_runs_a_task_and_powers_off(
    cloud: str, tmp_path: Path, imds: str
) -> None:
    wheel = build_wheel(tmp_path / "build")
    sandbox = tmp_path / "instance"
    sandbox.mkdir()
    powered_off = sandbox / "powered-off"
    executor = DaskExecutor(
        cluster_kwargs={"host": "127.0.0.1"},
        tls=True,
        idle_timeout=1.0,
        monitor_interval=0.2,
        join_timeout=180,
        death_timeout=60,
        bootstrap=BootstrapConfig(
            python=sys.executable,
            venv=str(sandbox / "venv"),
            packages=(str(wheel),),
            pip_args=("--no-index",),
            site_dirs=tuple(site.getsitepackages()),
            log_path=str(sandbox / "log" / "worker.log"),
            workdir=str(sandbox / "work"),
            metadata_url=imds,
            power_off_command=f"touch {powered_off}",
        ),
    )
    placement = _placement(cloud)
    offer = placement.decision.offer
    instance_id = INSTANCE_IDS[cloud]
    handle = InstanceHandle(cloud, instance_id, offer.key, offer.region, offer.zone, "spot", "r")
    executor.start()
    proc = None
    try:
        address = executor.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")  # bound to loopback, encrypted
        script = executor.startup_script(offer, "run-sandbox")
        assert script is not None and "0.0.0.0" not in script
        (sandbox / "user-data").write_text(script)
        proc = subprocess.Popen(
            ["bash", str(sandbox / "user-data")],
            env={"PATH": os.environ["PATH"], "HOME": str(sandbox)},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        executor.attach(handle, placement)
        [(worker_address, info)] = executor.client.scheduler_info(n_workers=-1)["workers"].items()
        assert worker_address.startswith("tls://") and info["name"] == instance_id
        seen = executor.run(_sandbox_probe(), placement)  # type: ignore[arg-type]
        assert seen["prefix"] == str(sandbox / "venv")
        assert seen["package"].startswith(str(sandbox / "venv"))  # the wheel, not this tree
        assert int(seen["pid"]) not in (os.getpid(), proc.pid)
        tls_files = sorted(p.name for p in (sandbox / "work" / "tls").iterdir())
        assert tls_files == ["ca.pem", "worker-key.pem", "worker.pem"]
        assert (sandbox / "work" / "tls" / "worker-key.pem").stat().st_mode & 0o077 == 0
        executor.detach(handle)  # idle from now: retired after 1 s, then the script powers off
        assert proc.wait(timeout=60) == 0
        assert powered_off.exists()
        log = (sandbox / "log" / "worker.log").read_text()
        assert f"starting worker {instance_id}" in log and "powering off" in log
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
        executor.stop()
