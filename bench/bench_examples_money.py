"""The shipped examples and the demo on fresh ledgers: what each saves, and whether every row
that cost more than plain on-demand says why (issue 11: "no unexplained negative-savings row").

Each program runs in its own process with its own throw-away Prefect home and ledger, as a new
user would run it; its rows are then read back and reported per task with the same
``build_report`` the CLI uses. Every figure is measured; a program that fails, or a report
with an unexplained dearer row, is recorded as NO and the others still run.

Run: ``.venv/bin/python bench/bench_examples_money.py`` (a few minutes on 2 shared cores).
Writes ``bench/results/examples_money.json`` and ``.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write

ROOT = Path(__file__).resolve().parents[1]
#: (name, script, arguments): the examples, then the demo's flow (``scripts/demo.sh``).
PROGRAMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("01_first_flow", "examples/01_first_flow.py", ()),
    ("02_policy_and_reservations", "examples/02_policy_and_reservations.py", ()),
    ("demo (flows/ml_pipeline.py)", "flows/ml_pipeline.py", ()),
)
TIMEOUT_S = 900


def run_program(script: str, args: tuple[str, ...]) -> tuple[dict[str, Any], Path]:
    """Run one program on a fresh home; its exit code, wall time and last error line."""
    home = Path(tempfile.mkdtemp(prefix="cloudsched-money-"))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_CLOUDSCHED_HOME": str(home / "cloudsched"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_CLOUDSCHED_LEDGER_URL", None)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(ROOT / script), *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, err = None, f"timed out after {TIMEOUT_S} s"
    run = {"exit_code": code, "wall_s": round(time.perf_counter() - started, 1)}
    if code != 0:
        lines = [line for line in (err or "").splitlines() if line.strip()]
        run["error"] = lines[-1][:300] if lines else "no output"
    return run, home / "cloudsched" / "ledger.db"


def report_of(ledger_file: Path) -> dict[str, Any]:
    """Per-task report of a ledger file, with the dearer rows and their reasons."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.accounting import UNEXPLAINED
    from prefect_cloudsched.core.report import build_report

    if not ledger_file.exists():
        return {"rows": 0, "groups": [], "unexplained_rows": None}
    records = Ledger(f"sqlite:///{ledger_file}").placements()
    report = build_report(records, "task")
    groups = [r.as_dict() for r in (*report.rows, report.total)]
    return {
        "rows": len(records),
        "groups": groups,
        "dearer_rows": report.total.dearer_rows,
        "unexplained_rows": dict(report.total.dearer).get(UNEXPLAINED, 0),
        "negative_groups": [g["group"] for g in groups if float(g["savings_usd"]) < 0],
    }


def main() -> None:
    results: dict[str, Any] = {}
    for name, script, args in PROGRAMS:
        print(f">> {name}", flush=True)
        run, ledger_file = run_program(script, args)
        figures = {**run, **report_of(ledger_file)}
        figures["no_unexplained_loss"] = (
            "YES" if run["exit_code"] == 0 and figures["unexplained_rows"] == 0 else "NO"
        )
        results[name] = figures
    write("examples_money", {"programs": results}, markdown(results))


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Examples and demo: savings and dearer rows (`bench/bench_examples_money.py`)",
        "",
        "Each program on a fresh ledger; per-task groups as `prefect-cloudsched report "
        "--group-by task` shows them. *Dearer rows*: rows that cost more than plain on-demand; "
        "*why*: their reasons ([docs/concepts.md](../../docs/concepts.md#how-money-is-counted)).",
        "",
        "| program | exit | wall s | rows | saved % (total) | dearer rows | why | unexplained "
        "| no unexplained loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        total = r["groups"][-1] if r["groups"] else {}
        why = ", ".join(f"{n} {k}" for k, n in (total.get("why") or {}).items()) or "—"
        pct = total.get("savings_pct")
        lines.append(
            f"| {name} | {r['exit_code']} | {r['wall_s']} | {r['rows']} | "
            f"{'—' if pct is None else f'{pct:.1f}'} | {r.get('dearer_rows', '—')} | {why} | "
            f"{r['unexplained_rows']} | {r['no_unexplained_loss']} |"
        )
    lines += ["", "Per task:", ""]
    for name, r in results.items():
        lines.append(f"**{name}**" + (f" — failed: `{r['error']}`" if r.get("error") else ""))
        lines.append("")
        lines.append("| task | tasks | spend $ | on-demand $ | saved % | why dearer |")
        lines.append("|---|---|---|---|---|---|")
        for g in r["groups"]:
            why = ", ".join(f"{n} {k}" for k, n in g["why"].items()) or "—"
            pct = "—" if g["savings_pct"] is None else f"{g['savings_pct']:.1f}"
            lines.append(
                f"| {g['group']} | {g['tasks']} | {g['spend_usd']} | "
                f"{g['ondemand_baseline_usd']} | {pct} | {why} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
