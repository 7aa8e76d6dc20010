"""``report --plot FILE.png``: daily spend against the on-demand baseline.

Two panels sharing the day axis: spend stacked by purchase option, and spend stacked by
cloud; each with the day's all-on-demand baseline as a line, so the saving is the gap.
Sums are exact micro-dollars; only the drawing uses floats.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from prefect_cloudsched.core.records import PlacementRecord
from prefect_cloudsched.errors import InputError

_OPTION_COLOURS = {"reserved": "tab:green", "on-demand": "tab:blue", "spot": "tab:orange"}
_CLOUD_COLOURS = {"aws": "#ff9900", "gcp": "#4285f4"}


def daily_totals(
    records: Sequence[PlacementRecord], key: str
) -> tuple[list[str], dict[str, list[int]], list[int]]:
    """Days (sorted), micro-dollars per day for each ``key`` value, and the daily baseline."""
    days = sorted({r.day for r in records})
    index = {d: i for i, d in enumerate(days)}
    stacks: dict[str, list[int]] = defaultdict(lambda: [0] * len(days))
    baseline = [0] * len(days)
    for record in records:
        i = index[record.day]
        stacks[getattr(record, key)][i] += record.cost_micro
        baseline[i] += record.baseline_micro
    return days, dict(stacks), baseline


def plot_daily_spend(records: Sequence[PlacementRecord], path: Path) -> Path:
    """Write the two-panel PNG; raises :class:`InputError` when there is nothing to draw."""
    if not records:
        raise InputError("--plot: no placements match the filters; nothing to draw")
    from matplotlib.figure import Figure  # Agg canvas: no display needed

    fig = Figure(figsize=(11, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, key, colours, title in (
        (top, "option", _OPTION_COLOURS, "by purchase option"),
        (bottom, "cloud", _CLOUD_COLOURS, "by cloud"),
    ):
        days, stacks, baseline = daily_totals(records, key)
        x = list(range(len(days)))
        below = [0.0] * len(days)
        order = [k for k in colours if k in stacks] + sorted(set(stacks) - set(colours))
        for name in order:
            usd = [m / 1e6 for m in stacks[name]]
            ax.bar(x, usd, bottom=below, label=name, color=colours.get(name), width=0.7)
            below = [b + u for b, u in zip(below, usd, strict=True)]
        ax.plot(x, [m / 1e6 for m in baseline], color="black", marker="o", lw=1.5,
                label="all on-demand (baseline)")  # fmt: skip
        spent, base = sum(below), sum(baseline) / 1e6
        saved = f", saved {100 * (1 - spent / base):.1f}%" if base > 0 else ""
        ax.set_title(f"Daily spend {title}: \\${spent:,.2f} vs \\${base:,.2f} on-demand{saved}")
        ax.set_ylabel("USD per day")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(bottom=0)
    step = max(1, len(days) // 12)  # at most ~12 date labels: they never overlap
    bottom.set_xticks(x[::step], days[::step], rotation=30, ha="right")
    bottom.set_xlabel("day (UTC)")
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise InputError(
            f"--plot cannot write {str(path)!r} ({err.strerror}); pick a writable path"
        ) from None
    return path
