"""``prefect-cloudsched simulate``: replay a jobs trace under several policies, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.errors import InputError


@app.command("simulate")
def simulate(
    jobs: Annotated[
        Path,
        typer.Option(
            "--jobs",
            help="Jobs CSV: job_id,submit_s,duration_s,gpus,cpus,memory_gib,status,job_class.",
        ),
    ],
    spot_trace: Annotated[
        Path | None,
        typer.Option(
            "--spot-trace",
            help="Spot availability CSV (timestamp_utc,<zone>...; 1 = "
            "available). Default: the parametric model from interruption bands.",
        ),
    ] = None,
    spot_instance: Annotated[
        str | None,
        typer.Option(
            "--spot-instance",
            help="Instance type the spot trace probed (default: from its file name).",
        ),
    ] = None,
    policies: Annotated[
        str, typer.Option("--policies", help="Comma-separated policy names, or 'all'.")
    ] = "all",
    deadline_slack: Annotated[
        str,
        typer.Option(
            "--deadline-slack",
            help="deadline = submit + slack x duration; one factor, or a comma list to "
            "draw from per job (seeded).",
        ),
    ] = "1.5",
    seed: Annotated[int, typer.Option("--seed", help="Seeds slack draws and spot model.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per policy.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write a Markdown table, CSV and PNG plots here.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Replay only the first N jobs.")
    ] = None,
    gpu_type: Annotated[
        str | None, typer.Option("--gpu-type", help="Pin GPU jobs to this GPU model, e.g. V100.")
    ] = None,
    regions: Annotated[
        str | None, typer.Option("--regions", help="Only these regions (comma-separated).")
    ] = None,
    headroom: Annotated[
        float, typer.Option("--headroom", help="Fixed fleet size / mean load (queue policies).")
    ] = 1.25,
) -> None:
    """Replay JOBS under each policy and print cost, deadline misses, completion and energy.

    Every policy goes through the task runner's own ``decide()`` with a simulated clock; the
    omniscient lower bound is computed alongside. See docs/simulator.md.
    """
    from prefect_cloudsched.core.policy import DEFAULT_POLICY
    from prefect_cloudsched.simulate import (
        SpotModel,
        compare_policies,
        load_jobs,
        load_spot_trace,
        parse_policies,
        parse_slack,
    )

    if headroom <= 0:
        raise InputError(f"--headroom must be > 0, got {headroom}")
    names = parse_policies(policies)
    replay = load_jobs(jobs, deadline_slack=parse_slack(deadline_slack), seed=seed, limit=limit,
                       gpu_type=gpu_type)  # fmt: skip
    config = DEFAULT_POLICY
    if regions:
        from dataclasses import replace

        allowed = frozenset(r.strip() for r in regions.split(",") if r.strip())
        config = replace(config, allowed_regions=allowed)
    trace = load_spot_trace(spot_trace, spot_instance) if spot_trace else None
    spot = SpotModel(trace=trace, seed=seed)
    say = None if as_json else (lambda line: typer.echo(line, err=True))
    comparison = compare_policies(
        replay, names, config=config, spot=spot, headroom=headroom, progress=say
    )
    from prefect_cloudsched.simulate.output import markdown_table, rows, write_outputs

    if as_json:
        typer.echo(json.dumps(rows(comparison), indent=2))
    else:
        typer.echo(markdown_table(comparison))
    if out is not None:
        for path in write_outputs(comparison, out):
            typer.echo(f"wrote {path}", err=True)
