"""Who starts the Dask worker of a provisioned instance.

On a real cloud nobody here does: the instance's startup script (see
:mod:`prefect_cloudsched.adapters.execute.bootstrap`) starts it, and
:class:`BootScriptLauncher` is a no-op. In tests and local demos the "instances" are rows in a
mocked cloud, so
:class:`LocalWorkerLauncher` starts a real ``distributed`` worker on this machine with the
same name and pool resources the boot script would give it — the executor cannot tell the
difference, which is the point: placement, routing and loss handling are exercised for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prefect_cloudsched.adapters.execute.bootstrap import WorkerSpec
from prefect_cloudsched.adapters.execute.tls import worker_tls_args


@runtime_checkable
class WorkerLauncher(Protocol):
    """Starts and stops the worker of an instance when the instance itself does not."""

    def launch(self, spec: WorkerSpec) -> None:
        """Start a worker for ``spec`` (replacing a dead one of the same name)."""

    def stop(self, name: str) -> None:
        """Stop the worker called ``name`` if this launcher started it (idempotent)."""

    def close(self) -> None:
        """Stop every worker this launcher started."""


class BootScriptLauncher:
    """Real clouds: the instance's boot script starts the worker, so there is nothing to do."""

    def launch(self, spec: WorkerSpec) -> None:
        """The worker is already booting on the instance."""

    def stop(self, name: str) -> None:
        """The executor retires the worker through the scheduler; the instance powers off."""

    def close(self) -> None:
        """Nothing was started here."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BootScriptLauncher)

    def __hash__(self) -> int:
        return hash(BootScriptLauncher)


class LocalWorkerLauncher:
    """Starts each instance's worker on this machine (tests, demos, mocked clouds).

    Args:
        processes: Run each worker as a ``python -m dask worker`` subprocess (the exact
            command line the boot script runs; :meth:`kill` is a real ``SIGKILL``) instead
            of an in-process ``distributed.Worker`` (fast to start; :meth:`kill` closes it
            without draining, but the task's thread runs on to its end).
        start_timeout: Seconds to wait for an in-process worker to register.
    """

    def __init__(self, *, processes: bool = False, start_timeout: float = 60.0) -> None:
        if start_timeout <= 0:
            raise ValueError(f"start_timeout must be > 0, got {start_timeout}")
        self.processes = processes
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._workers: dict[str, Any] = {}  # name -> distributed.Worker | subprocess.Popen
        self._loop: _LoopThread | None = None
        self._logdir: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Config travels (the runner is cloudpickled); running workers never do.
        return {"processes": self.processes, "start_timeout": self.start_timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalWorkerLauncher) and (
            self.processes,
            self.start_timeout,
        ) == (other.processes, other.start_timeout)

    def __hash__(self) -> int:
        return hash((LocalWorkerLauncher, self.processes, self.start_timeout))

    @property
    def names(self) -> list[str]:
        """Workers started and not yet stopped."""
        with self._lock:
            return sorted(self._workers)

    def launch(self, spec: WorkerSpec) -> None:
        """Start the worker ``spec`` describes."""
        self.stop(spec.name)
        worker = self._start_process(spec) if self.processes else self._start_inprocess(spec)
        with self._lock:
            self._workers[spec.name] = worker

    def kill(self, name: str) -> None:
        """Make the worker vanish as if its instance were reclaimed (no draining, no goodbye).

        Raises:
            KeyError: no running worker has that name.
        """
        with self._lock:
            worker = self._workers.pop(name)
        if isinstance(worker, subprocess.Popen):
            worker.kill()
            worker.wait(timeout=30)
        else:
            self._close_inprocess(worker, reason="cloudsched-simulated-interruption")

    def stop(self, name: str) -> None:
        """Stop the worker called ``name`` if it runs here."""
        with self._lock:
            worker = self._workers.pop(name, None)
        if worker is None:
            return
        if isinstance(worker, subprocess.Popen):
            _stop_process(worker)
        else:
            self._close_inprocess(worker, reason="cloudsched-stop")

    def close(self) -> None:
        """Stop every worker started here, then the event loop that hosted them."""
        for name in self.names:
            self.stop(name)
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    # ------------------------------------------------------------------ in-process
    def _start_inprocess(self, spec: WorkerSpec) -> Any:
        import dask

        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
                _quiet_instance_console()
            loop = self._loop

        async def start() -> Any:
            with dask.config.set(_INPROCESS_CONFIG):  # read when the worker starts
                return await _started_worker(spec)

        return loop.call(start(), timeout=self.start_timeout)

    def _close_inprocess(self, worker: Any, *, reason: str) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            loop.call(
                worker.close(timeout=5, executor_wait=False, nanny=False, reason=reason),
                timeout=30,
            )

    # ------------------------------------------------------------------ subprocess
    def _start_process(self, spec: WorkerSpec) -> subprocess.Popen[bytes]:
        if self._logdir is None:
            self._logdir = Path(tempfile.mkdtemp(prefix="cloudsched-workers-"))
        log = (self._logdir / f"{spec.name}.log").open("ab")
        tls_args: list[str] = []
        if spec.tls is not None:
            files = spec.tls.write_worker_files(self._logdir / f"{spec.name}-tls")
            tls_args = worker_tls_args(
                str(files["ca.pem"]), str(files["worker.pem"]), str(files["worker-key.pem"])
            )
        try:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dask",
                    "worker",
                    *spec.cli_args(),
                    *tls_args,
                    "--no-nanny",
                    "--no-dashboard",
                    "--memory-limit",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()  # the child holds its own descriptor


def _quiet_instance_console() -> None:
    """Keep the stand-in workers' own lines out of the flow's output.

    An in-process worker stands in for an instance, and an instance's worker logs to its own
    console; here its shutdown chatter (a heartbeat racing a retirement or a simulated
    interruption, with a traceback) would land between the flow's lines. The scheduler's
    and the client's loggers, which a user of a real cluster also sees, are left as they are.
    """
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)


#: In-process workers share one interpreter with the flow and each other: per-worker
#: samplers (the statistical profiler every 10 ms, the GIL monitor every 1 ms, psutil every
#: 500 ms) would each sample the whole process and contend for the GIL with the task bodies.
_INPROCESS_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.admin.system-monitor.interval": "5s",
}


async def _started_worker(spec: WorkerSpec) -> Any:
    """A ``distributed.Worker`` for ``spec``, registered with its scheduler."""
    from distributed import Worker

    worker = Worker(
        spec.scheduler_address,
        name=spec.name,
        nthreads=spec.nthreads,
        resources=dict(spec.resources),
        death_timeout=spec.death_timeout,
        memory_limit=0,
        security=spec.tls.worker_security() if spec.tls else None,
    )
    await worker
    return worker


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class _LoopThread:
    """An asyncio loop on a daemon thread, hosting in-process workers off the caller's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="cloudsched-local-workers", daemon=True
        )
        self.thread.start()

    def call(self, coro: Any, *, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()
