"""Remote-execution faults of the fault suite (issue 13, "Bad input"): each is a real Prefect
flow through ``CloudSchedTaskRunner`` with the real AWS provisioner on ``MockClouds`` (moto)
and the Dask executor, and each must end in a failed task whose error is one line naming the
setting to fix, with no instance of ours (and no Dask worker) left running.

- ``remote_never_joins``: an instance boots, no worker ever joins (nothing runs the boot
  script on the mock); a 2 s ``join_timeout`` bounds the wait.
- ``remote_version_mismatch``: the instance's worker reports other Python and ``cloudpickle``
  versions than the flow's; it must be refused before it gets a body.
- ``remote_no_scheduler``: ``CloudSchedExecutor.scheduler_address`` names a closed loopback
  port (the settings a block gives, through ``build_executor``).
- ``remote_bad_image``: ``AwsSettings.ami_per_region`` names an AMI the region does not have
  (moto's own AMI validation answers ``InvalidAMIID.NotFound``).
- ``remote_no_image_parameter``: ``AwsSettings.gpu_image_parameter`` names an SSM parameter
  the region does not publish (moto's SSM answers ``ParameterNotFound``).

Every figure is measured: the task's final state, whether the error is one line and matches
the setting's name, our instances still running (moto, by owner tag) plus Dask workers and
executor monitor threads still up, the launched instances that have a ledger row, and seconds.
"""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from fault_outcome import Outcome, Trial, launched_by, ledger_rows

#: A worker that has not joined 2 s after its instance runs is given up (default: 600 s).
JOIN_TIMEOUT = 2.0
#: How long the client tries a closed scheduler port before giving up (dask's default: 30 s).
CONNECT_TIMEOUT = "2s"
#: Well-formed, but no region of the mock (or of AWS) has it.
MISSING_AMI = "ami-0badc0ffee0000000"
#: An SSM parameter no region publishes (``{arch}`` filled in as for the real ones).
MISSING_PARAMETER = "/aws/service/cloudsched-fault-suite/no-such-image/{arch}/ami-id"
#: Every scenario pins AWS so the instances it starts are visible through moto's tags.
AWS_ONLY = frozenset({"aws"})


def _aws_provisioners(clouds: Any, owner: str, **changes: Any) -> dict[str, Any]:
    """The real AWS provisioner on moto for ``owner`` (settings ``changes`` applied)."""
    from prefect_cloudsched.adapters.provision.aws import AwsProvisioner

    return {"aws": AwsProvisioner(replace(clouds.aws_settings, owner_id=owner, **changes))}


def _dask_runner(provisioners: dict[str, Any], executor: Any, **options: Any) -> Any:
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.core.policy import PolicyConfig

    return CloudSchedTaskRunner(
        max_workers=2,
        provisioners=provisioners,
        executor=executor,
        executor_options=options,
        policy=PolicyConfig(allowed_clouds=AWS_ONLY),
        spot_retries=0,
        label_task_runs=False,
    )


def _dask_options(**extra: Any) -> dict[str, Any]:
    return {
        "join_timeout": JOIN_TIMEOUT,
        "monitor_interval": 0.1,
        "idle_timeout": 0,  # released instance = retired worker
        "tls": True,  # as the CloudSchedExecutor block does by default
        **extra,
    }


def _run_one_task(runner: Any) -> tuple[str, str]:
    """Run a flow with one GPU task on ``runner``; (task's final state, its error line(s)).

    A runner whose session cannot open fails at submission: no task run exists then, and
    the state is ``NOT_SUBMITTED`` with the submission's error.
    """
    from prefect import flow, task

    from prefect_cloudsched import requires

    @requires(gpus=1, gpu_type="A10G", est_runtime=timedelta(seconds=1))
    @task
    def remote_step() -> str:
        return "ran"

    @flow(name=f"fault-remote-{uuid.uuid4().hex[:6]}", task_runner=runner)
    def work() -> tuple[str, str]:
        try:
            future = remote_step.submit()
        except Exception as err:  # the session could not open
            return "NOT_SUBMITTED", str(err)
        future.wait()
        state = future.state
        error = future.result(raise_on_failure=False) if state.is_failed() else ""
        return state.type.value, str(error)

    return work()


def _dask_left_up() -> int:
    """Dask workers not closed plus executor monitor threads still alive after the flow."""
    import threading

    import distributed

    workers = [w for w in list(distributed.Worker._instances) if w.status.name != "closed"]
    monitors = [t for t in threading.enumerate() if t.name == "cloudsched-dask-monitor"]
    return len(workers) + len(monitors)


def _judge(
    clouds: Any,
    trial: Trial,
    scenario: str,
    result: tuple[str, str],
    *,
    setting: str,
    faults: int,
    workers_left: int | None = None,
) -> Outcome:
    """Measure what the flow left behind and turn it into an ``Outcome``."""
    state, error = result
    workers_left = _dask_left_up() if workers_left is None else workers_left
    launched = launched_by(clouds, trial.owner)
    accounted = {r.instance_id for r in ledger_rows(trial.ledger_url)} & set(launched)
    running = clouds.running_instances(owner_id=trial.owner)
    failed_as_expected = state in ("FAILED", "NOT_SUBMITTED") and bool(error)
    one_line = bool(error) and "\n" not in error.strip()
    names_setting = re.search(setting, error) is not None
    return Outcome(
        scenario=scenario,
        backend=trial.backend,
        tasks=1,
        tasks_ok=int(failed_as_expected),
        faults_injected=faults,
        interruptions=0,
        instances_leaked=len(running) + workers_left,
        rows_expected=len(launched),
        rows_found=len(accounted),
        deadlines_met=None,
        seconds=trial.seconds(),
        detail=f"task {state}; {len(launched)} instance(s) launched, {len(running)} still "
        f"running, {workers_left} Dask worker(s)/monitor(s) up; error: {error.strip()[:240]}",
        final_state=state,
        one_line_error=one_line,
        names_setting=names_setting,
    )


# ---------------------------------------------------------------------- scenarios
def never_joins(clouds: Any, tmp: Path, backend: str) -> Outcome:
    """An instance starts and no worker ever joins: a bounded, one-line provisioning error."""
    trial = Trial.start(tmp, backend, "nojoin")
    # the default launcher is the boot script, which nothing runs on the mock: no worker
    runner = _dask_runner(_aws_provisioners(clouds, trial.owner), "dask", **_dask_options())
    result = _run_one_task(runner)
    return _judge(
        clouds,
        trial,
        "remote_never_joins",
        result,
        setting=rf"join_timeout_seconds: no Dask worker named \S+ joined .* {JOIN_TIMEOUT:g}s",
        faults=len(launched_by(clouds, trial.owner)),  # each launched instance had no worker
    )


def version_mismatch(clouds: Any, tmp: Path, backend: str) -> Outcome:
    """The instance's worker reports other versions than the flow's: refused and retired."""
    from prefect_cloudsched.adapters.execute import versions
    from prefect_cloudsched.adapters.execute.launcher import LocalWorkerLauncher

    trial = Trial.start(tmp, backend, "versions")
    launcher = LocalWorkerLauncher()
    reports: list[dict[str, Any]] = []
    real = versions.worker_versions

    def older_worker(report: Any) -> dict[str, Any]:
        """The worker's real report, as an image with another Python and cloudpickle."""
        seen = {**real(report), "python": "3.8", "cloudpickle": "0.0.1"}
        reports.append(seen)
        return seen

    runner = _dask_runner(
        _aws_provisioners(clouds, trial.owner), "dask", **_dask_options(launcher=launcher)
    )
    with mock.patch.object(versions, "worker_versions", older_worker):
        result = _run_one_task(runner)
    return _judge(
        clouds,
        trial,
        "remote_version_mismatch",
        result,
        setting=r"^CloudSchedExecutor\.container_image / python: .*versions differ.*python 3\.8",
        faults=len(reports),  # workers that reported other versions
        workers_left=len(launcher.names) + _dask_left_up(),
    )


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _refuses(port: int) -> bool:
    """Whether a connection to the loopback ``port`` is refused (the fault really held)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def no_scheduler(clouds: Any, tmp: Path, backend: str) -> Outcome:
    """``scheduler_address`` names a closed port: one line at submission, nothing started."""
    import dask

    from prefect_cloudsched.adapters.execute.settings import ExecutorSettings

    trial = Trial.start(tmp, backend, "nosched")
    port = _closed_port()
    settings = ExecutorSettings(scheduler_address=f"tcp://127.0.0.1:{port}", tls=False)
    runner = _dask_runner(_aws_provisioners(clouds, trial.owner), settings)
    with dask.config.set({"distributed.comm.timeouts.connect": CONNECT_TIMEOUT}):
        result = _run_one_task(runner)
    return _judge(
        clouds,
        trial,
        "remote_no_scheduler",
        result,
        setting=rf"^CloudSchedExecutor\.scheduler_address: .*127\.0\.0\.1:{port}",
        faults=int(_refuses(port)),
    )


@contextmanager
def _moto_validates_amis() -> Iterator[None]:
    """Turn on moto's own AMI check (``MOTO_ENABLE_AMI_VALIDATION``; the server is in-process)."""
    from moto import settings as moto_settings

    with mock.patch.object(moto_settings, "ENABLE_AMI_VALIDATION", True):
        yield


def bad_image(clouds: Any, tmp: Path, backend: str) -> Outcome:
    """``ami_per_region`` names an AMI no region has: EC2 refuses, nothing is started."""
    trial = Trial.start(tmp, backend, "badami")
    regions = clouds.aws_settings.regions
    provisioners = _aws_provisioners(
        clouds, trial.owner, ami_per_region={region: MISSING_AMI for region in regions}
    )
    runner = _dask_runner(provisioners, "dask", **_dask_options())
    with _moto_validates_amis():
        result = _run_one_task(runner)
    return _judge(
        clouds,
        trial,
        "remote_bad_image",
        result,
        setting=rf"^AwsSettings\.ami_per_region\['[a-z0-9-]+'\]: AMI {MISSING_AMI} ",
        faults=int("InvalidAMIID" in result[1]),  # EC2 (moto) itself refused the image
    )


def no_image_parameter(clouds: Any, tmp: Path, backend: str) -> Outcome:
    """``gpu_image_parameter`` names an SSM parameter the region does not publish (the default
    image path: no AMI id set): the lookup fails before any launch."""
    trial = Trial.start(tmp, backend, "nossm")
    provisioners = _aws_provisioners(clouds, trial.owner, gpu_image_parameter=MISSING_PARAMETER)
    result = _run_one_task(_dask_runner(provisioners, "dask", **_dask_options()))
    return _judge(
        clouds,
        trial,
        "remote_no_image_parameter",
        result,
        setting=r"^AwsSettings\.gpu_image_parameter: no image for .*ami_per_region",
        faults=int("ParameterNotFound" in result[1]),  # moto's SSM itself had no such name
    )


REMOTE_SCENARIOS: dict[str, Callable[..., Outcome]] = {
    "remote_never_joins": never_joins,
    "remote_version_mismatch": version_mismatch,
    "remote_no_scheduler": no_scheduler,
    "remote_bad_image": bad_image,
    "remote_no_image_parameter": no_image_parameter,
}

__all__ = [
    "REMOTE_SCENARIOS",
    "bad_image",
    "never_joins",
    "no_image_parameter",
    "no_scheduler",
    "version_mismatch",
]
