"""Live = simulated: one spot-controlled job through the runtime on trace-following stand-in
clouds, and through the single-job replay, on the same trace window.

* **Market**: ``bench/data/aws_p3.2xlarge_avail_2023-02-15.csv``, one zone per region
  (``--zones``, default us-east-2a: the region's only zone), so "the first zone up" of a
  region — where a stand-in AWS launch lands — is the zone the simulator runs in;
  p3.2xlarge at the catalog's prices (us-east-2: spot $0.459/h, on-demand $3.06/h: the live
  ledger bills the catalog offer, so the replay uses the same prices). With several regions
  the job may move its checkpoint; the replay pays ``EGRESS_USD`` per move and the ledger
  bills it in a transfer row per move, so live ÷ replay compares totals with egress (the
  instances alone are compared beside them).
* **Job**: 6 trace hours of work, deadline 1.5 × (9 h), change-over 0.2 h, one decision per
  trace tick (195 s) in both. The controller has seen the 7 trace days before the start in
  both (the replay's ``Controlled`` and the live session's shared availability model).
* **Start points**: every whole trace hour from day 7 on; the first ``--jobs`` where the
  replayed controller waits at least once and starts spot at least twice, and with several
  regions moves at least once (windows where spot is always up or always down test
  nothing).
* **Live**: ``MockClouds(spot_trace=..., seconds_per_trace_hour=S)`` (moto; the trace clock
  set to the job's start), a :class:`~prefect_cloudsched.runtime.session.Session` with the
  instance stand-in executor, the job driven by ``testing/spot_job.run_controlled_job``
  (what Prefect's retries do). The stand-in plays the trace on the replay's time axis (tick
  i at i × the median gap; ``--real-tick-times``: at its own timestamps).
* **Cost**: the replay's, and what the live ledger bills as the report counts it — each
  instance from its launch request to its termination (task row + boot/idle row), the
  one-minute minimum applied in trace seconds — in wall seconds × (3600 / S). The task rows
  alone (from the instance running) are reported beside it, and every segment of both
  sides (decision, launch, running, end, rate, $) in the markdown.

Run: ``.venv/bin/python bench/bench_live_spot.py [--jobs 3 --seconds-per-trace-hour 1.0]
[--zones us-east-2a,us-west-2a --name live_spot.multi]``.
Writes ``bench/results/<name>.json`` and ``.md`` (``live_spot`` by default).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DATA, isolate, machine, write

TRACE = DATA / "aws_p3.2xlarge_avail_2023-02-15.csv"
#: The zones the job may use, one per region (``--zones``): a stand-in launch lands in the
#: first zone up of its region, so with one zone per region it lands where the replay's
#: controller chose. Several regions: the job may move its checkpoint (egress per move).
ZONES = ["us-east-2a"]
WORK_H, SLACK = 6.0, 1.5
CHANGE_OVER_S = 0.2 * 3600
EGRESS_USD = 0.2
HISTORY_S = 7 * 86400.0
#: The stand-in clouds play the trace on the replay's time axis (tick i at i × the median
#: gap); ``--real-tick-times`` plays it at its own timestamps instead (see ``main``).
UNIFORM_TICKS = True


def stamps() -> list[float]:
    """Trace time (s since the first tick) of every tick, on the stand-in's time axis."""
    with TRACE.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    times = [datetime.fromisoformat(r[0].replace("Z", "+00:00")).timestamp() for r in rows]
    if UNIFORM_TICKS:
        gap = statistics.median(b - a for a, b in itertools.pairwise(times))
        return [i * gap for i in range(len(times))]
    return [t - times[0] for t in times]


def spot_trace() -> Any:
    """The trace as the stand-in clouds play it."""
    from prefect_cloudsched.simulate.spot import load_spot_trace

    full = load_spot_trace(TRACE, uniform_ticks=UNIFORM_TICKS)
    return replace(
        full,
        regions={r: [z] for z, r in zip(ZONES, regions(), strict=True)},
        lanes={z: full.lanes[z] for z in ZONES},
    )


def regions() -> list[str]:
    """The region of each zone in ``ZONES``."""
    from prefect_cloudsched.simulate.spot import zone_region

    return [zone_region(z) for z in ZONES]


def prices() -> tuple[dict[str, float], float]:
    """Spot USD/h of every zone of the trace (its region's p3.2xlarge offer) and the
    on-demand USD/h of ``ZONES``' regions, from the catalog (the replay takes one on-demand
    price: they must agree)."""
    from prefect_cloudsched.core.catalog import PurchaseOption, load_catalog
    from prefect_cloudsched.simulate.spot import zone_region

    found = {
        (o.region, o.option): o.usd_per_hour
        for o in load_catalog().offers
        if o.cloud == "aws" and o.instance_type == "p3.2xlarge"
    }
    on_demand = {found[r, PurchaseOption.ON_DEMAND] for r in regions()}
    if len(on_demand) != 1:
        raise SystemExit(f"--zones: on-demand prices differ between regions ({on_demand})")
    with TRACE.open(newline="") as handle:
        zones = next(csv.reader(handle))[1:]
    spot = {z: found[zone_region(z), PurchaseOption.SPOT] for z in zones}  # every zone's
    return spot, on_demand.pop()


def late_share() -> float:
    """The live side's ``late_s`` as a share of a tick: it checks the instance
    ``CHECKS_PER_DECISION`` times a tick, and after a loss the stand-in body stops at its
    next save (``end_s`` = one save period, ``SAVES_PER_TICK`` saves a tick)."""
    from prefect_cloudsched.runtime.spot_settings import CHECKS_PER_DECISION
    from prefect_cloudsched.testing.spot_job import SAVES_PER_TICK

    return 1 / CHECKS_PER_DECISION + 1 / SAVES_PER_TICK


def simulate(start_tick: int) -> dict[str, Any]:
    """The replay of the job from ``start_tick`` under the controller."""
    from prefect_cloudsched.core.policy.spot_control import Kind
    from prefect_cloudsched.simulate.spot_replay import Controlled, SpotJob, load_market, replay

    spot, on_demand = prices()
    market = load_market(TRACE, on_demand_usd_per_hour=on_demand, spot_usd_per_hour=spot)
    market = market.only(ZONES)
    job = SpotJob(start_tick, WORK_H * 3600, SLACK * WORK_H * 3600, CHANGE_OVER_S, EGRESS_USD)
    # the live side's margin for a late decision (check_s + end_s), replayed as it keeps it
    result = replay(
        Controlled(HISTORY_S, late_s=late_share() * market.gap_s), market, job, record=True
    )
    placements = result.placements
    waits = sum(
        1
        for before, after in zip([None, *placements], placements, strict=False)
        if after.kind is Kind.WAIT and (before is None or before.kind is not Kind.WAIT)
    )
    # a running placement left by choice (not by an interruption: the replay marks those idle
    # before the policy acts, so they show as spot → idle at the start of a tick)
    egress = result.moves * EGRESS_USD  # the replay pays it once per move
    return {
        "cost_usd": result.cost_usd,
        "egress_usd": egress,
        # what instances cost: the part the ledger's instance rows bill
        "instances_usd": result.cost_usd - egress,
        "segments": replay_segments(placements, result, market, spot, on_demand),
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


def replay_segments(
    placements: list[Any], result: Any, market: Any, spot: dict[str, float], on_demand: float
) -> list[dict[str, Any]]:
    """Each run of one placement in the replay: trace hours from the job's start, rate, $.

    The replay bills from the tick of the decision (the change-over is paid at the new
    price) to the tick the placement ends, or to the job's finish.
    """
    from prefect_cloudsched.core.policy.spot_control import Kind

    g, found = market.gap_s, []
    for step, here in enumerate(placements):
        if here.kind is Kind.WAIT:
            continue
        last = found[-1] if found else None
        if last is not None and last["ticks"][1] == step and last["placement"] == here:
            last["ticks"][1] = step + 1
        else:
            found.append({"placement": here, "ticks": [step, step + 1]})
    rows = []
    for seg in found:
        begin, end = seg["ticks"][0] * g, min(seg["ticks"][1] * g, result.finish_s)
        here = seg["placement"]
        rate = spot[here.zone] if here.kind is Kind.SPOT else on_demand
        rows.append(
            {
                "kind": here.kind.value,
                "region": here.region,
                "decided_h": begin / 3600,
                "billed_from_h": begin / 3600,
                "billed_to_h": end / 3600,
                "billed_h": (end - begin) / 3600,
                "usd_per_hour": rate,
                "usd": rate * (end - begin) / 3600,
            }
        )
    return rows


def pick_starts(count: int, gap: float) -> list[int]:
    """Start ticks (whole trace hours from day 7) where the controller waits and retries spot."""
    chosen: list[int] = []
    ticks_per_hour = 3600 / gap
    hour = int(HISTORY_S / 3600)
    total_h = int(len(stamps()) / ticks_per_hour) - int(SLACK * WORK_H) - 2
    while len(chosen) < count and hour < total_h:
        tick = round(hour * ticks_per_hour)
        sim = simulate(tick)
        moves_ok = len(ZONES) == 1 or sim["moves"] >= 1  # several regions: a move to test
        if sim["waits"] >= 1 and sim["spot_starts"] >= 2 and moves_ok and not sim["missed"]:
            chosen.append(tick)
        hour += 1
    return chosen


def prime(model: Any, key: str, zone: str, start_s: float) -> None:
    """Feed ``zone``'s 7 days before ``start_s`` into the live model's market ``key`` (its
    region), as the replay does."""
    lane = spot_trace().lanes[zone]
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
    from prefect_cloudsched.core.records import TRANSFER_STATE
    from prefect_cloudsched.prefect import checkpoint
    from prefect_cloudsched.runtime.session import Session
    from prefect_cloudsched.testing.clouds import MockClouds
    from prefect_cloudsched.testing.executor import InstanceStandInExecutor
    from prefect_cloudsched.testing.spot_job import SAVES_PER_TICK, run_controlled_job

    start_s = stamps()[start_tick]
    owner = f"live-{start_tick}"
    ledger_url = f"sqlite:///{home / f'live-{start_tick}.db'}"
    with MockClouds(
        owner,
        spot_trace=spot_trace(),
        seconds_per_trace_hour=seconds_per_trace_hour,
        ledger_url=ledger_url,
    ) as clouds:
        session = Session(
            catalog=load_catalog(),
            policy=PolicyConfig(
                allowed_clouds=frozenset({"aws"}), allowed_regions=frozenset(regions())
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
        spot.end_s = gap / SAVES_PER_TICK  # the body stops at its next save after a loss
        assert abs(spot.late_s - late_share() * gap) < 1e-6 * gap  # the replay's margin
        for zone, region in zip(ZONES, regions(), strict=True):
            prime(spot.model, region, zone, start_s)
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
        anchor = (datetime.now(UTC), trace.now())  # wall time → trace time (segments)
        wall = time.perf_counter()
        run = run_controlled_job(session, needs, f"job-{start_tick}")
        finish_h = (run.finished_s - start_s) / 3600
        wall = time.perf_counter() - wall
        records = session.close()
        left = clouds.running_instances(owner_id=owner)
        instances = {r["instance_id"]: r for r in Ledger(ledger_url).instances(run_id=None)}
    job = next(iter(spot.jobs.values()))
    speed = 3600 / seconds_per_trace_hour
    transfers = [r for r in records if r.state == TRANSFER_STATE]
    records = [r for r in records if r.state != TRANSFER_STATE]
    micro = sum(r.cost_micro for r in records)
    kinds = [kind for _, kind, _ in job.log]
    segments = live_segments(records, instances, job, anchor, start_s, speed)
    # a transfer is billed in dollars, not by the (scaled) hour: it is not rescaled
    egress = sum(r.cost_micro for r in transfers) / 1e6
    instances_usd = sum(seg["usd"] for seg in segments)
    return {
        "cost_micro_wall": micro,
        # what the ledger bills, as the report counts it: the task rows plus each instance's
        # time no row paid (launch request → running, loss → termination), in trace time,
        # plus the moves' transfer rows
        "cost_usd": instances_usd + egress,
        "instances_usd": instances_usd,
        "egress_usd": egress,
        "transfer_rows": len(transfers),
        "task_rows_usd": micro / 1e6 * speed,
        "segments": segments,
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


def live_segments(
    records: list[Any],
    instances: dict[str, Any],
    job: Any,
    anchor: tuple[datetime, float],
    start_s: float,
    speed: float,
) -> list[dict[str, Any]]:
    """Each attempt of the live run: trace hours from the job's start, rate, what is billed.

    ``billed_*`` is the instance from its launch request to its termination, the time the
    report charges (``core/instance_time.py``: the task row, plus the instance's boot and
    idle row), with the one-minute minimum applied in trace seconds
    (:func:`~prefect_cloudsched.core.accounting.billed_seconds`: the wall-clock minimum of
    a scaled run would be hours of trace time). ``row_*`` is the task row alone (from the
    instance running to the end of the attempt's billing).
    """
    from prefect_cloudsched.core.accounting import billed_seconds

    wall0, trace0 = anchor

    def hours(when: datetime | None) -> float | None:
        if when is None:
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        return (trace0 + (when - wall0).total_seconds() * speed - start_s) / 3600

    decided = [(at - start_s) / 3600 for at, kind, _ in job.log if kind in ("spot", "on-demand")]
    rows = []
    for record in sorted(records, key=lambda r: r.started_at):
        instance = instances.get(record.instance_id or "", {})
        running = hours(record.started_at) or 0.0
        launch, ended = hours(instance.get("launched_at")), hours(instance.get("terminated_at"))
        rate = record.price_micro_per_hour / 1e6
        row_h = record.runtime_s * speed / 3600
        row_usd = record.cost_micro / 1e6 * speed
        life_h = (ended - launch) if launch is not None and ended is not None else row_h
        usd = max(row_usd, rate * billed_seconds(life_h * 3600, record.option) / 3600)
        rows.append(
            {
                "kind": record.option,
                "region": record.region,
                "state": record.state,
                "decided_h": max((d for d in decided if d <= (launch or running)), default=None),
                "billed_from_h": launch,
                "running_h": running,
                "row_to_h": running + row_h,
                "billed_to_h": ended,
                "row_h": row_h,
                "billed_h": life_h,
                "usd_per_hour": rate,
                "row_usd": row_usd,
                "usd": usd,
            }
        )
    return rows


def warm_up(session: Any) -> None:
    """Start and release one on-demand instance first: the first launch of a process pays
    for boto3's client set-up (measured ~0.5 s, half a trace hour at 1 s per trace hour),
    which no later launch pays and which the replay's change-over does not model."""
    from prefect_cloudsched.core.catalog import PurchaseOption

    provisioner = session.provisioners["aws"]
    for region in regions():  # each region's client is set up at its first launch
        offer = next(
            o
            for o in session.catalog.offers
            if o.region == region
            and o.instance_type == "p3.2xlarge"
            and o.option is PurchaseOption.ON_DEMAND
        )
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
    ratio = got["cost_usd"] / sim["cost_usd"]  # both with the moves' egress
    return {
        "cost_ratio": ratio,
        "instances_ratio": got["instances_usd"] / sim["instances_usd"],
        "cost_within_2pct": abs(ratio - 1) <= 0.02,
        "same_spot_starts": got["spot_starts"] == sim["spot_starts"],
        "same_moves": got["moves"] == sim["moves"] == got["transfer_rows"],
        "same_yields": got["yields"] == sim["yields"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seconds-per-trace-hour", type=float, default=1.0)
    parser.add_argument(
        "--zones",
        default=",".join(ZONES),
        help="comma-separated trace zones, one per region (several: the job may move)",
    )
    parser.add_argument("--name", default="live_spot", help="bench/results/<name>.json|md")
    parser.add_argument(
        "--real-tick-times",
        action="store_true",
        help="stand-in clouds play the trace at its own timestamps, not the replay's axis",
    )
    args = parser.parse_args()
    global UNIFORM_TICKS
    UNIFORM_TICKS = not args.real_tick_times
    ZONES[:] = [z.strip() for z in args.zones.split(",") if z.strip()]
    if len(set(regions())) != len(ZONES):
        raise SystemExit("--zones: give one zone per region")
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
        args.name,
        {"jobs": rows, "args": vars(args), "machine": machine(), "home": str(home)},
        _markdown(rows, args),
    )


def _markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    axis = "its own timestamps" if args.real_tick_times else "the replay's time axis"
    lines = [
        "# Live = simulated: one spot-controlled job, runner vs replay",
        "",
        f"`bench/bench_live_spot.py --jobs {args.jobs} --seconds-per-trace-hour "
        f"{args.seconds_per_trace_hour}{' --real-tick-times' if args.real_tick_times else ''}"
        f"{'' if args.zones == 'us-east-2a' else f' --zones {args.zones} --name {args.name}'}`"
        f": p3.2xlarge in {', '.join(ZONES)}, {WORK_H:g} h of work, deadline {SLACK} ×, "
        f"change-over {CHANGE_OVER_S / 3600:g} h; the stand-in clouds play the trace on {axis}.",
        "",
        "Live $ is what the ledger bills as the report counts it (each instance from its launch "
        "request to its termination: task row + boot/idle row), in trace time; task rows $ is "
        "the task rows alone (from the instance running). Both sides include the moves' "
        f"egress (${EGRESS_USD:.2f} per move; in brackets): the replay pays it per move, "
        "the ledger bills it in one transfer row per move. live ÷ sim compares the totals; "
        "instances ÷ sim the instances alone.",
        "",
        "| start tick | sim $ (egress) | live $ (egress) | live ÷ sim | instances ÷ sim "
        "| task rows $ (÷ sim instances) "
        "| spot starts sim/live | OD starts sim/live | interruptions sim/live "
        "| yields sim/live | moves sim/live | waits sim/live | finish h sim/live | live wall s "
        "| left running |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, g = r["simulated"], r["live"]
        lines.append(
            f"| {r['start_tick']} | {s['cost_usd']:.3f} ({s['egress_usd']:.2f}) "
            f"| {g['cost_usd']:.3f} ({g['egress_usd']:.2f}) | **{r['cost_ratio']:.4f}** "
            f"| {r['instances_ratio']:.4f} | {g['task_rows_usd']:.3f} "
            f"({g['task_rows_usd'] / s['instances_usd']:.4f}) "
            f"| {s['spot_starts']}/{g['spot_starts']} "
            f"| {s['on_demand_starts']}/{g['on_demand_starts']} "
            f"| {s['interruptions']}/{g['interruptions']} | {s['yields']}/{g['yields']} "
            f"| {s['moves']}/{g['moves']} | {s['waits']}/{g['waits']} "
            f"| {s['finish_h']:.2f}/{g['finish_h']:.2f} | {g['wall_s']:.1f} "
            f"| {g['instances_left_running']} |"
        )
    lines += [
        "",
        "## Per segment",
        "",
        "Trace hours from the job's start. Replay: billed from the decision's tick to the "
        "tick the placement ends (or the finish). Live: decided → launch request (billed "
        "from) → running (task row from) → task row to → instance terminated (billed to).",
        "",
        "| start tick | # | kind, region sim / live | sim decided–to h | sim billed h | sim $ "
        "| live decided h "
        "| live launch → running h | live row to / billed to h | live billed h (row h) "
        "| live $ (row $) | live − sim $ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sims, lives = r["simulated"]["segments"], r["live"]["segments"]
        for i in range(max(len(sims), len(lives))):
            a = sims[i] if i < len(sims) else None
            b = lives[i] if i < len(lives) else None
            kind = (a or b or {}).get("kind", "?")
            where = f"{(a or {}).get('region', '–')} / {(b or {}).get('region', '–')}"
            sim_cells = (
                f"{a['decided_h']:.4f}–{a['billed_to_h']:.4f} | {a['billed_h']:.4f} "
                f"| {a['usd']:.3f}"
                if a
                else "– | – | –"
            )
            live_cells = (
                f"{_h(b['decided_h'])} | {_h(b['billed_from_h'])} → {b['running_h']:.4f} "
                f"| {b['row_to_h']:.4f} / {_h(b['billed_to_h'])} "
                f"| {b['billed_h']:.4f} ({b['row_h']:.4f}) | {b['usd']:.3f} ({b['row_usd']:.3f})"
                if b
                else "– | – | – | – | –"
            )
            delta = f"{b['usd'] - a['usd']:+.3f}" if a and b else "–"
            lines.append(f"| {r['start_tick']} | {i + 1} | {kind}, {where} | {sim_cells} "
                         f"| {live_cells} | {delta} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _h(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
