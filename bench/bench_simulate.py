"""Trace replay: every policy side by side on the real traces, plus throughput at scale.

Scenarios (all with the shipped catalog, deadline = submit + 1.5 × duration, seed 0):

1. ``gpu2023`` — Alibaba PAI GPU trace (7,255 jobs), parametric spot model.
2. ``genai2026`` — Alibaba GenAI serving trace (26,823 requests), parametric spot model.
3. ``gpu2023-v100-trace`` — the PAI trace with GPU jobs pinned to V100 in the three AWS
   regions of the real 45-day p3.2xlarge availability trace, replayed from that trace
   (p3.2xlarge offers; larger V100 types fall back to the parametric model).
4. ``scaling`` — the GenAI trace tiled back to back to 10k and 100k jobs, every policy
   timed; 1M jobs for the on-demand policy only (memory on the shared machine).

For the hybrid and uniform-progress, cost − bound is split by cause
(:mod:`prefect_cloudsched.simulate.gap`); on ``gpu2023`` the hybrid is also replayed with the
reservation perfect foresight of the load would buy, to separate forecast error from the rest.

Writes ``bench/results/simulate.json`` and ``.md`` and plots ``simulate_<scenario>_*.png``.
Run: ``.venv/bin/python bench/bench_simulate.py``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, RESULTS, isolate, write

TRACE_REGIONS = frozenset({"us-east-1", "us-east-2", "us-west-2"})


class _Report:
    """The scenarios' figures (JSON) and tables (Markdown), filled one scenario at a time."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict] = {}
        self.md = ["# Trace replay (`bench/bench_simulate.py`)", ""]

    def record(self, name: str, title: str, comparison, extra: dict) -> None:
        from prefect_cloudsched.simulate.output import markdown_table, plot, rows

        self.scenarios[name] = {
            **extra,
            "bound_usd": round(comparison.bound.total, 4),
            "bound_per_second_usd": round(comparison.bound.per_second_total, 4),
            "bound_held_capacity_usd": round(comparison.bound.held_total, 4),
            "gap_usd": {
                p: {k: round(v, 4) for k, v in parts.items()}
                for p, parts in comparison.gaps.items()
            },
            "bound_seconds": round(comparison.bound_seconds, 3),
            "ondemand_usd": round(comparison.ondemand_cost, 4),
            "reserved": comparison.reserved,
            "notes": comparison.notes,
            "policies": rows(comparison),
        }
        plot(comparison, RESULTS, f"simulate_{name}")
        self.md.extend([f"## {title}", "", markdown_table(comparison), ""])


def main() -> None:
    """Run every scenario and write the results."""
    isolate()
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.simulate import load_jobs

    catalog = load_catalog()
    report = _Report()
    gpu = load_jobs(DATA / "alibaba_gpu2023_jobs.csv")
    genai = load_jobs(DATA / "alibaba_genai2026_jobs.csv")
    _parametric(report, catalog, gpu, genai)
    _real_spot_trace(report, catalog)
    scaling = _scaling(catalog, genai)
    report.md.extend(_scaling_table(scaling))
    write(
        "simulate",
        {"scenarios": report.scenarios, "scaling": scaling},
        "\n".join(report.md) + "\n",
    )


def _parametric(report: _Report, catalog, gpu: list, genai: list) -> None:
    """Scenarios 1 and 2, and the hybrid on ``gpu2023`` with a hindsight reservation."""
    from prefect_cloudsched.simulate import POLICY_NAMES, SpotModel, compare_policies
    from prefect_cloudsched.simulate.compare import hindsight_reservation
    from prefect_cloudsched.simulate.output import markdown_table, rows

    say = print
    gap = ("hybrid", "uniform-progress")
    report.record(
        "gpu2023",
        "Alibaba PAI GPU 2023, parametric spot",
        compare_policies(
            gpu, POLICY_NAMES, catalog=catalog, spot=SpotModel(seed=0), progress=say, breakdown=gap
        ),
        {"jobs": len(gpu), "spot": "parametric"},
    )
    foresight = hindsight_reservation(gpu, catalog)
    hindsight = compare_policies(
        gpu, ["hybrid"], catalog=catalog, spot=SpotModel(seed=0), reserved=foresight,
        progress=say, breakdown=("hybrid",),
    )  # fmt: skip
    (row,) = rows(hindsight)
    report.scenarios["gpu2023"]["hybrid_with_hindsight_reservation"] = {
        "reserved": {k: n for k, (_, n) in foresight.items()},
        "cost": row["cost"], "cost_vs_bound": row["cost_vs_bound"],
        "deadline_miss_rate": row["deadline_miss_rate"],
        "gap_usd": {k: round(v, 4) for k, v in hindsight.gaps["hybrid"].items()},
    }  # fmt: skip
    report.md.extend(
        [
            "### The hybrid with the reservation perfect foresight would buy",
            "",
            markdown_table(hindsight),
            "",
        ]
    )

    report.record(
        "genai2026",
        "Alibaba GenAI 2026 serving, parametric spot",
        compare_policies(
            genai,
            POLICY_NAMES,
            catalog=catalog,
            spot=SpotModel(seed=0),
            progress=say,
            breakdown=gap,
        ),
        {"jobs": len(genai), "spot": "parametric"},
    )


def _real_spot_trace(report: _Report, catalog) -> None:
    """Scenario 3: V100 jobs on AWS, spot replayed from the real p3.2xlarge trace."""
    from prefect_cloudsched.core.policy import DEFAULT_POLICY
    from prefect_cloudsched.simulate import (
        POLICY_NAMES,
        SpotModel,
        compare_policies,
        load_jobs,
        load_spot_trace,
    )

    v100 = load_jobs(DATA / "alibaba_gpu2023_jobs.csv", gpu_type="V100")
    trace = load_spot_trace(DATA / "aws_p3.2xlarge_avail_2023-02-15.csv")
    config = replace(
        DEFAULT_POLICY, allowed_regions=TRACE_REGIONS, allowed_clouds=frozenset({"aws"})
    )
    report.record(
        "gpu2023-v100-trace",
        "Alibaba PAI GPU 2023, V100 on AWS, real p3.2xlarge spot trace (45 days, 8 zones)",
        compare_policies(
            v100,
            POLICY_NAMES,
            catalog=catalog,
            config=config,
            spot=SpotModel(trace=trace, seed=0),
            progress=print,
            breakdown=("hybrid", "uniform-progress"),
        ),
        {
            "jobs": len(v100),
            "spot": "trace: aws_p3.2xlarge_avail_2023-02-15.csv",
            "regions": sorted(TRACE_REGIONS),
        },
    )


def _scaling(catalog, genai: list) -> list[dict]:
    """Scenario 4: the GenAI trace tiled to 10k, 100k and 1M jobs, every replay timed."""
    from prefect_cloudsched.simulate import POLICY_NAMES, SpotModel, compare_policies, tile_jobs
    from prefect_cloudsched.simulate.output import rows

    scaling: list[dict] = []
    for count, names in (
        (10_000, POLICY_NAMES),
        (100_000, POLICY_NAMES),
        (1_000_000, ("on-demand",)),
    ):
        jobs = tile_jobs(genai, count)
        started = time.perf_counter()
        comparison = compare_policies(jobs, list(names), catalog=catalog, spot=SpotModel(seed=0),
                                      progress=print)  # fmt: skip
        total = time.perf_counter() - started
        for row in rows(comparison):
            scaling.append({"jobs": count, "policy": row["policy"], "wall_s": row["wall_s"],
                            "jobs_per_s": row["jobs_per_s"],
                            "decide_calls": row["decide_calls"],
                            "decision_latency_mean_us": row["decision_latency_mean_us"],
                            "decision_latency_p99_us": row["decision_latency_p99_us"]})  # fmt: skip
        scaling.append({"jobs": count, "policy": "(whole comparison incl. planning and bound)",
                        "wall_s": round(total, 3)})  # fmt: skip
        del jobs, comparison
    return scaling


def _scaling_table(scaling: list[dict]) -> list[str]:
    md = [
        "## Throughput (GenAI trace tiled; every policy replays the same jobs)", "",
        "| jobs | policy | replay s | jobs/s | decide() calls | decide µs/job mean | p99 |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in scaling:
        if "jobs_per_s" not in row:
            md.append(f"| {row['jobs']:,} | {row['policy']} | {row['wall_s']:.1f} | | | | |")
            continue
        md.append(f"| {row['jobs']:,} | {row['policy']} | {row['wall_s']:.2f} | "
                  f"{row['jobs_per_s']:,.0f} | {row['decide_calls']:,} | "
                  f"{row['decision_latency_mean_us']:.1f} | "
                  f"{row['decision_latency_p99_us']:.1f} |")  # fmt: skip
    return md


if __name__ == "__main__":
    main()
