"""Live = simulated: one spot-controlled job through the runtime on trace-following stand-in
clouds, and through the single-job replay, on the same trace window.

* **Market**: ``bench/data/aws_p3.2xlarge_avail_2023-02-15.csv``, region us-east-2 (one zone,
  so "the first zone up" — where a stand-in AWS launch lands — is the zone the simulator
  runs in), p3.2xlarge at the catalog's prices (spot $0.459/h, on-demand $3.06/h: the live
  ledger bills the catalog offer, so the replay uses the same prices).
* **Job**: 6 trace hours of work, deadline 1.5 × (9 h), change-over 0.2 h, one decision per
  trace tick (195 s) in both. The controller has seen the 7 trace days before the start in
  both (the replay's ``Controlled`` and the live session's shared availability model).
* **Start points**: every whole trace hour from day 7 on; the first ``--jobs`` where the
  replayed controller waits at least once and starts spot at least twice (windows where
  spot is always up or always down test nothing).
* **Live**: ``MockClouds(spot_trace=..., seconds_per_trace_hour=S)`` (moto; the trace clock
  set to the job's start), a :class:`~prefect_cloudsched.runtime.session.Session` with the
  instance stand-in executor, the job driven by ``testing/spot_job.run_controlled_job``
  (what Prefect's retries do). The ledger bills wall seconds; × (3600 / S) gives trace
  dollars.

Run: ``.venv/bin/python bench/bench_live_spot.py [--jobs 3 --seconds-per-trace-hour 1.0]``.
Writes ``bench/results/live_spot.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, isolate, machine, write

TRACE = DATA / "aws_p3.2xlarge_avail_2023-02-15.csv"
REGION, ZONE = "us-east-2", "us-east-2a"
WORK_H, SLACK = 6.0, 1.5
CHANGE_OVER_S = 0.2 * 3600
EGRESS_USD = 0.2
HISTORY_S = 7 * 86400.0


def stamps() -> list[float]:
    """Trace time (s since the first tick) of every tick."""
    with TRACE.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    times = [datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp() for r in rows]
    return [t - times[0] for t in times]


def prices() -> tuple[float, float]:
    """(spot, on-demand) USD/h of the p3.2xlarge offers in the region, from the catalog."""
    from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog

    found = {
        o.option: o.usd_per_hour
        for o in load_catalog().offers
        if o.cloud == "aws" and o.region == REGION and o.instance_type == "p3.2xlarge"
    }
    return found[PurchaseOption.SPOT], found[PurchaseOption.ON_DEMAND]


def simulate(start_tick: int) -> dict[str, Any]:
    """The replay of the job from ``start_tick`` under the controller."""
    from prefect_cloudsched.core.policy.spot_control import Kind
    from prefect_cloudsched.simulate.spot_replay import Controlled, SpotJob, load_market, replay

    spot, on_demand = prices()
    market = load_market(TRACE, on_demand_usd_per_hour=on_demand, spot_usd_per_hour=spot)
    market = market.only([ZONE])
    job = SpotJob(start_tick, WORK_H * 3600, SLACK * WORK_H * 3600, CHANGE_OVER_S, EGRESS_USD)
    result = replay(Controlled(HISTORY_S), market, job, record=True)
    placements = result.placements
    waits = sum(
        1
        for before, after in zip([None, *placements], placements, strict=False)
        if after.kind is Kind.WAIT and (before is None or before.kind is not Kind.WAIT)
    )
    # a running placement left by choice (not by an interruption: the replay marks those idle
    # before the policy acts, so they show as spot → idle at the start of a tick)
    return {
        "cost_usd": result.cost_usd,
        "missed": result.missed,
        "finish_h": result.finish_s / 3600,
        "spot_starts": result.spot_starts,
        "on_demand_starts": result.on_demand_starts,
        "interruptions": result.interruptions,
        "moves": result.moves,
        "yields": result.spot_starts + result.on_demand_starts - 1 - result.interruptions,
        "waits": waits,
        "spot_hours": result.spot_hours,
        "on_demand_hours": result.on_demand_hours,
    }


def pick_starts(count: int, gap: float) -> list[int]:
    """Start ticks (whole trace hours from day 7) where the controller waits and retries spot."""
    chosen: list[int] = []
    ticks_per_hour = 3600 / gap
    hour = int(HISTORY_S / 3600)
    total_h = int(len(stamps()) / ticks_per_hour) - int(SLACK * WORK_H) - 2
    while len(chosen) < count and hour < total_h:
        tick = round(hour * ticks_per_hour)
        sim = simulate(tick)
        if sim["waits"] >= 1 and sim["spot_starts"] >= 2 and not sim["missed"]:
            chosen.append(tick)
        hour += 1
    return chosen


def prime(model: Any, key: str, start_s: float) -> None:
    """Feed the trace's 7 days before ``start_s`` into the live model (as the replay does)."""
    from prefect_cloudsched.simulate.spot import load_spot_trace

    lane = load_spot_trace(TRACE).lanes[ZONE]
    first = start_s - HISTORY_S
    model.observe(key, first, lane.up_at(first) is not None)
    for begin, end in zip(lane.starts, lane.ends, strict=True):
        if first < begin <= start_s:
            model.observe(key, begin, True)
        if first < end <= start_s:
            model.observe(key, end, False)


def live(start_tick: int, seconds_per_trace_hour: float, gap: float, home: Path) -> dict[str, Any]:
    """The same job through the runtime session on trace-following MockClouds."""
    from prefect_cloudsched.adapters.ledger import Ledger
    from prefect_cloudsched.core.catalog import load_catalog
    from prefect_cloudsched.core.needs import TaskNeeds
    from prefect_cloudsched.core.policy import PlacementState, PolicyConfig
    from prefect_cloudsched.prefect import checkpoint
    from prefect_cloudsched.runtime.session import Session
    from prefect_cloudsched.testing.clouds import MockClouds
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor
    from prefect_cloudsched.testing.spot_job import run_controlled_job

    start_s = stamps()[start_tick]
    owner = f"live-{start_tick}"
    ledger_url = f"sqlite:///{home / f'live-{start_tick}.db'}"
    with MockClouds(
        owner,
        spot_trace=TRACE,
        seconds_per_trace_hour=seconds_per_trace_hour,
        ledger_url=ledger_url,
    ) as clouds:
        session = Session(
            catalog=load_catalog(),
            policy=PolicyConfig(
                allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset({REGION})
            ),
            ledger=Ledger(ledger_url),
            state=PlacementState(),
            spot_retries=2,
            provisioners={"aws": clouds.provisioners["aws"]},
            executor=InstanceStandInExecutor(),
        )
        spot = session.spot_live
        spot.mover = checkpoint
        spot.change_over_s, spot.horizon_s, spot.egress_usd = CHANGE_OVER_S, gap, EGRESS_USD
        prime(spot.model, REGION, start_s)
        unit = timedelta(seconds=seconds_per_trace_hour)
        # the replay's deadline is its last whole tick before slack × work
        deadline_h = math.floor(SLACK * WORK_H * 3600 / gap + 1e-6) * gap / 3600
        needs = TaskNeeds(
            gpus=1,
            gpu_type="V100",
            spot_ok=True,
            checkpointable=True,
            est_runtime=unit * WORK_H,
            deadline=unit * deadline_h,
        )
        warm_up(session)
        trace = clouds.trace_clock
        trace.started = trace.clock() - start_s * trace.scale  # trace time = the job's start
        wall = time.perf_counter()
        run = run_controlled_job(session, needs, f"job-{start_tick}")
        finish_h = (run.finished_s - start_s) / 3600
        wall = time.perf_counter() - wall
        records = session.close()
        left = clouds.running_instances(owner_id=owner)
    job = next(iter(spot.jobs.values()))
    speed = 3600 / seconds_per_trace_hour
    micro = sum(r.cost_micro for r in records)
    kinds = [kind for _, kind, _ in job.log]
    return {
        "cost_micro_wall": micro,
        "cost_usd": micro / 1e6 * speed,
        "finish_h": finish_h,
        "missed": finish_h > deadline_h,
        "spot_starts": sum(r.option == "spot" for r in records),
        "on_demand_starts": sum(r.option == "on-demand" for r in records),
        "interruptions": sum(r.state == "interrupted" for r in records),
        "moves": job.moves,
        "yields": sum(r.state == "moved" for r in records),
        "waits": sum(1 for a, b in zip(["x", *kinds], kinds, strict=False) if b == "wait" != a),
        "attempt_states": [f"{r.option}:{r.state}" for r in records],
        "refused_launches": sum(z is None for _, _, z in clouds.trace_launches),
        "instances_left_running": len(left),
        "wall_s": wall,
        "launch_latency_trace_h": [round(x, 4) for x in launch_latency_h(job)],
        "spot_hours": sum(r.runtime_s for r in records if r.option == "spot") * speed / 3600,
        "on_demand_hours": sum(r.runtime_s for r in records if r.option == "on-demand")
        * speed
        / 3600,
    }


def warm_up(session: Any) -> None:
    """Start and release one on-demand instance first: the first launch of a process pays
    for boto3's client set-up (measured ~0.5 s, half a trace hour at 1 s per trace hour),
    which no later launch pays and which the replay's change-over does not model."""
    from prefect_cloudsched.core.catalog import PurchaseOption

    offer = next(
        o
        for o in session.catalog.offers
        if o.region == REGION
        and o.instance_type == "p3.2xlarge"
        and o.option is PurchaseOption.ON_DEMAND
    )
    provisioner = session.provisioners["aws"]
    provisioner.release(provisioner.ensure(offer, run_id="warm-up", task_name="warm-up"))


def launch_latency_h(job: Any) -> list[float]:
    """Trace hours from each decision to spot/on-demand to its instance running."""
    found, decided = [], None
    for at, kind, _ in job.log:
        if kind in ("spot", "on-demand"):
            decided = at if decided is None else decided
        elif kind == "started" and decided is not None:
            found.append((at - decided) / 3600)
            decided = None
        elif kind == "wait":
            decided = None
    return found


def compare(sim: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """How the live run differs from the replay."""
    return {
        "cost_ratio": got["cost_usd"] / sim["cost_usd"],
        "cost_within_2pct": abs(got["cost_usd"] / sim["cost_usd"] - 1) <= 0.02,
        "same_spot_starts": got["spot_starts"] == sim["spot_starts"],
        "same_moves": got["moves"] == sim["moves"],
        "same_yields": got["yields"] == sim["yields"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seconds-per-trace-hour", type=float, default=1.0)
    args = parser.parse_args()
    home = isolate()
    from prefect_cloudsched.simulate.spot_replay import load_market

    gap = load_market(TRACE, on_demand_usd_per_hour=1, spot_usd_per_hour=1).gap_s
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tick in pick_starts(args.jobs, gap):
            sim = simulate(tick)
            got = live(tick, args.seconds_per_trace_hour, gap, Path(tmp))
            rows.append({"start_tick": tick, "simulated": sim, "live": got, **compare(sim, got)})
            print(rows[-1], flush=True)
    write(
        "live_spot",
        {"jobs": rows, "args": vars(args), "machine": machine(), "home": str(home)},
        _markdown(rows, args),
    )


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Live = simulated: one spot-controlled job, runner vs replay",
        "",
        f"`bench/bench_live_spot.py --jobs {args.jobs} --seconds-per-trace-hour "
        f"{args.seconds_per_trace_hour}`: p3.2xlarge in {REGION}, {WORK_H:g} h of work, "
        f"deadline {SLACK} ×, change-over {CHANGE_OVER_S / 3600:g} h.",
        "",
        "| start tick | sim $ | live $ | live ÷ sim | spot starts sim/live | OD starts "
        "sim/live | interruptions sim/live | yields sim/live | moves sim/live | waits sim/live "
        "| finish h sim/live | live wall s | left running |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, g = r["simulated"], r["live"]
        lines.append(
            f"| {r['start_tick']} | {s['cost_usd']:.3f} | {g['cost_usd']:.3f} "
            f"| **{r['cost_ratio']:.4f}** | {s['spot_starts']}/{g['spot_starts']} "
            f"| {s['on_demand_starts']}/{g['on_demand_starts']} "
            f"| {s['interruptions']}/{g['interruptions']} | {s['yields']}/{g['yields']} "
            f"| {s['moves']}/{g['moves']} | {s['waits']}/{g['waits']} "
            f"| {s['finish_h']:.2f}/{g['finish_h']:.2f} | {g['wall_s']:.1f} "
            f"| {g['instances_left_running']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
