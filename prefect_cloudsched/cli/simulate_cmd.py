"""``prefect-cloudsched simulate``: replay a jobs trace under several policies, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    FORMAT_HELP,
    JsonOption,
    OutputFormat,
    finite,
    progress_bar,
    render_rows,
    require_extra,
    resolve_format,
    say,
    text_file,
    warn,
    whole,
    writable_path,
)
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
    output: Annotated[
        OutputFormat | None,
        typer.Option("--format", "-f", help=f"{FORMAT_HELP} [default: markdown]"),
    ] = None,
    as_json: JsonOption = False,
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

    Every policy goes through the task runner's own `decide()` with a simulated clock; the
    omniscient lower bound is computed alongside. Jobs that fit no offer are counted and
    make the exit code 1. See docs/simulator.md.

    Examples:

    * `prefect-cloudsched simulate --jobs bench/data/alibaba_gpu2023_jobs.csv --limit 200`
    * `prefect-cloudsched simulate --jobs jobs.csv --policies on-demand,hybrid -f json`
    * `prefect-cloudsched simulate --jobs jobs.csv --spot-trace
      bench/data/aws_p3.2xlarge_avail_2023-02-15.csv --out results/`
    """
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.policy import DEFAULT_POLICY
    from prefect_cloudsched.simulate import (
        SpotModel,
        compare_policies,
        load_jobs,
        load_spot_trace,
        parse_policies,
        parse_slack,
    )

    output = resolve_format(output, as_json, OutputFormat.MARKDOWN)
    finite(headroom, "--headroom", low=0, low_open=True)
    whole(seed, "--seed", low=0, high=2**32 - 1)
    names = parse_policies(policies)
    if spot_instance is not None:
        _check_instance_type(spot_instance, load_catalog())
    jobs = text_file(jobs, "--jobs")
    if out is not None:
        require_extra("matplotlib", "simulate --out (its PNG plots)")
        writable_path(out, "--out", directory=True)
    replay = load_jobs(jobs, deadline_slack=parse_slack(deadline_slack), seed=seed, limit=limit,
                       gpu_type=gpu_type)  # fmt: skip
    config = DEFAULT_POLICY
    if regions:
        from dataclasses import replace

        allowed = frozenset(r.strip() for r in regions.split(",") if r.strip())
        known = set(load_catalog().regions)
        unknown = sorted(allowed - known)
        if unknown or not allowed:
            raise InputError(
                f"--regions {', '.join(unknown) or regions!r}: not in the catalog; "
                f"use some of: {', '.join(sorted(known))}"
            )
        config = replace(config, allowed_regions=allowed)
    trace = None
    if spot_trace:
        trace = load_spot_trace(text_file(spot_trace, "--spot-trace"), spot_instance)
    spot = SpotModel(trace=trace, seed=seed)
    stages = len(dict.fromkeys(["on-demand", *names])) + ("hybrid" in names)
    with progress_bar(f"replaying {len(replay)} jobs", stages) as step:
        comparison = compare_policies(
            replay, names, config=config, spot=spot, headroom=headroom, progress=step
        )
    _check_placed(comparison, all_only=True)
    _print(comparison, output)
    if out is not None:
        from prefect_cloudsched.simulate.output import write_outputs

        for path in write_outputs(comparison, out):
            say(f"wrote {path}")
    _check_placed(comparison)


def _check_instance_type(name: str, catalog) -> None:
    """``--spot-instance`` must name an instance type of the catalog (docs/cli.md)."""
    import difflib

    known = sorted({offer.instance_type for offer in catalog.offers})
    if name in known:
        return
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "name one the catalog has"
    raise InputError(
        f"--spot-instance {name!r} is not an instance type of the catalog; {hint} "
        "(`prefect-cloudsched prices` lists them)"
    )


def _print(comparison, output: OutputFormat) -> None:
    from prefect_cloudsched.simulate.output import COLUMNS, _cell, markdown_table, rows

    data = rows(comparison)
    if output is OutputFormat.MARKDOWN:
        typer.echo(markdown_table(comparison))
    elif output is OutputFormat.TABLE:
        fields = [key for key, _ in COLUMNS]
        cells = [{key: _cell(key, row[key]) for key in fields} for row in data]
        render_rows(cells, fields, output, headers=[label for _, label in COLUMNS],
                    right=fields[2:], title="Policies on one replay")  # fmt: skip
    else:
        fields = list(data[0]) if data else []
        flat = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()}
                for r in data] if output is OutputFormat.CSV else data  # fmt: skip
        render_rows(flat, fields, output)


def _check_placed(comparison, *, all_only: bool = False) -> None:
    """Jobs no offer fits are not free: say how many, and fail when none was placed."""
    worst = max(comparison.results, key=lambda r: r.unplaceable, default=None)
    if worst is None or worst.unplaceable == 0:
        return
    total = worst.jobs + worst.unplaceable
    if worst.jobs == 0:
        raise InputError(
            f"none of the {total} jobs fits an offer (too many GPUs, or --regions/--gpu-type "
            "exclude every offer); check the jobs file and the filters"
        )
    if all_only:
        return
    warn(
        f"{worst.unplaceable} of {total} jobs fit no offer under {worst.policy} and are left "
        "out of every figure above; check their gpus/cpus/memory_gib and --regions"
    )
    raise typer.Exit(1)
