"""``prefect-cloudsched reap``: terminate instances of ours whose flow run is gone."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from prefect_cloudsched.cli._app import app
from prefect_cloudsched.cli._common import (
    CloudsOption,
    FormatOption,
    JsonOption,
    OutputFormat,
    cloud_errors,
    open_ledger,
    render_rows,
    resolve_format,
    say,
    stdout_console,
)
from prefect_cloudsched.errors import InputError

_MOCK_PROJECT = "cloudsched-demo"


@app.command("reap")
def reap_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be terminated; change nothing.")
    ] = False,
    owner: Annotated[
        str, typer.Option("--owner", help="Owner id whose instances may be reaped.")
    ] = "prefect-cloudsched",
    heartbeat_ttl: Annotated[
        float,
        typer.Option(
            "--heartbeat-ttl", help="Seconds without a heartbeat before an instance is stale."
        ),
    ] = 900.0,
    cloud: CloudsOption = None,
    region: Annotated[
        list[str] | None,
        typer.Option("--region", help="AWS region to scan (repeat; default: the catalog's)."),
    ] = None,
    gcp_project: Annotated[
        str | None, typer.Option("--gcp-project", help="GCP project to scan (needed for GCP).")
    ] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", help="Scan with a saved compute pool block's settings (repeat)."),
    ] = None,
    mock: Annotated[
        list[str] | None,
        typer.Option(
            "--mock",
            help="aws=URL or gcp=URL: a local moto / fake GCE endpoint with dummy credentials.",
        ),
    ] = None,
    ledger_url: Annotated[
        str | None,
        typer.Option(
            "--ledger", "--ledger-url", help="Ledger to read and update (default: the local one)."
        ),
    ] = None,
    output: FormatOption = None,
    as_json: JsonOption = False,
) -> None:
    """Terminate instances of ours whose heartbeat expired or that the ledger says ended.

    Only instances tagged with our owner id are considered: never another owner's.

    Examples:

    * `prefect-cloudsched reap --dry-run` (AWS, the catalog's regions; needs AWS credentials)
    * `prefect-cloudsched reap --dry-run --cloud gcp --gcp-project my-project`
    * `prefect-cloudsched reap --mock aws=http://127.0.0.1:5000 --heartbeat-ttl 300`
    * `prefect-cloudsched reap --pool gpu-pool --json`
    """
    output = resolve_format(output, as_json)
    if not owner.strip():
        # An empty owner would match instances whose owner tag is empty: not ours.
        raise InputError(
            f"--owner {owner!r} is empty; give the owner id your flows tag instances with "
            "(default: prefect-cloudsched)"
        )
    if not math.isfinite(heartbeat_ttl) or heartbeat_ttl <= 0:
        raise InputError(f"--heartbeat-ttl {heartbeat_ttl}: give a number of seconds > 0, e.g. 900")
    from prefect_cloudsched.adapters.provision.reaper import reap

    mocks = _parse_mocks(mock or [])
    ledger = _ledger_for(ledger_url, dry_run)
    with _cloud_access("the cloud", mocks):
        provisioners = _provisioners(
            owner=owner,
            clouds={c.value for c in cloud} if cloud else None,
            regions=region,
            gcp_project=gcp_project,
            pools=pool or [],
            mocks=mocks,
            ledger_url=ledger_url,
        )
    actions: list[Any] = []
    for provisioner in provisioners:
        say(f"listing {provisioner.cloud} instances of owner {owner!r}")
        with _cloud_access(provisioner.cloud, mocks):
            actions += reap(
                [provisioner], heartbeat_ttl=heartbeat_ttl, ledger=ledger, dry_run=dry_run
            )
    _print(actions, owner=owner, dry_run=dry_run, output=output)


def _ledger_for(url: str | None, dry_run: bool) -> Any:
    """The ledger to read (and, unless a dry run, to write orphan rows to).

    A dry run changes nothing: it must not create (or add tables to) a database either. On a
    machine that has no local ledger yet and names none, it reads the heartbeats alone; a
    ledger that was named and is missing is an error (a typo must not pass silently).
    """
    from prefect_cloudsched.adapters.ledger import URL_ENV, default_home

    default_file = default_home() / "ledger.db"
    if dry_run and url is None and not os.environ.get(URL_ENV) and not default_file.exists():
        say(f"no ledger at {default_file} yet: the dry run judges by heartbeats alone")
        return None
    return open_ledger(url, create=not dry_run)


_HINTS = {
    "aws": "set AWS credentials (AWS_PROFILE, aws configure or AWS_ACCESS_KEY_ID/"
    "AWS_SECRET_ACCESS_KEY), or pass --mock aws=http://HOST:PORT",
    "gcp": "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS, "
    "or pass --mock gcp=http://HOST:PORT",
}


@contextlib.contextmanager
def _cloud_access(cloud: str, mocks: dict[str, str]) -> Iterator[None]:
    """A cloud SDK failure (no credentials, endpoint down) as one line with the fix."""
    if cloud in mocks:
        hint = f"is the stand-in at {mocks[cloud]} running?"
    else:
        hint = _HINTS.get(cloud, " or ".join(_HINTS.values()))
    with cloud_errors(f"list {cloud} instances", hint):
        yield


def _parse_mocks(values: list[str]) -> dict[str, str]:
    mocks: dict[str, str] = {}
    for value in values:
        name, _, url = value.partition("=")
        if name not in ("aws", "gcp") or not url.startswith(("http://", "https://")):
            raise InputError(
                f"--mock {value!r}: write aws=http://HOST:PORT or gcp=http://HOST:PORT"
            )
        mocks[name] = url
    return mocks


def _provisioners(
    *,
    owner: str,
    clouds: set[str] | None,
    regions: list[str] | None,
    gcp_project: str | None,
    pools: list[str],
    mocks: dict[str, str],
    ledger_url: str | None,
) -> list[Any]:
    from dataclasses import replace

    from prefect_cloudsched.adapters.provision.factory import build_provisioner
    from prefect_cloudsched.adapters.provision.settings import AwsSettings, GcpSettings
    from prefect_cloudsched.core.catalog import load_catalog

    if pools:
        from prefect_cloudsched.prefect.blocks import load_pool

        chosen = []
        for name in pools:
            try:
                settings = load_pool(name).to_settings()
            except Exception as err:
                raise InputError(f"--pool {name!r}: {err}") from None
            chosen.append(build_provisioner(replace(settings, ledger_url=ledger_url)))
        return [p for p in chosen if clouds is None or p.cloud in clouds]
    wanted = clouds or _named_clouds(mocks, gcp_project=gcp_project, regions=regions)
    found: list[Any] = []
    # Reaping only reads and terminates: no heartbeat thread, same owner and ledger on both.
    shared: dict[str, Any] = {"owner_id": owner, "ledger_url": ledger_url, "heartbeat_seconds": 0}
    if "aws" in wanted:
        aws_regions = tuple(
            regions or sorted({o.region for o in load_catalog().offers if o.cloud == "aws"})
        )
        keys = (
            {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
            if "aws" in mocks
            else {}
        )
        found.append(
            build_provisioner(
                AwsSettings(regions=aws_regions, endpoint_url=mocks.get("aws"), **shared, **keys)
            )
        )
    if "gcp" in wanted:
        project = gcp_project or (_MOCK_PROJECT if "gcp" in mocks else None)
        if project is None:
            raise InputError("--gcp-project is required to reap GCP (or --mock gcp=URL)")
        found.append(
            build_provisioner(GcpSettings(project=project, endpoint=mocks.get("gcp"), **shared))
        )
    return found


def _named_clouds(
    mocks: dict[str, str], *, gcp_project: str | None, regions: list[str] | None
) -> set[str]:
    """The clouds the options name: ``--mock gcp=URL`` alone must not scan real AWS.

    ``--mock`` names its cloud, ``--gcp-project`` names GCP, ``--region`` names AWS; with
    none of them, AWS (its credentials come from the usual chain).
    """
    named = set(mocks)
    if gcp_project:
        named.add("gcp")
    if regions:
        named.add("aws")
    return named or {"aws"}


def _print(actions: list[Any], *, owner: str, dry_run: bool, output: OutputFormat) -> None:
    now = time.time()
    rows = []
    for action in actions:
        inst = action.instance
        if not action.reap:
            verb = "kept"
        elif dry_run:
            verb = "would terminate"
        else:
            verb = "terminated" if action.done else "skipped"
        rows.append({
            "cloud": inst.cloud,
            "instance": inst.instance_id,
            "where": inst.zone or inst.region,
            "type": inst.instance_type,
            "run": inst.run_id,
            "heartbeat": f"{now - inst.heartbeat:.0f} s ago" if inst.heartbeat else "none",
            "action": verb,
            "why": action.reason,
        })  # fmt: skip
    stale = sum(a.reap for a in actions)
    count = stale if dry_run else sum(a.done for a in actions)
    verb = "would be terminated" if dry_run else "terminated"
    summary = (
        f"{len(actions)} instance(s) of owner {owner!r} found; {count} {verb}; "
        f"{len(actions) - stale} alive."
    )
    fields = ("cloud", "instance", "where", "type", "run", "heartbeat", "action", "why")
    if output is not OutputFormat.TABLE:
        render_rows(rows, fields, output)
        say(summary)
        return
    if rows:
        render_rows(rows, fields, output, title=f"Instances of owner {owner!r}")
    stdout_console().print(summary, markup=False)
