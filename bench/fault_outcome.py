"""What one fault-suite scenario run measured, and the set-up and read-backs every scenario
shares (used by ``fault_suite``, ``fault_remote`` and ``fault_money``)."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    """One scenario run; every number is measured during the run."""

    scenario: str
    backend: str
    tasks: int
    tasks_ok: int
    faults_injected: int
    interruptions: int
    instances_leaked: int
    rows_expected: int
    rows_found: int
    deadlines_met: bool | None  # None: the scenario has no deadline to meet
    seconds: float
    spend_over_cap: float | None = None  # max spend ÷ hard cap; None: no cap in play
    detail: str = ""
    error: str = ""
    #: Bad-input scenarios: the task's final state, and whether its error is one line and
    #: names the setting to fix (``None``: the scenario expects no error).
    final_state: str = ""
    one_line_error: bool | None = None
    names_setting: bool | None = None

    @property
    def rows_lost(self) -> int:
        return max(0, self.rows_expected - self.rows_found)

    @property
    def error_expected(self) -> bool:
        """A bad-input scenario: the task must fail with a telling error."""
        return self.one_line_error is not None or self.names_setting is not None

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.tasks_ok == self.tasks
            and self.instances_leaked == 0
            and self.rows_lost == 0
            and self.deadlines_met is not False
            and (self.spend_over_cap is None or self.spend_over_cap <= 1.0)
            and self.one_line_error is not False
            and self.names_setting is not False
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_lost": self.rows_lost, "ok": self.ok}


def failed(scenario: str, backend: str, error: BaseException, seconds: float) -> Outcome:
    """A scenario that raised: recorded as NO with its error, never skipped."""
    line = f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return Outcome(scenario, backend, 1, 0, 0, 0, 0, 0, 0, None, seconds, error=line)


# ---------------------------------------------------------------------- ledgers per backend
def fresh_ledger(tmp: Path, backend: str) -> str:
    """A new empty ledger on ``backend``, exported for the runner and the provisioners."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / f'ledger-{uuid.uuid4().hex[:8]}.db'}"
    else:
        from prefect_cloudsched.testing.postgres import fresh_database, server_url

        url = fresh_database(server_url(), prefix="fault")
    os.environ["PREFECT_CLOUDSCHED_LEDGER_URL"] = url
    return url


@dataclass(frozen=True)
class Trial:
    """One cloud scenario's run: an owner tag of its own (so only its instances are counted on
    the shared mock clouds), a fresh ledger, and when it started."""

    backend: str
    owner: str
    ledger_url: str
    started: float

    @classmethod
    def start(cls, tmp: Path, backend: str, name: str) -> Trial:
        """Start the clock, then make the owner tag ``name-xxxxxx`` and a fresh ledger."""
        started = time.perf_counter()
        owner = f"{name}-{uuid.uuid4().hex[:6]}"
        return cls(backend, owner, ledger_url=fresh_ledger(tmp, backend), started=started)

    def seconds(self) -> float:
        """Seconds since the trial started."""
        return time.perf_counter() - self.started


def ledger_rows(ledger_url: str) -> list[Any]:
    """Every placement row the ledger at ``ledger_url`` holds (its engine closed after)."""
    from prefect_cloudsched.adapters.ledger import Ledger

    ledger = Ledger(ledger_url)
    try:
        return ledger.placements()
    finally:
        ledger.dispose()


def launched_by(clouds: Any, owner: str) -> list[str]:
    """Instance ids moto started with ``owner``'s tag (running or not)."""
    from prefect_cloudsched.adapters.provision.base import OWNER_TAG

    found = []
    for instance_id, region in clouds.moto.launched.items():
        model = clouds.moto.backend(region).get_instance(instance_id)
        if {t["key"]: t["value"] for t in model.get_tags()}.get(OWNER_TAG) == owner:
            found.append(instance_id)
    return found


# ---------------------------------------------------------------------- cloud scenarios
#: Tasks estimate 1 s, replacement takes ~1 s: a 30 s deadline leaves room for two lost spot
#: attempts and their re-placements, and is missed if recovery stalls.
EST_RUNTIME = timedelta(seconds=1)
DEADLINE = timedelta(seconds=30)
CHANGE_OVER = timedelta(seconds=1)


def cloud_runner(provisioners: dict[str, Any] | None, policy: Any = None, **config: Any) -> Any:
    """The runner of a scenario on ``MockClouds`` (4 workers, 2 spot retries, untagged)."""
    from prefect_cloudsched import CloudSchedTaskRunner
    from prefect_cloudsched.core.policy import PolicyConfig
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor

    # Stand-in clouds have no machine to run a body on: the stand-in executor runs it here.
    return CloudSchedTaskRunner(
        max_workers=4,
        provisioners=provisioners,
        executor=InstanceStandInExecutor(),
        policy=policy or PolicyConfig(change_over=CHANGE_OVER, **config),
        spot_retries=2,
        label_task_runs=False,
    )


def deadlines_met(rows: list[Any], submitted: datetime) -> bool:
    """Every completed task ended within ``DEADLINE`` of the flow's submission."""
    done = [r for r in rows if r.state == "completed"]
    return bool(done) and max(r.ended_at for r in done) - submitted <= DEADLINE


def cloud_outcome(
    clouds: Any,
    trial: Trial,
    scenario: str,
    rows: list[Any],
    submitted: datetime,
    *,
    leaked_besides: int = 0,
    **figures: Any,
) -> Outcome:
    """What every cloud scenario measures the same way: instances of its owner still running
    (plus ``leaked_besides``), the ledger rows found, every deadline met, the seconds taken."""
    return Outcome(
        scenario=scenario,
        backend=trial.backend,
        instances_leaked=len(clouds.running_instances(owner_id=trial.owner)) + leaked_besides,
        rows_found=len(rows),
        deadlines_met=deadlines_met(rows, submitted),
        seconds=trial.seconds(),
        **figures,
    )


__all__ = [
    "CHANGE_OVER",
    "DEADLINE",
    "EST_RUNTIME",
    "Outcome",
    "Trial",
    "cloud_outcome",
    "cloud_runner",
    "deadlines_met",
    "failed",
    "fresh_ledger",
    "launched_by",
    "ledger_rows",
]
