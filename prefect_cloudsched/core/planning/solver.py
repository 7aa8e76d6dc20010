"""The PuLP side of the capacity program: the model's parts and one solver call.

Shared by the program builder (:mod:`~prefect_cloudsched.core.planning.program`) and the
staged solve (:mod:`~prefect_cloudsched.core.planning.staged`), which both drive the same
model. PuLP is imported only inside the functions that need it: the core imports without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect_cloudsched.core.planning.candidates import Candidate
from prefect_cloudsched.errors import InputError

SOLVERS = ("cbc", "highs")


@dataclass
class Solution:
    """Counts read back from a solved program (empty when infeasible).

    ``build_seconds`` is the time spent building the PuLP model, ``solver_seconds`` the time
    in solver calls (including writing the model for CBC); ``bound`` is the LP-relaxation
    bound of a staged solve (a lower bound on any plan's objective) and ``stages`` says
    which solver calls ran, for the benchmark.
    """

    status: str
    reserved: dict[str, int]
    ondemand: list[dict[str, int]]
    spot: list[dict[str, int]]
    unmet: dict[str, list[float]]
    seconds: float
    proven_infeasible: bool = False
    build_seconds: float = 0.0
    solver_seconds: float = 0.0
    objective: float | None = None
    bound: float | None = None
    stages: list[str] = field(default_factory=list)

    @property
    def lp_gap(self) -> float | None:
        """(objective − LP bound) / objective: an upper bound on the distance from the optimum.

        Known for staged solves only; when the MILP stage ran, the solver's own (cut-tightened)
        bound decided the status and the true gap is usually far smaller than this.
        """
        if self.objective is None or self.bound is None or self.objective <= 0:
            return None
        return max(0.0, (self.objective - self.bound) / self.objective)


@dataclass(frozen=True, slots=True)
class SolverOptions:
    """Which solver, and how long and how exactly it may work (one value for every stage)."""

    name: str = "cbc"
    time_limit_s: float = 60
    gap: float = 0.01
    threads: int = 1


def make_solver(
    name: str,
    time_limit_s: float,
    gap: float,
    warm_start: bool = False,
    *,
    threads: int = 1,
    mip: bool = True,
    options: Sequence[str] = (),
) -> Any:
    """A PuLP solver object (one thread unless told: the planner shares the machine)."""
    import pulp

    if name == "cbc":
        # CBC 2.10.3 (PuLP's bundled binary) segfaults when its preprocessing meets a complete
        # MIP start on large models (95k columns in the 720 h benchmark); with preprocessing
        # off the start is used and the root cuts still run.
        cbc_options = [*options, *(["preprocess off"] if warm_start else [])]
        return pulp.PULP_CBC_CMD(
            msg=False,
            timeLimit=max(time_limit_s, 0.1),
            gapRel=gap,
            threads=threads,
            warmStart=warm_start,
            mip=mip,
            options=cbc_options,
        )
    if name == "highs":
        # One thread whatever is asked: HiGHS keeps one thread pool per process, and a later
        # solve asking for a different count fails (the packing program, after a 2-thread
        # capacity plan, came back without a solution).
        return pulp.HiGHS(
            msg=False, timeLimit=max(time_limit_s, 0.1), gapRel=gap, threads=1, mip=mip
        )
    raise InputError(f"solver {name!r} is unknown; use one of: {', '.join(SOLVERS)}")


class LinearSum:
    """A linear expression collected as ``{variable: coefficient}`` plus a constant.

    PuLP's ``lpSum([u * var, ...])`` builds one intermediate expression per term; collecting
    coefficients in a dict and handing it to ``LpAffineExpression`` once built the 720 h
    benchmark models in 1.7 s instead of 4.7 s. Fixed reservations (plain ints) land in the
    constant.
    """

    __slots__ = ("coef", "const")

    def __init__(self) -> None:
        self.coef: dict[Any, float] = {}
        self.const = 0.0

    def add(self, var: Any, a: float) -> None:
        if isinstance(var, int | float):
            self.const += a * var
        else:
            self.coef[var] = self.coef.get(var, 0.0) + a

    def __bool__(self) -> bool:
        return bool(self.coef) or self.const != 0

    def expr(self) -> Any:
        import pulp

        return pulp.LpAffineExpression(self.coef, constant=self.const)


@dataclass
class Model:
    prob: Any
    reserved_vars: dict[str, Any]
    hourly_vars: list[tuple[list[int], Candidate, Any]]
    unmet_vars: list[tuple[list[int], str, Any]]
    slack: dict[str, list[Any]]
    levels: list[Level] = field(default_factory=list)
    limits: dict[str, float] = field(default_factory=dict)
    spot_max_share: float = 0.0


@dataclass
class Level:
    """One demand level of one group of coupled classes: its hours, demand and variables."""

    need: dict[str, float]
    hourly: list[tuple[Candidate, Any]]
    reserved: list[tuple[Candidate, Any]]


def run_stage(
    model: Model,
    solution: Solution,
    stage: str,
    solver: str,
    time_limit_s: float,
    gap: float,
    threads: int,
    *,
    warm: bool = False,
    mip: bool = True,
    options: Sequence[str] = (),
) -> int:
    """One solver call; sets ``solution.status`` and ``objective``; returns PuLP's status."""
    import pulp

    prob = model.prob
    t = time.perf_counter()
    prob.solve(
        make_solver(
            solver, time_limit_s, gap, warm_start=warm, threads=threads, mip=mip, options=options
        )
    )
    solution.solver_seconds += time.perf_counter() - t
    solution.stages.append(f"{stage} {time.perf_counter() - t:.2f}s")
    solution.status = {1: "optimal", 2: "feasible"}.get(prob.sol_status, "infeasible")
    solution.proven_infeasible = prob.status == pulp.LpStatusInfeasible
    solution.objective = pulp.value(prob.objective) if solution.status != "infeasible" else None
    return prob.status


__all__ = [
    "SOLVERS",
    "Level",
    "LinearSum",
    "Model",
    "Solution",
    "SolverOptions",
    "make_solver",
    "run_stage",
]
