"""Tables and plots of a comparison: Markdown, CSV and PNG (for ``simulate --out`` and bench)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from prefect_cloudsched.simulate.compare import Comparison

#: Columns of the Markdown table and the CSV, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("policy", "policy"),
    ("capacity_model", "capacity"),
    ("cost", "cost $"),
    ("cost_vs_ondemand", "÷ on-demand"),
    ("cost_vs_bound", "÷ bound"),
    ("deadline_miss_rate", "misses"),
    ("mean_completion_s", "mean completion s"),
    ("p95_completion_s", "p95 completion s"),
    ("makespan_s", "makespan h"),
    ("utilisation", "held-capacity util."),
    ("energy_kwh", "energy kWh"),
    ("co2_kg", "CO2 kg"),
    ("interruptions", "interruptions"),
    ("decision_latency_mean_us", "decide µs/job"),
    ("jobs_per_s", "jobs/s"),
)


def rows(comparison: Comparison) -> list[dict[str, Any]]:
    """One JSON-ready dict per policy, with the bound's total alongside."""
    out = []
    for result in comparison.results:
        row = result.to_dict()
        row["bound_cost"] = round(comparison.bound.over(result.placed), 6)
        out.append(row)
    return out


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "deadline_miss_rate":
        return f"{100 * value:.2f}%"
    if key == "makespan_s":
        return f"{value / 3600:.1f}"
    if key in ("cost_vs_ondemand", "cost_vs_bound", "utilisation"):
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def markdown_table(comparison: Comparison) -> str:
    """The per-policy table in Markdown, bound and reservation noted below it."""
    lines = [
        "| " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows(comparison):
        lines.append("| " + " | ".join(_cell(k, row[k]) for k, _ in COLUMNS) + " |")
    lines.append("")
    bound = comparison.bound
    which = "held-capacity" if bound.held_total > bound.per_second_total else "per-second"
    held = f"${bound.held_total:,.2f}" if bound.held_total > 0 else "n/a"
    lines.append(f"Omniscient lower bound: ${bound.total:,.2f} ({which}; per-second "
                 f"${bound.per_second_total:,.2f}, held-capacity {held}); "
                 f"all on-demand: ${comparison.ondemand_cost:,.2f}.")  # fmt: skip
    lines.extend(comparison.notes)
    for policy, parts in comparison.gaps.items():
        lines.extend(["", f"Cost above the bound, {policy} (USD):", "",
                      "| cause | USD |", "|---|---|"])  # fmt: skip
        lines.extend(f"| {cause} | {usd:,.2f} |" for cause, usd in parts.items() if abs(usd) > 5e-3)
        lines.append(f"| **total** | **{sum(parts.values()):,.2f}** |")
    return "\n".join(lines) + "\n"


def write_outputs(comparison: Comparison, out: Path, stem: str = "simulate") -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.csv`` and two PNG plots into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    data = rows(comparison)
    md = out / f"{stem}.md"
    md.write_text(markdown_table(comparison))
    table = out / f"{stem}.csv"
    fields = [k for k, _ in COLUMNS] + ["bound_cost", "deadline_misses", "jobs", "unplaceable"]
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(data)
    return [md, table, *plot(comparison, out, stem)]


def plot(comparison: Comparison, out: Path, stem: str = "simulate") -> list[Path]:
    """Cost vs deadline misses, and cost broken down by purchase option."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(comparison)
    # No text next to the points: policies often share a point (same cost, same misses) and
    # their labels would overprint. Each policy has its own marker and colour, and the legend
    # beside the axes carries its exact figures.
    markers = "osD^vP*Xph<>8"
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    for i, row in enumerate(data):
        miss = 100 * row["deadline_miss_rate"]
        ax.scatter(miss, row["cost"], s=70, marker=markers[i % len(markers)], alpha=0.8,
                   color=plt.get_cmap("tab20")(i % 20), edgecolors="black", linewidths=0.5,
                   label=f"{row['policy']}: ${row['cost']:,.0f}, {miss:.1f}% missed")  # fmt: skip
    ax.axhline(comparison.bound.total, linestyle="--", color="grey",
               label=f"omniscient bound: ${comparison.bound.total:,.0f}")  # fmt: skip
    ax.set_xlabel("deadline misses (%)")
    ax.set_ylabel("total cost (USD)")
    ax.yaxis.set_major_formatter(lambda value, _pos: f"${value:,.0f}")
    ax.set_title("Cost vs deadline misses")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    scatter = out / f"{stem}_cost_vs_misses.png"
    fig.savefig(scatter, dpi=110)
    plt.close(fig)

    options = ("reserved", "reserved (idle)", "on-demand", "spot")
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    bottom = [0.0] * len(data)
    names = [row["policy"] for row in data]
    for option in options:
        values = [row["cost_by_option"].get(option, 0.0) for row in data]
        ax.bar(names, values, bottom=bottom, label=option)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("cost (USD)")
    ax.yaxis.set_major_formatter(lambda value, _pos: f"${value:,.0f}")
    ax.set_title("Cost by purchase option")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    bars = out / f"{stem}_cost_breakdown.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)
    return [scatter, bars]


__all__ = ["COLUMNS", "markdown_table", "plot", "rows", "write_outputs"]
