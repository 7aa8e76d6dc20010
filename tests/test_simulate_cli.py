"""The simulate command: JSON shape, output files, and exit 2 with one line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_cloudsched.cli import main
from prefect_cloudsched.errors import InputError
from prefect_cloudsched.simulate import SpotModel, load_jobs, load_spot_trace

HEADER = "job_id,submit_s,duration_s,gpus,cpus,memory_gib,status,job_class\n"
ROWS = (
    "a,0,600,1,4,16,Running,BE\n"
    "b,60,1200,1,8,32,Running,LS\n"
    "c,120,300,0,2,4,Succeeded,BE\n"
    "d,180,30,1,,,SUCCEED,TXT_2_IMG\n"
)


def write(tmp_path: Path, text: str, name: str = "jobs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_json_has_one_object_per_policy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = write(tmp_path, HEADER + ROWS)
    code = main(["simulate", "--jobs", str(jobs), "--policies", "fcfs,on-demand,greedy,hybrid",
                 "--json", "--seed", "3"])  # fmt: skip
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["policy"] for d in data] == ["fcfs", "on-demand", "greedy", "hybrid"]
    for row in data:
        for key in ("cost", "cost_vs_ondemand", "cost_vs_bound", "deadline_miss_rate",
                    "p95_completion_s", "energy_kwh"):  # fmt: skip
            assert isinstance(row[key], float | int), key
        assert row["jobs"] == 4
        assert row["cost"] >= row["bound_cost"] or row["deadline_misses"] > 0
    ondemand = next(d for d in data if d["policy"] == "on-demand")
    assert ondemand["cost_vs_ondemand"] == 1.0


def test_out_writes_table_csv_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = write(tmp_path, HEADER + ROWS)
    out = tmp_path / "out"
    assert (
        main(["simulate", "--jobs", str(jobs), "--policies", "edf,spot-only", "--out", str(out)])
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == ["simulate.csv", "simulate.md", "simulate_cost_breakdown.png",
                     "simulate_cost_vs_misses.png"]  # fmt: skip
    assert "| edf |" in (out / "simulate.md").read_text()
    captured = capsys.readouterr()
    assert "| spot-only |" in captured.out and f"wrote {out}" in captured.err
    args = ["-q", "simulate", "--jobs", str(jobs), "--policies", "edf", "--out", str(out)]
    assert main(args) == 0
    assert capsys.readouterr().err == ""  # --quiet: no status lines, "wrote" included


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        (HEADER, "no jobs"),
        (HEADER.replace("class", "class,extra") + "a,0,1,1,1,1,x,BE,9\n", "column 'extra'"),
        (HEADER.replace(",status", ""), "missing column 'status'"),
        (HEADER + "a,0,-5,1,1,1,x,BE\n", "line 2: column duration_s='-5' must be >= 0"),
        (HEADER + "a,0,inf,1,1,1,x,BE\n", "line 2: column duration_s='inf' must be finite"),
        (HEADER + "a,zero,5,1,1,1,x,BE\n", "line 2: column submit_s='zero' is not a number"),
        (HEADER + "a,0,5,1,1\n", "line 2: expected 8"),
        (HEADER + "a,0,5,1.5,1,1,x,BE\n", "line 2: column gpus"),
        (HEADER + "a,0,5,1,1,1,x,BE\na,1,5,1,1,1,x,BE\n", "line 3: job_id 'a' is already on"),
    ],
)  # fmt: skip
def test_bad_jobs_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, needle: str
) -> None:
    jobs = write(tmp_path, text)
    assert main(["simulate", "--jobs", str(jobs)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert err.startswith("Error: ") and "Traceback" not in err


def test_bad_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = write(tmp_path, HEADER + ROWS)
    for args, needle in (
        (["--policies", "fcfs,lottery"], "unknown policy 'lottery'"),
        (["--deadline-slack", "0.5"], "must be a number >= 1"),
        (["--gpu-type", "Z80"], "--gpu-type"),
        (["--limit", "0"], "--limit must be >= 1"),
    ):
        assert main(["simulate", "--jobs", str(jobs), *args]) == 2
        assert needle in capsys.readouterr().err


SPOT = "timestamp_utc,us-east-1a,us-east-1b\n" + "".join(
    f"2023-02-15T{h:02d}:00:00Z,{int(h < 2 or h >= 4)},{int(h == 3)}\n" for h in range(6)
)


def test_spot_trace_reads_one_as_available(tmp_path: Path) -> None:
    trace = load_spot_trace(write(tmp_path, SPOT, "aws_g.x_avail_2023.csv"))
    assert trace.instance_type == "g.x"
    assert trace.regions == {"us-east-1": ["us-east-1a", "us-east-1b"]}
    a = trace.lanes["us-east-1a"]
    assert (a.starts, a.ends) == ([0.0, 4 * 3600.0], [2 * 3600.0, 6 * 3600.0])
    b = trace.lanes["us-east-1b"]
    assert (b.starts, b.ends) == ([3 * 3600.0], [4 * 3600.0])


def test_spot_trace_must_cover_the_jobs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trace = write(tmp_path, SPOT, "aws_g.x_avail_2023.csv")
    jobs = write(tmp_path, HEADER + "a,0,30000,1,1,1,x,BE\n")
    assert main(["simulate", "--jobs", str(jobs), "--spot-trace", str(trace)]) == 2
    assert "covers 6.0 h but the jobs span 8.3 h" in capsys.readouterr().err
    with pytest.raises(InputError):
        SpotModel(trace=load_spot_trace(trace)).check_covers(7 * 3600.0)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("z9.mega", "prefect-cloudsched prices"), ("p3.2xlarg", "did you mean p3.2xlarge")],
)
def test_unknown_spot_instance_exits_2_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, hint: str
) -> None:
    jobs = write(tmp_path, HEADER + ROWS)
    trace = write(tmp_path, SPOT, "aws_g.x_avail_2023.csv")
    argv = ["simulate", "--jobs", str(jobs), "--spot-trace", str(trace), "--spot-instance", name]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: --spot-instance {name!r} is not an instance type")
    assert hint in err and len(err.splitlines()) == 1


def test_bad_spot_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jobs = write(tmp_path, HEADER + ROWS)
    bad = write(
        tmp_path, "timestamp_utc,us-east-1a\n2023-02-15T00:00:00Z,maybe\n", "aws_g.x_avail_1.csv"
    )
    assert main(["simulate", "--jobs", str(jobs), "--spot-trace", str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_class_rules_and_deadlines(tmp_path: Path) -> None:
    jobs = load_jobs(write(tmp_path, HEADER + ROWS), deadline_slack=(2.0,))
    by_id = {j.job_id: j for j in jobs}
    assert by_id["a"].needs.allows_spot and by_id["a"].needs.checkpointable
    assert not by_id["b"].needs.allows_spot and by_id["b"].needs.priority.value == "high"
    assert by_id["d"].needs.priority.value == "realtime"
    assert by_id["b"].deadline_s == 60 + 2 * 1200
    drawn = load_jobs(write(tmp_path, HEADER + ROWS), deadline_slack=(1.2, 4.0), seed=1)
    again = load_jobs(write(tmp_path, HEADER + ROWS), deadline_slack=(1.2, 4.0), seed=1)
    assert [j.deadline_s for j in drawn] == [j.deadline_s for j in again]
    factors = {round((j.deadline_s - j.submit_s) / j.duration_s, 6) for j in drawn}
    assert factors <= {1.2, 4.0}
