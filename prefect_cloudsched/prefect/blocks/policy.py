"""The ``CloudSchedPolicy`` block: placement limits, budgets and capacity-planning knobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, ValidationError, field_validator, model_validator

from prefect_cloudsched.core.budget import BudgetPolicy
from prefect_cloudsched.core.needs import normalize_gpu_type
from prefect_cloudsched.core.policy import PolicyConfig
from prefect_cloudsched.core.policy.config import PACK_MIN_SAVING_PCT, PACK_MIN_SAVING_USD
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.prefect.blocks._common import (
    SpotBand,
    _check_regions,
    _CloudSchedBlock,
)
from prefect_cloudsched.runtime.spot_settings import (
    CHANGE_OVER_S,
    EGRESS_USD,
    END_S,
    HORIZON_S,
    SpotControlSettings,
)


class PolicyValueError(ValidationError, InputError):
    """A bad ``CloudSchedPolicy`` value, said in one line naming the field and the fix.

    Still a pydantic ``ValidationError`` (``errors()`` lists every problem) for code that
    catches that; its text is the first problem on one line, not pydantic's multi-line dump.
    """

    def __str__(self) -> str:
        problems = self.errors()
        first = problems[0]
        field = ".".join(str(part) for part in first["loc"]) or "values"
        message = first["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        got = "" if first["type"] == "value_error" else f", got {first['input']!r}"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"CloudSchedPolicy {field}: {message}{got}{more}"


# The three budget caps: each optional, positive and in USD; only who spends when differs.
def _budget_cap_field(spending: str) -> Any:
    return Field(default=None, gt=0, description=f"Most {spending}, in USD (empty = no cap).")


class CloudSchedPolicy(_CloudSchedBlock, Block):
    """Where tasks may run, how much they may cost, and how capacity is planned.

    The task runner reads it at the start of every flow run: placement limits (clouds,
    regions, GPU types, spot risk), budget caps per flow run, day and month with hard or
    soft enforcement, and the settings the capacity planner uses.

    Example:
        ```python
        from prefect_cloudsched import CloudSchedPolicy
        policy = CloudSchedPolicy.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "CloudSched Policy"
    _block_type_slug = "cloudsched-policy"

    objective: Literal["cost", "cost_carbon"] = Field(
        default="cost",
        description="What the capacity plan minimises: cost, or cost plus a carbon price.",
    )
    carbon_usd_per_tonne: float = Field(
        default=0.0,
        ge=0,
        description="Carbon price in USD per tonne of CO2 (used with the cost_carbon objective).",
    )
    budget_per_run_usd: float | None = _budget_cap_field("a single flow run may spend")
    budget_per_day_usd: float | None = _budget_cap_field("all flow runs may spend per UTC day")
    budget_per_month_usd: float | None = _budget_cap_field(
        "all flow runs may spend per UTC calendar month"
    )
    budget_enforcement: Literal["hard", "soft"] = Field(
        default="hard",
        description=(
            "hard: a placement whose hold (twice its expected cost) would cross a cap is "
            "refused, and a task running past its hold is stopped; "
            "soft: it runs and a cloudsched.budget.exceeded event is emitted."
        ),
    )
    on_budget: Literal["fail", "cheapest"] = Field(
        default="fail",
        description=(
            "With a hard cap, fail the task, or first try the cheapest offer the task's "
            "hardware allows (spot despite deadline risk) if that fits the cap."
        ),
    )
    spot_max_share: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Largest share of a flow run's placements that may use spot (0 to 1).",
    )
    default_deadline_slack_hours: float | None = Field(
        default=None,
        gt=0,
        description=(
            "Tasks without a deadline get one: their estimated runtime plus this many hours."
        ),
    )
    allowed_clouds: list[Literal["aws", "gcp"]] | None = Field(
        default=None, description="Only these clouds (unset = all)."
    )
    allowed_regions: list[str] | None = Field(
        default=None, description="Only these regions, as named by their cloud (unset = all)."
    )
    allowed_gpu_types: list[str] | None = Field(
        default=None, description="Only these GPU models, e.g. A10G, L4 (unset = all)."
    )
    reserved_first: bool = Field(
        default=True, description="Use idle reserved capacity before any other offer."
    )
    max_spot_band: SpotBand | None = Field(
        default=None,
        description="Worst spot interruption band accepted (empty = any).",
    )
    max_usd_per_hour: float | None = Field(
        default=None, gt=0, description="Never choose an offer dearer than this per hour, in USD."
    )
    change_over_minutes: float = Field(
        default=3.0,
        ge=0,
        le=240,
        description="Minutes to get a replacement instance running after a spot loss.",
    )
    spot_control_change_over_minutes: float = Field(
        default=CHANGE_OVER_S / 60,
        ge=0,
        le=240,
        description=(
            "Spot-controlled tasks (spot-tolerant, checkpointable, with a deadline): minutes "
            "from choosing a new instance to the body making progress again (launch, boot, "
            "image pull, checkpoint restore). Their deadline guarantee counts on it."
        ),
    )
    spot_control_decision_minutes: float = Field(
        default=HORIZON_S / 60,
        gt=0,
        le=120,
        description="Spot-controlled tasks: longest time between two decisions, in minutes.",
    )
    spot_control_check_minutes: float | None = Field(
        default=None,
        gt=0,
        le=120,
        description=(
            "Spot-controlled tasks: minutes between two checks of a running spot instance "
            "(empty = a fifth of the decision interval; at most the decision interval)."
        ),
    )
    spot_control_end_allowance_seconds: float = Field(
        default=END_S,
        ge=0,
        le=3600,
        description=(
            "Spot-controlled tasks: seconds an attempt may take to end after its instance "
            "is lost (a body running locally stops at its next checkpoint save)."
        ),
    )
    checkpoint_move_egress_usd: float = Field(
        default=EGRESS_USD,
        ge=0,
        description="What moving a checkpoint to another region costs, in USD (weighs moves).",
    )
    pack_min_saving_pct: float = Field(
        default=PACK_MIN_SAVING_PCT,
        ge=0,
        lt=100,
        description="Pack a map's tasks onto shared instances only when that saves this % or more.",
    )
    pack_min_saving_usd: float = Field(
        default=PACK_MIN_SAVING_USD,
        ge=0,
        description="... and at least this many USD (both must hold).",
    )
    service_level: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="Forecast quantile of demand the capacity plan covers (0.9 = upper 80%).",
    )
    plan_horizon_hours: int = Field(
        default=168, ge=1, le=8760, description="Hours the forecast and capacity plan cover."
    )
    solver: Literal["cbc", "highs"] = Field(
        default="cbc", description="MILP solver of the capacity plan."
    )
    solver_time_limit_s: float = Field(
        default=60.0, gt=0, le=3600, description="Time limit of one plan solve, in seconds."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except ValidationError as err:
            raise _one_line(err) from None

    @classmethod
    def model_validate(cls, *args: Any, **kwargs: Any) -> Any:
        """Also ``Block.load``'s path: a saved block with a bad value fails in one line."""
        try:
            return super().model_validate(*args, **kwargs)
        except ValidationError as err:
            raise _one_line(err) from None

    @model_validator(mode="after")
    def _spot_control_holds(self) -> CloudSchedPolicy:
        try:
            self.to_spot_control()
        except InputError as err:  # the form names the field; one line
            raise ValueError(str(err)) from None
        return self

    @field_validator("allowed_clouds", "allowed_regions", "allowed_gpu_types")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list allows nothing; leave it unset for no restriction")
        return value

    @field_validator("allowed_regions")
    @classmethod
    def _known_regions(cls, value: list[str] | None) -> list[str] | None:
        return _check_regions(value, None)

    @field_validator("allowed_gpu_types")
    @classmethod
    def _known_gpus(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(normalize_gpu_type(v) for v in value))

    def to_policy_config(self) -> PolicyConfig:
        """The placement knobs as the pure ``decide()`` takes them."""
        return PolicyConfig(
            allowed_clouds=_frozen(self.allowed_clouds),
            allowed_regions=_frozen(self.allowed_regions),
            allowed_gpu_types=_frozen(self.allowed_gpu_types),
            max_spot_band=self.max_spot_band,
            change_over=timedelta(minutes=self.change_over_minutes),
            reserved_first=self.reserved_first,
            max_usd_per_hour=self.max_usd_per_hour,
            pack_min_saving_pct=self.pack_min_saving_pct,
            pack_min_saving_usd=self.pack_min_saving_usd,
        )

    def to_spot_control(self) -> SpotControlSettings:
        """How the runner controls spot-tolerant, checkpointable tasks with a deadline."""
        check = self.spot_control_check_minutes
        return SpotControlSettings(
            change_over=timedelta(minutes=self.spot_control_change_over_minutes),
            decision_interval=timedelta(minutes=self.spot_control_decision_minutes),
            check_interval=None if check is None else timedelta(minutes=check),
            end_allowance=timedelta(seconds=self.spot_control_end_allowance_seconds),
            egress_usd=self.checkpoint_move_egress_usd,
        )

    def to_budget(self) -> BudgetPolicy:
        """The budget caps and spot share as the runner enforces them."""
        return BudgetPolicy(
            per_run_usd=self.budget_per_run_usd,
            per_day_usd=self.budget_per_day_usd,
            per_month_usd=self.budget_per_month_usd,
            hard=self.budget_enforcement == "hard",
            fallback_cheapest=self.on_budget == "cheapest",
            spot_max_share=self.spot_max_share,
        )

    def default_deadline_slack(self) -> timedelta | None:
        """Slack added to the estimated runtime of tasks that declare no deadline."""
        if self.default_deadline_slack_hours is None:
            return None
        return timedelta(hours=self.default_deadline_slack_hours)

    def plan_options(self) -> dict[str, Any]:
        """Keyword arguments of ``planning.plan_capacity`` this policy implies."""
        return {
            "service_level": self.service_level,
            "spot_max_share": self.spot_max_share,
            "budget_usd": self.budget_per_month_usd,
            "carbon_usd_per_tonne": self.carbon_usd_per_tonne
            if self.objective == "cost_carbon"
            else None,
            "clouds": self.allowed_clouds,
            "regions": self.allowed_regions,
            "solver": self.solver,
            "time_limit_s": self.solver_time_limit_s,
        }


def _one_line(err: ValidationError) -> PolicyValueError:
    if isinstance(err, PolicyValueError):
        return err
    problems: Any = err.errors()  # the same dicts, re-raised with one-line text
    return PolicyValueError.from_exception_data(err.title, problems)


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)
