"""What a flow run shows in the Prefect UI: cost artifacts and ``cloudsched.*`` events.

* At the end of a flow run the runner publishes a table artifact (one row per placement,
  key ``cloudsched-cost-<flow-name>``) and a markdown summary (spend, on-demand baseline,
  saving; key ``cloudsched-cost-summary-<flow-name>``), both linked to the flow run.
* While it runs it emits ``cloudsched.placement.decided``, ``cloudsched.spot.interrupted``
  and ``cloudsched.budget.exceeded`` events with the flow run and task run as related
  resources, so automations can react (e.g. notify on a budget overrun).

Events go through Prefect's buffered events worker (no API round trip in the task's
thread). Artifacts use the synchronous client, which works the same under sync and async
flows. Nothing here may fail a flow: errors are logged as warnings. Payloads carry only
the decision (offers, costs, needs) and never a setting or secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from prefect.events import emit_event

from prefect_cloudsched.core.budget import Overrun
from prefect_cloudsched.core.policy import Decision
from prefect_cloudsched.core.records import PlacementRecord, to_usd
from prefect_cloudsched.core.report import build_report, render_markdown

EVENT_DECIDED = "cloudsched.placement.decided"
EVENT_INTERRUPTED = "cloudsched.spot.interrupted"
EVENT_BUDGET = "cloudsched.budget.exceeded"
EVENT_ROWS_DEFERRED = "cloudsched.ledger.deferred"

_logger = logging.getLogger("prefect_cloudsched.prefect.visibility")


def slugify(text: str) -> str:
    """Lowercase letters, digits and single dashes (what artifact keys allow)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "flow"


def artifact_keys(flow_name: str) -> tuple[str, str]:
    """Keys of the table and the markdown artifact of a flow."""
    slug = slugify(flow_name)
    return f"cloudsched-cost-{slug}", f"cloudsched-cost-summary-{slug}"


# --------------------------------------------------------------------------- artifacts
def cost_table(records: Iterable[PlacementRecord]) -> list[dict[str, Any]]:
    """One row per placement, in start order (money as USD floats for the UI table)."""
    rows = []
    for r in sorted(records, key=lambda r: r.started_at):
        rows.append(
            {  # what a reader scans first comes first; ids last
                "task": r.task_name,
                "option": r.option,
                "cloud": r.cloud,
                "region": r.zone or r.region,
                "instance_type": r.instance_type,
                "gpus": f"{r.gpus}x{r.gpu_type}" if r.gpus else "",
                "runtime_s": round(r.runtime_s, 3),
                "cost_usd": float(to_usd(r.cost_micro)),
                "baseline_usd": float(to_usd(r.baseline_micro)),
                "saving_usd": float(to_usd(r.baseline_micro - r.cost_micro)),
                "usd_per_hour": float(to_usd(r.price_micro_per_hour)),
                "state": r.state,
                "interrupted": bool(r.interruptions),
                "instance_id": r.instance_id or "",
                "task_run_id": r.task_run_id,
            }
        )
    return rows


def cost_summary(
    records: Sequence[PlacementRecord], flow_name: str, refusals: Sequence[str] = ()
) -> str:
    """Markdown: totals in one sentence, then the per-task report table."""
    report = build_report(records, group_by="task")
    total = report.total
    pct = "" if total.savings_pct is None else f" ({total.savings_pct:.1f}%)"
    lines = [
        f"# Cost of `{flow_name}`",
        "",
        f"Spent **${total.spend:.6f}** on {total.tasks} placement(s) vs an on-demand "
        f"baseline of ${total.baseline:.6f}: saved **${total.savings:.6f}**{pct}; "
        f"{total.interruptions} spot interruption(s).",
        "",
        render_markdown(report),
    ]
    if refusals:
        lines += ["## Refused by the budget", "", *(f"- {line}" for line in refusals), ""]
    return "\n".join(lines)


def publish_cost_artifacts(
    records: Sequence[PlacementRecord],
    *,
    flow_run_id: str | None,
    flow_name: str,
    refusals: Sequence[str] = (),
) -> list[UUID]:
    """Create the table and markdown artifacts of one flow run; never raises.

    Returns:
        The ids of the created artifacts (empty if there was nothing to show or the API
        could not be reached, which is logged as a warning).
    """
    if not records and not refusals:
        return []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    table_key, summary_key = artifact_keys(flow_name)
    run_id = _uuid(flow_run_id)
    created: list[UUID] = []
    try:
        with get_client(sync_client=True) as client:
            for key, kind, data, description in (
                (
                    table_key,
                    "table",
                    cost_table(records),
                    "Placements and costs (prefect-cloudsched).",
                ),
                (
                    summary_key,
                    "markdown",
                    cost_summary(records, flow_name, refusals),
                    "Spend vs the on-demand baseline (prefect-cloudsched).",
                ),
            ):
                artifact = client.create_artifact(
                    ArtifactCreate(
                        key=key,
                        type=kind,
                        data=data,
                        description=description,
                        flow_run_id=run_id,
                    )
                )
                created.append(artifact.id)
    except Exception as err:  # a UI nicety must never fail the flow
        _logger.warning("could not publish the cost artifacts of %s: %s", flow_name, err)
    return created


# --------------------------------------------------------------------------- events
def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


def is_run_id(value: str | None) -> bool:
    """Whether ``value`` is a Prefect run id (placeholders such as ``no-flow-run`` are not)."""
    return _uuid(value) is not None


def _related(flow_run_id: str | None, task_run_id: str | None) -> list[dict[str, str]]:
    related = []
    if _uuid(flow_run_id):
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
            }
        )
    if _uuid(task_run_id):
        related.append(
            {
                "prefect.resource.id": f"prefect.task-run.{task_run_id}",
                "prefect.resource.role": "task-run",
            }
        )
    return related


def _offer_resource(decision: Decision) -> dict[str, str]:
    offer = decision.offer
    return {
        "prefect.resource.id": f"cloudsched.offer.{offer.key}",
        "prefect.resource.name": offer.describe(),
        "cloudsched.cloud": offer.cloud,
        "cloudsched.option": offer.option.value,
    }


def _emit(
    event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict
) -> None:
    try:
        emit_event(event, resource=resource, related=related, payload=payload)
    except Exception as err:  # events are best effort, the task goes on
        _logger.warning("could not emit %s: %s", event, err)


def emit_decided(
    decision: Decision, *, task_name: str, flow_run_id: str, task_run_id: str, attempt: int
) -> None:
    """``cloudsched.placement.decided``: where a task attempt runs, and why."""
    _emit(
        EVENT_DECIDED,
        _offer_resource(decision),
        _related(flow_run_id, task_run_id),
        {**decision.to_dict(), "task": task_name, "attempt": attempt},
    )


def emit_interrupted(
    decision: Decision,
    *,
    task_name: str,
    flow_run_id: str,
    task_run_id: str,
    instance_id: str | None,
    wasted_usd: float,
) -> None:
    """``cloudsched.spot.interrupted``: a spot instance was reclaimed under a task."""
    _emit(
        EVENT_INTERRUPTED,
        _offer_resource(decision),
        _related(flow_run_id, task_run_id),
        {
            "task": task_name,
            "offer": decision.offer.key,
            "instance_id": instance_id,
            "wasted_usd": wasted_usd,
        },
    )


def emit_budget_exceeded(
    overrun: Overrun,
    *,
    refused: bool,
    decision: Decision,
    task_name: str,
    flow_run_id: str,
    task_run_id: str,
) -> None:
    """``cloudsched.budget.exceeded``: a placement crossed (soft) or hit (hard) a cap."""
    _emit(
        EVENT_BUDGET,
        {
            "prefect.resource.id": f"cloudsched.budget.{overrun.cap}",
            "prefect.resource.name": overrun.cap,
        },
        _related(flow_run_id, task_run_id),
        {
            **overrun.to_dict(),
            "refused": refused,
            "task": task_name,
            "decision": decision.to_dict(),
        },
    )


def _task_ids(task: Any) -> dict[str, str]:
    """How every event names the task attempt it is about."""
    return {
        "task_name": task.task_name,
        "flow_run_id": task.flow_run_id,
        "task_run_id": task.task_run_id,
    }


class PrefectObserver:
    """The runtime's observer under Prefect: task-run log lines and ``cloudsched.*`` events."""

    def log(self, message: str, level: str = "info") -> None:
        from prefect_cloudsched.prefect.run_log import log

        log(message, level=level)

    def decided(self, decision: Decision, *, task: Any, attempt: int) -> None:
        emit_decided(decision, **_task_ids(task), attempt=attempt)

    def interrupted(
        self, decision: Decision, *, task: Any, instance_id: str | None, wasted_usd: float
    ) -> None:
        emit_interrupted(
            decision, **_task_ids(task), instance_id=instance_id, wasted_usd=wasted_usd
        )

    def budget_exceeded(
        self, overrun: Overrun, *, refused: bool, decision: Decision, task: Any
    ) -> None:
        emit_budget_exceeded(
            overrun,
            refused=refused,
            decision=decision,
            **_task_ids(task),
        )

    def rows_deferred(self, count: int, detail: str) -> None:
        message = f"{count} ledger row(s) could not be written now: {detail}"
        self.log(message, "warning")
        _logger.warning(message)
        _emit(
            EVENT_ROWS_DEFERRED,
            {"prefect.resource.id": "cloudsched.ledger", "prefect.resource.name": "ledger"},
            [],
            {"rows": count, "detail": detail},
        )
