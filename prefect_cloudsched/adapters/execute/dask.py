"""``DaskExecutor``: each task body runs on the Dask worker that lives on its placement's instance.

Before (bodies run in the flow's process, placements are accounting only):

```python
@flow(task_runner=CloudSchedTaskRunner(provisioners=make_provisioners()))
def pipeline(): ...
```

After (every provisioned instance boots a Dask worker; each body runs on its instance):

```python
@flow(task_runner=CloudSchedTaskRunner(
    provisioners=make_provisioners(),
    executor="dask",
    executor_options={"address": "tls://scheduler.internal:8786"},
))
def pipeline(): ...
```

How a body gets to its instance: the instance's boot script starts ``dask worker`` named
after the instance id and advertising one resource, its pool (``pool-aws-us-east-1a-g5.xlarge-
spot=1``). ``attach()`` waits (bounded) for that worker to join; ``run()`` submits the
cloudpickled body pinned to that worker with ``resources={pool: slots}``. The Prefect engine
stays in the flow's process (state, retries, UI graph untouched); only the body and its
inputs travel, and only its result comes back — so workers need no Prefect API access and no
cloud credentials.

Losing the worker while the body runs (spot reclaim, instance gone, ``KilledWorker``,
``CommClosedError``, a cancelled future) raises
:class:`~prefect_cloudsched.errors.SpotInterrupted`, the same error the provisioning path
raises, so Prefect retries the task and the runner re-places it. Workers idle for
``idle_timeout`` are retired; ``stop()`` retires ours, closes the client and any cluster we
started.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, TypeVar

try:
    import cloudpickle
    from distributed import Client, LocalCluster
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker
except ImportError as _missing:  # one line naming the [dask] extra, not a traceback
    from prefect_cloudsched._extras import missing_extra

    raise missing_extra(_missing, 'executor="dask"') from None

from prefect_cloudsched.adapters.execute.base import Placement
from prefect_cloudsched.adapters.execute.bootstrap import (
    WORKER_LOG,
    BootstrapConfig,
    WorkerSpec,
    pool_name,
    slots_needed,
    startup_script,
)
from prefect_cloudsched.adapters.execute.launcher import BootScriptLauncher, WorkerLauncher
from prefect_cloudsched.adapters.execute.tls import TlsMaterial
from prefect_cloudsched.adapters.execute.versions import WorkerVersionMismatch, check_worker
from prefect_cloudsched.adapters.provision.base import InstanceHandle
from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.errors import ProvisioningError, SpotInterrupted

R = TypeVar("R")

logger = logging.getLogger("prefect_cloudsched.adapters.execute.dask")
#: How often a worker that has not joined yet is reported (a warning: it reaches stderr).
JOIN_PROGRESS_S = 60.0

#: A scheduler we start ourselves: in this process, no workers (only placements' workers
#: join), TCP so real instances could dial it, no dashboard unless asked for.
DEFAULT_CLUSTER_KWARGS: dict[str, Any] = {
    "n_workers": 0,
    "processes": False,
    "protocol": "tcp://",
    "host": "127.0.0.1",
    "scheduler_port": 0,
    "dashboard_address": None,
}

_LOSS_ERRORS = (KilledWorker, CommClosedError, CancelledError)
#: Bodies (function + inputs, pickled) at least this large are scattered, not put in the graph.
SCATTER_BYTES = 1 << 20


class DaskExecutor:
    """Runs each task body on the Dask worker of its placement's instance.

    Args:
        address: Scheduler to connect to (``tcp://host:8786``). ``None`` starts a
            ``LocalCluster`` with no workers in this process when the flow starts.
        cluster_kwargs: Overrides for that ``LocalCluster`` (``host="0.0.0.0"``,
            ``scheduler_port=8786``, ``dashboard_address=":8787"``, ``security=...``).
        client_kwargs: Extra ``distributed.Client`` arguments (e.g. ``security=``).
        worker_scheduler_address: The scheduler address as seen *from the instances*
            (``None`` = the address we connect to).
        launcher: Starts workers the instances do not start themselves (``None`` = the boot
            script does: :class:`~prefect_cloudsched.adapters.execute.launcher.BootScriptLauncher`).
        bootstrap: How boot scripts prepare Python on the instance.
        worker_args: Extra ``dask worker`` options for boot scripts (TLS files, ...).
        join_timeout: Seconds to wait for an instance's worker to join (boot + install).
        idle_timeout: Seconds a worker may sit idle before it is retired (0 = at once).
        death_timeout: Seconds a worker waits for a lost scheduler before exiting (and its
            instance powering off).
        monitor_interval: Seconds between worker liveness sweeps and idle checks.
        tls: ``True`` = a fresh CA and certificates for this flow run (our own scheduler
            requires them; workers get theirs in the boot script); a
            :class:`~prefect_cloudsched.adapters.execute.tls.TlsMaterial` = these (an
            existing TLS scheduler); ``False`` = plaintext (loopback only).
        check_versions: Refuse a worker whose Python or packages differ from the flow's.

    Raises:
        ValueError: conflicting or out-of-range options.
    """

    name = "dask"
    runs_on_instance = True

    def __init__(
        self,
        address: str | None = None,
        *,
        cluster_kwargs: Mapping[str, Any] | None = None,
        client_kwargs: Mapping[str, Any] | None = None,
        worker_scheduler_address: str | None = None,
        launcher: WorkerLauncher | None = None,
        bootstrap: BootstrapConfig | None = None,
        worker_args: Sequence[str] = (),
        join_timeout: float = 600.0,
        idle_timeout: float = 60.0,
        death_timeout: float = 300.0,
        monitor_interval: float = 1.0,
        tls: bool | TlsMaterial = False,
        check_versions: bool = True,
    ) -> None:
        if address is not None and cluster_kwargs:
            raise ValueError("pass either address (an existing scheduler) or cluster_kwargs")
        for option, value, low in (
            ("join_timeout", join_timeout, 0.0),
            ("death_timeout", death_timeout, 0.0),
            ("monitor_interval", monitor_interval, 0.0),
        ):
            if value <= low:
                raise ValueError(f"{option} must be > {low:g}, got {value}")
        if idle_timeout < 0:
            raise ValueError(f"idle_timeout must be >= 0, got {idle_timeout}")
        self._config: dict[str, Any] = dict(
            address=address,
            cluster_kwargs=dict(cluster_kwargs or {}),
            client_kwargs=dict(client_kwargs or {}),
            worker_scheduler_address=worker_scheduler_address,
            launcher=launcher if launcher is not None else BootScriptLauncher(),
            bootstrap=bootstrap or BootstrapConfig(),
            worker_args=tuple(worker_args),
            join_timeout=join_timeout,
            idle_timeout=idle_timeout,
            death_timeout=death_timeout,
            monitor_interval=monitor_interval,
            tls=tls,
            check_versions=check_versions,
        )
        self._session: _Session | None = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DaskExecutor) and other._config == self._config

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        return {"_config": self._config, "_session": None}  # clients never travel

    @property
    def launcher(self) -> WorkerLauncher:
        """The launcher in use (tests reach it to kill a worker)."""
        return self._config["launcher"]

    @property
    def client(self) -> Client:
        """The live client (only between ``start()`` and ``stop()``)."""
        return self._live().client

    # ------------------------------------------------------------------ Executor protocol
    def start(self) -> None:
        """Connect to the scheduler (starting a ``LocalCluster`` when no address is given).

        Raises:
            RuntimeError: already started (one flow run per executor instance at a time;
                pass ``executor="dask"`` to the runner to get one per run).
        """
        if self._session is not None:
            raise RuntimeError("this DaskExecutor is already running a flow")
        cfg = self._config
        material = TlsMaterial.generate() if cfg["tls"] is True else cfg["tls"] or None
        client_kwargs = dict(cfg["client_kwargs"])
        cluster_kwargs = {**DEFAULT_CLUSTER_KWARGS, **cfg["cluster_kwargs"]}
        if material is not None:
            client_kwargs["security"] = material.security()
            cluster_kwargs.update(protocol="tls://", security=material.security())
        cluster = None
        try:
            if cfg["address"] is None:
                cluster = LocalCluster(**cluster_kwargs)
                target: Any = cluster
            else:
                target = cfg["address"]
            client = Client(target, set_as_default=False, **client_kwargs)
        except BaseException as err:
            if cluster is not None:
                cluster.close()
            if isinstance(err, OSError | TimeoutError) and cfg["address"] is not None:
                raise ProvisioningError(
                    f"CloudSchedExecutor.scheduler_address: cannot reach the Dask scheduler "
                    f"at {cfg['address']} ({type(err).__name__}); start it, or check the "
                    "address, the tunnel and the TLS files"
                ) from None
            raise
        self._session = _Session(
            client=client,
            cluster=cluster,
            launcher=cfg["launcher"],
            contact_address=cfg["worker_scheduler_address"] or client.scheduler.address,
            idle_timeout=cfg["idle_timeout"],
            monitor_interval=cfg["monitor_interval"],
            tls=material,
            check_versions=cfg["check_versions"],
        )

    def stop(self) -> None:
        """Retire our workers, close the client and any cluster we started (never raises)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def startup_script(self, offer: Offer, run_id: str) -> str | None:
        """The boot script that starts this offer's pool worker on a new instance."""
        session = self._live()
        cfg = self._config
        return startup_script(
            offer,
            scheduler_address=session.contact_address,
            run_id=run_id,
            config=cfg["bootstrap"],
            death_timeout=cfg["death_timeout"],
            extra_worker_args=cfg["worker_args"],
            tls=session.tls,
        )

    def attach(self, handle: InstanceHandle, placement: Placement) -> None:
        """Make sure the instance's worker has joined (launching it locally if we must).

        Raises:
            ProvisioningError: the worker did not join within ``join_timeout``, or joined
                without the pool resource its placement needs.
        """
        cfg = self._config
        session = self._live()
        spec = WorkerSpec.for_offer(
            placement.decision.offer,
            scheduler_address=session.contact_address,
            name=handle.instance_id,
            death_timeout=cfg["death_timeout"],
            extra_args=cfg["worker_args"],
            tls=session.tls,
        )
        session.attach(spec, timeout=cfg["join_timeout"])

    def raise_flag(self, name: str) -> None:
        """Set the cluster-wide flag ``name`` (a ``distributed.Event``) that bodies on the
        workers can read: how a move request reaches a body on an instance."""
        from distributed import Event

        Event(name, client=self._live().client).set()

    def lower_flag(self, name: str) -> None:
        """Clear the flag ``name`` (a new attempt starts: an old request is void)."""
        from distributed import Event

        Event(name, client=self._live().client).clear()

    def detach(self, handle: InstanceHandle) -> None:
        """The instance's task is over: its worker starts counting idle time."""
        self._live().detach(handle.instance_id)

    def run(self, call: Callable[[], R], placement: Placement) -> R:
        """Run ``call`` on the worker of ``placement``'s instance and return its result.

        Without an instance (no provisioner for the cloud) the body runs on any worker.

        Raises:
            SpotInterrupted: the worker was lost while the body ran.
            TypeError: the body, its inputs or its result cannot be pickled.
        """
        return self._live().run(call, placement)

    def _live(self) -> _Session:
        if self._session is None:
            raise RuntimeError("DaskExecutor is not started (the task runner starts it)")
        return self._session


@dataclass(eq=False, repr=False, kw_only=True)
class _Session:
    """One flow run's connection: the client, our workers and the watchers of running bodies.

    A live connection: compared by identity, and not ``repr``-ed field by field (the client's
    repr asks the scheduler).
    """

    client: Client
    cluster: LocalCluster | None
    launcher: WorkerLauncher
    contact_address: str
    idle_timeout: float
    monitor_interval: float
    tls: TlsMaterial | None = None
    check_versions: bool = True

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._address: dict[str, str] = {}  # worker (instance) name -> worker address
        self._busy: Counter[str] = Counter()
        self._idle_since: dict[str, float] = {}
        self._lost: set[str] = set()  # addresses the scheduler removed
        self._watches: dict[str, set[threading.Event]] = {}
        self._closing = threading.Event()
        self.client.subscribe_topic("all", self._on_event)
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="cloudsched-dask-monitor", daemon=True
        )
        self._monitor.start()

    # ------------------------------------------------------------------ workers
    def attach(self, spec: WorkerSpec, *, timeout: float) -> None:
        name = spec.name
        with self._lock:
            self._busy[name] += 1
            self._idle_since.pop(name, None)
            address = self._address.get(name)
            if address is not None and address not in self._lost:
                return
        try:
            self.launcher.launch(spec)
            address = self._wait_for_worker(name, next(iter(spec.resources)), timeout)
            if self.check_versions:
                self._vet(address, name)
        except BaseException:
            self.detach(name)
            raise
        with self._lock:
            self._address[name] = address

    def _vet(self, address: str, name: str) -> None:
        """Refuse (retire) a worker whose versions differ from the flow's."""
        try:
            check_worker(self.client, address, name)
        except WorkerVersionMismatch:
            with contextlib.suppress(Exception):  # it powers its instance off on exit
                self.client.retire_workers(workers=[address], close_workers=True)
            with contextlib.suppress(Exception):
                self.launcher.stop(name)
            raise

    def detach(self, name: str) -> None:
        with self._lock:
            self._busy[name] -= 1
            if self._busy[name] > 0:
                return
            del self._busy[name]
            self._idle_since[name] = time.monotonic()

    def _wait_for_worker(self, name: str, pool: str, timeout: float) -> str:
        started = time.monotonic()
        deadline = started + timeout
        next_note = started + JOIN_PROGRESS_S
        pause = 0.05
        while True:
            workers = self.client.scheduler_info(n_workers=-1)["workers"]
            for address, info in workers.items():
                if str(info.get("name")) != name or address in self._lost:
                    continue
                if pool not in (info.get("resources") or {}):
                    raise ProvisioningError(
                        f"Dask worker {name} joined without resource {pool}; start it with "
                        f'`dask worker ... --resources "{pool}=<slots>"`'
                    )
                return address
            if time.monotonic() >= deadline:
                raise ProvisioningError(
                    f"join_timeout_seconds: no Dask worker named {name} joined "
                    f"{self.contact_address} within {timeout:g}s; check that the instance can "
                    "reach the scheduler (its port in the security group / firewall) and read "
                    f"{WORKER_LOG} on it, or raise join_timeout_seconds for slow boots"
                )
            if time.monotonic() >= next_note:  # a silent wait of minutes looks like a hang
                next_note += JOIN_PROGRESS_S
                waited = f"{time.monotonic() - started:.0f} s of join_timeout_seconds={timeout:g}"
                logger.warning(
                    f"still waiting for the Dask worker of {name} to join {self.contact_address}"
                    f" ({waited}; a boot with an install takes minutes); mock clouds start "
                    "none: give executor_options launcher=LocalWorkerLauncher() (the demo's)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    # ------------------------------------------------------------------ bodies
    def run(self, call: Callable[[], R], placement: Placement) -> R:
        payload: Any = _pack(call)
        decision = placement.decision
        key = f"cloudsched-body-{placement.task_run_id}-{placement.attempt}-{uuid.uuid4().hex[:8]}"
        instance = placement.instance_id
        if instance is None:
            self._require_some_worker(decision.offer)
            payload = self._scatter_if_large(payload, None, placement)
            future = self.client.submit(_RUN_BODY, payload, key=key, pure=False)
            return self._result(future, None, placement)
        with self._lock:
            address = self._address.get(instance)
        if address is None:
            raise RuntimeError(f"instance {instance} has no attached Dask worker")
        offer = decision.offer
        payload = self._scatter_if_large(payload, address, placement)
        future = self.client.submit(
            _RUN_BODY,
            payload,
            key=key,
            pure=False,
            workers=[address],
            allow_other_workers=False,
            resources={pool_name(offer): slots_needed(decision.needs, offer)},
        )
        return self._result(future, address, placement)

    def _scatter_if_large(self, payload: bytes, address: str | None, placement: Placement) -> Any:
        """A large body (its inputs: a dataset, a model) is sent as data, not in the task
        graph: the scheduler then forwards it to the one worker that needs it instead of
        holding it in the graph (Dask warns about graphs over a few MiB)."""
        if len(payload) < SCATTER_BYTES:
            return payload
        workers = [address] if address is not None else None
        try:
            return self.client.scatter(payload, workers=workers, hash=False)
        except _LOSS_ERRORS as err:  # the worker left while its inputs travelled
            raise _interrupted(placement, f"{type(err).__name__}: {err}") from err

    def _require_some_worker(self, offer: Offer) -> None:
        """An unplaced body on our own worker-less scheduler would wait forever: say so."""
        if self.cluster is not None and not self.cluster.scheduler.workers:
            raise ProvisioningError(
                f"no instance was started for this task ({offer.cloud} has no provisioner) "
                f"and the executor's own Dask scheduler has no workers; pass "
                f"provisioners={{'{offer.cloud}': ...}} to the runner, or executor_options "
                f"address= (a cluster with workers) or cluster_kwargs n_workers=N"
            )

    def _result(self, future: Any, address: str | None, placement: Placement) -> Any:
        done = threading.Event()
        if address is not None:
            with self._lock:
                self._watches.setdefault(address, set()).add(done)
                if address in self._lost:
                    done.set()
        future.add_done_callback(lambda _: done.set())
        try:
            done.wait()
        finally:
            if address is not None:
                with self._lock:
                    self._watches.get(address, set()).discard(done)
        if not future.done():  # woken by the loss of the worker, not by the body
            future.cancel()
            raise _interrupted(placement, f"worker {address} left the cluster")
        try:
            packed = future.result()
        except _LOSS_ERRORS as err:
            raise _interrupted(placement, f"{type(err).__name__}: {err}") from err
        return cloudpickle.loads(packed)

    # ------------------------------------------------------------------ loss and idleness
    def _on_event(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and "worker" in msg:
            self._mark_lost([msg["worker"]])

    def _mark_lost(self, addresses: Sequence[str]) -> None:
        with self._lock:
            for address in addresses:
                self._lost.add(address)
                for done in self._watches.get(address, ()):
                    done.set()

    def _monitor_loop(self) -> None:
        while not self._closing.wait(self.monitor_interval):
            try:
                self._sweep()
            except Exception as err:  # a transient scheduler hiccup must not kill the monitor
                logger.debug("dask monitor sweep failed: %s", err)

    def _sweep(self) -> None:
        with self._lock:
            watched = [a for a, w in self._watches.items() if w and a not in self._lost]
        if watched:  # events can be missed on reconnects; the scheduler's list cannot
            present = set(self.client.scheduler_info(n_workers=-1)["workers"])
            self._mark_lost([a for a in watched if a not in present])
        now = time.monotonic()
        with self._lock:
            idle = [n for n, t in self._idle_since.items() if now - t >= self.idle_timeout]
            retire = []
            for name in idle:
                del self._idle_since[name]
                address = self._address.pop(name, None)
                if address is not None and address not in self._lost:
                    retire.append(address)
        self._retire(retire, idle)

    def _retire(self, addresses: list[str], names: list[str]) -> None:
        if addresses:
            self.client.retire_workers(workers=addresses, close_workers=True)
        for name in names:
            self.launcher.stop(name)

    def close(self) -> None:
        self._closing.set()
        self._monitor.join(timeout=10)
        with self._lock:
            names = sorted(set(self._address) | set(self._idle_since) | set(self._busy))
            addresses = [a for a in self._address.values() if a not in self._lost]
            self._address.clear()
            self._idle_since.clear()
            self._busy.clear()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("retire workers", lambda: self._retire(addresses, names)),
            ("close launcher", self.launcher.close),
            ("unsubscribe", lambda: self.client.unsubscribe_topic("all")),
            ("close client", self.client.close),
        ]
        if self.cluster is not None:
            steps.append(("close cluster", self.cluster.close))
        for what, step in steps:
            try:
                step()
            except Exception as err:  # keep tearing down; instances are released anyway
                logger.warning("dask executor: could not %s: %s", what, err)


def _interrupted(placement: Placement, reason: str) -> SpotInterrupted:
    offer = placement.decision.offer
    instance = placement.instance_id or "unknown-instance"
    return SpotInterrupted(
        instance,
        offer.key,
        f"the Dask worker of {instance} ({offer.key}) was lost while the task ran: {reason}",
    )


def _pack(call: Callable[[], Any]) -> bytes:
    try:
        return cloudpickle.dumps(call)
    except Exception as err:
        raise TypeError(
            f"the task's function or its inputs cannot be pickled to travel to a Dask worker "
            f"({type(err).__name__}: {err}); pass plain data (paths, ids, arrays) instead"
        ) from err


def _make_body_runner() -> Callable[[bytes], bytes]:
    """The worker-side wrapper, built in a closure so cloudpickle ships it by value.

    Workers then need only ``distributed`` and the task's own imports, not this package.
    """

    def run_body(payload: bytes) -> bytes:
        import cloudpickle

        result = cloudpickle.loads(payload)()
        try:
            return cloudpickle.dumps(result)
        except Exception as err:
            raise TypeError(
                f"the task returned a {type(result).__name__} that cannot be pickled to "
                f"travel back from its Dask worker ({type(err).__name__}: {err}); return "
                "plain data, or save the object and return its path"
            ) from None

    return run_body


_RUN_BODY = _make_body_runner()
