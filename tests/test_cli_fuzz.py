"""Property: whatever a user types, every command ends with exit 0, or with exit 2 and exactly
one ``Error:`` line; never a traceback, never the "unexpected" bug line.

Hypothesis draws each command's options (numbers as text: NaN, infinities, 1e308, 25-digit
integers, negative counts) and its CSV inputs (valid, empty, header-only, wrong columns,
non-UTF-8, huge hours). Offline: the only endpoints are closed loopback ports. Examples are
bounded so the whole file runs in about a minute.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prefect_cloudsched.cli import main

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
WORK = Path(tempfile.mkdtemp(prefix="cloudsched-fuzz-"))

# ---------------------------------------------------------------- value strategies

WEIRD_NUMBER = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-1e308", "0", "-0", "-5", "abc", "", "1e-9"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**25), 10**25).map(str),
)
#: Mostly plausible numbers (so runs get past the option checks), sometimes weird ones.
NUMBER_TEXT = st.one_of(
    st.integers(1, 50).map(str),
    st.floats(0.05, 0.95).map(lambda x: f"{x:.2f}"),
    st.sampled_from(["1", "2", "0.5", "0.9", "24"]),
    WEIRD_NUMBER,
)
WORDS = st.one_of(
    st.sampled_from(["A10G", "a100", "H100", "mars-1", "us-east-1", "aws", "gcp", "azure", ""]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)
DURATIONS = st.one_of(
    st.sampled_from(["7d", "24h", "99999999999d", "1.5h", "0s", "2026-11-01", "2026-13-45", "x"]),
    st.integers(0, 10**12).map(lambda n: f"{n}d"),
)

# ---------------------------------------------------------------- CSV file strategies


def _csv(header: str, rows: list[list[str]]) -> bytes:
    return ("\n".join([header, *(",".join(r) for r in rows)]) + "\n").encode()


BROKEN_FILES = st.sampled_from(
    [
        b"",
        b"\xff\xfe\x00\x01not utf-8\n",
        "hour,gpu_hours\n1,2\n".encode("utf-16"),
        b"just one line without commas",
        b'"unterminated,quote\n1,2\n',
        b"a,b,c\n1,2\n3,4,5,6\n",
    ]
)
CELL = st.one_of(NUMBER_TEXT, st.sampled_from(["", "x", "1", "3600", "Terminated", "BE"]))


MODES = st.sampled_from(["good", "good", "good", "one bad value", "broken"])


@st.composite
def series_files(draw) -> bytes:
    """Hourly demand CSVs: plausible, with one bad value or huge hours, or broken."""
    mode = draw(MODES)
    if mode == "broken":
        return draw(BROKEN_FILES)
    start = draw(st.sampled_from([0, 0, 0, 0, 10**15, -5, 2**62]))
    length = draw(st.one_of(st.integers(0, 30), st.integers(200, 400), st.integers(200, 400)))
    values = [f"{v:.2f}" for v in draw(st.lists(st.floats(0, 100), min_size=length,
                                                 max_size=length))]  # fmt: skip
    if mode == "one bad value" and values:
        values[draw(st.integers(0, len(values) - 1))] = draw(CELL)
    rows = [[str(start + i), v] for i, v in enumerate(values)]
    if rows and draw(st.integers(0, 5)) == 0:  # one far-away hour: a gap of ~10^15 hours
        rows.append([str(draw(st.sampled_from([10**15, 2**62, 10**7]))), "1"])
    header = draw(st.sampled_from(["hour,gpu_hours"] * 4 + ["hour,other", "when,gpu_hours"]))
    return _csv(header, rows)


@st.composite
def jobs_files(draw) -> bytes:
    """Jobs traces: plausible rows, one unplaceable or bad row, or a broken file."""
    mode = draw(MODES)
    if mode == "broken":
        return draw(BROKEN_FILES)
    header = "job_id,submit_s,duration_s,gpus,cpus,memory_gib,status,job_class"
    count = draw(st.integers(0, 6))
    rows = [
        [f"j{i}", str(draw(st.integers(0, 7200))), draw(st.sampled_from(["600", "3600"])),
         draw(st.sampled_from(["1", "0", "2", "8"])), "4", "16", "Terminated", "BE"]
        for i in range(count)
    ]  # fmt: skip
    if mode == "one bad value" and rows:
        row = rows[draw(st.integers(0, count - 1))]
        column = draw(st.sampled_from([1, 2, 3, 3, 4, 5]))
        odd = st.sampled_from(["100000", "-1", "nan", "1.5", "1e308"])
        row[column] = draw(st.one_of(odd, CELL))
    return _csv(header, rows)


@st.composite
def catalog_files(draw) -> bytes:
    """Price catalogs: one sane row, bad prices, header-only, or broken."""
    if draw(st.integers(0, 3)) == 0:
        return draw(BROKEN_FILES)
    header = (
        "cloud,region,zone,instance_type,vcpus,memory_gib,accelerator,accelerator_count,"
        "ondemand_usd_per_hour,spot_usd_per_hour,reserved_1yr_usd_per_hour,interruption_band"
    )
    rows = [
        [draw(st.sampled_from(["aws", "gcp", ""])), "us-east-1", "", "g5.xlarge", draw(CELL),
         "16", "A10G", draw(st.sampled_from(["1", "x", "-2"])), draw(CELL), draw(CELL), "",
         draw(st.sampled_from(["", "<5%", "huge"]))]
        for _ in range(draw(st.integers(0, 3)))
    ]  # fmt: skip
    return _csv(header, rows)


def _file(content: bytes, suffix: str = ".csv") -> str:
    with tempfile.NamedTemporaryFile(dir=WORK, suffix=suffix, delete=False) as handle:
        handle.write(content)
    return handle.name


# ---------------------------------------------------------------- argv strategies


def _options(draw, table: dict[str, st.SearchStrategy]) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=3))
    argv: list[str] = []
    for flag in chosen:
        value = draw(table[flag])
        argv += [flag] if value is None else [flag, value]
    return argv


FORMATS = st.sampled_from(["table", "csv", "json", "markdown", "table", "xml"])
FLAG = st.none()


@st.composite
def prices_argv(draw) -> list[str]:
    return ["prices", *_options(draw, {
        "--gpu": WORDS, "--region": WORDS, "--cloud": WORDS,
        "--option": st.sampled_from(["spot", "reserved", "on-demand", "free"]),
        "--max-price": NUMBER_TEXT, "--min-gpus": NUMBER_TEXT, "--limit": NUMBER_TEXT,
        "--format": FORMATS, "--json": FLAG, "--catalog": catalog_files().map(_file),
    })]  # fmt: skip


@st.composite
def report_argv(draw) -> list[str]:
    ledgers = st.sampled_from([
        f"sqlite:///{WORK / 'ledger.db'}", "postgresql://u:p@h:notaport/db", "not a url",
        "sqlite:////proc/nope/ledger.db", "mysql://",
    ])  # fmt: skip
    plots = st.sampled_from([str(WORK / "r.png"), "/proc/xx/r.png", str(WORK / "r.jpg")])
    return ["report", *_options(draw, {
        "--group-by": st.sampled_from(["flow", "task", "region", "day", "planet"]),
        "--since": DURATIONS, "--until": DURATIONS, "--flow": WORDS, "--last-run": FLAG,
        "--format": FORMATS, "--json": FLAG, "--plot": plots,
    }), "--ledger", draw(ledgers)]  # fmt: skip


@st.composite
def simulate_argv(draw) -> list[str]:
    return ["simulate", "--jobs", _file(draw(jobs_files())), "--policies",
            draw(st.sampled_from(["on-demand", "greedy,fcfs", "on-demand,spot-only", "nope"])),
            *_options(draw, {
        "--seed": NUMBER_TEXT, "--headroom": NUMBER_TEXT, "--limit": NUMBER_TEXT,
        "--deadline-slack": st.one_of(NUMBER_TEXT, st.just("1.2,2,nan")),
        "--regions": st.sampled_from(["mars-1", "us-east-1", "us-east-1,mars-1", ","]),
        "--gpu-type": WORDS, "--format": FORMATS, "--json": FLAG,
        "--out": st.sampled_from([str(WORK / "sim"), "/proc/xx"]),
        "--spot-trace": st.one_of(BROKEN_FILES.map(_file),
                                  st.just("bench/data/aws_p3.2xlarge_avail_2023-02-15.csv")),
    })]  # fmt: skip


@st.composite
def plan_argv(draw) -> list[str]:
    gpu = draw(st.sampled_from(["A100", "A100", "H100", "a10g", "Z9"]))
    return ["plan", _file(draw(series_files())), "--forecast-model", "seasonal-naive",
            "--time-limit", "5", "--gpu-type", gpu, *_options(draw, {
        "--horizon": st.one_of(st.integers(1, 48).map(str), NUMBER_TEXT),
        "--service-level": st.one_of(st.sampled_from(["0.5", "0.9"]), WEIRD_NUMBER),
        "--spot-max-share": NUMBER_TEXT,
        "--budget": NUMBER_TEXT, "--gap": NUMBER_TEXT, "--format": FORMATS, "--json": FLAG,
        "--cloud": st.sampled_from(["aws", "gcp", "azure"]),
        "--region": st.sampled_from(["us-east-1", "us-central1", "mars-1"]),
        "--column": st.sampled_from(["gpu_hours", "hour", "nope"]),
        "--catalog": catalog_files().map(_file), "--plot": st.just(str(WORK / "p.png")),
    })]  # fmt: skip


@st.composite
def forecast_argv(draw) -> list[str]:
    return ["forecast", _file(draw(series_files())), *_options(draw, {
        "--horizon": st.one_of(st.integers(1, 48).map(str), NUMBER_TEXT),
        "--window": NUMBER_TEXT, "--weekly-fourier": NUMBER_TEXT,
        "--column": st.sampled_from(["gpu_hours", "hour", "nope"]),
        "--transform": st.sampled_from(["auto", "none", "log1p", "sqrt"]),
        "--format": FORMATS, "--json": FLAG,
        "--plot": st.sampled_from([str(WORK / "f.png"), "/proc/xx/f.png", "f.txt"]),
    })]  # fmt: skip


@st.composite
def reap_argv(draw) -> list[str]:
    clouds = draw(st.sampled_from([["--cloud", "aws"], ["--cloud", "gcp"], []]))
    return ["reap", "--dry-run", "--mock", f"aws={CLOSED}", "--mock", f"gcp={CLOSED}", *clouds,
            *_options(draw, {
        "--heartbeat-ttl": NUMBER_TEXT, "--region": WORDS, "--owner": WORDS,
        "--format": FORMATS, "--json": FLAG,
        "--ledger": st.sampled_from(["postgresql://u:p@h:notaport/db", "nope",
                                     f"sqlite:///{WORK / 'reap.db'}"]),
    })]  # fmt: skip


# ---------------------------------------------------------------- the property


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> None:
    code, out, err = _run(argv)
    shown = f"argv={argv}\nexit={code}\nstderr={err[-2000:]}"
    assert "Traceback" not in err + out, shown
    assert "Error: unexpected" not in err, shown
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    if code == 2:
        assert len(errors) == 1, shown
    else:
        assert code in (0, 1) and not errors, shown


_SETTINGS = {
    "deadline": None,
    "derandomize": True,  # the same examples every run: a failure is reproducible
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
}


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # bench/data paths resolve
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("NO_GCE_CHECK", "True")


@settings(max_examples=60, **_SETTINGS)
@given(prices_argv())
def test_prices_never_tracebacks(argv):
    check(argv)


@settings(max_examples=40, **_SETTINGS)
@given(report_argv())
def test_report_never_tracebacks(argv):
    check(argv)


@settings(max_examples=25, **_SETTINGS)
@example(["simulate", "--jobs", "bench/data/alibaba_gpu2023_jobs.csv", "--limit", "40",
          "--policies", "on-demand,greedy", "-f", "table"])  # fmt: skip
@given(simulate_argv())
def test_simulate_never_tracebacks(argv):
    check(argv)


@settings(max_examples=20, **_SETTINGS)
@example(["plan", "bench/data/alibaba_gpu2023_hourly.csv", "--gpu-type", "A100", "--horizon",
          "24", "--forecast-model", "seasonal-naive", "-f", "markdown"])  # fmt: skip
@given(plan_argv())
def test_plan_never_tracebacks(argv):
    check(argv)


@settings(max_examples=15, **_SETTINGS)
@example(["forecast", "bench/data/alibaba_gpu2023_hourly.csv", "--horizon", "6", "--window", "96",
          "-f", "csv"])  # fmt: skip
@given(forecast_argv())
def test_forecast_never_tracebacks(argv):
    check(argv)


@settings(max_examples=10, **_SETTINGS)
@given(reap_argv())
def test_reap_never_tracebacks(argv):
    check(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--since", "99999999999d"],
        ["report", "--ledger", "postgresql://u:p@h:notaport/db"],
        ["prices", "--max-price", "nan"],
        ["prices", "--min-gpus", "-5"],
        ["simulate", "--jobs", "bench/data/alibaba_gpu2023_jobs.csv", "--regions", "mars-1"],
        ["simulate", "--jobs", "x.csv", "--seed", "-99999999999999999999"],
        ["simulate", "--jobs", "bench/data/alibaba_gpu2023_jobs.csv", "--out", "/proc/xx"],
        ["reap", "--heartbeat-ttl", "nan"],
        ["forecast", "tests/data/huge_gap_series.csv"],
        ["plan", "tests/data/huge_gap_series.csv", "--gpu-type", "A100"],
        ["blocks", "apply", "--dir", "/proc/nope"],
        ["nonsense-command"],
    ],
)
def test_reported_inputs_are_one_error_line(argv):
    code, _, err = _run(argv)
    assert code == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("Error:")]) == 1, err


def test_reap_without_credentials_says_how_to_set_them(monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(WORK / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(WORK / "none"))
    monkeypatch.setattr("boto3.DEFAULT_SESSION", None)  # no credentials cached by other tests
    code, _, err = _run(["reap", "--dry-run", "--region", "us-east-1"])
    assert code == 2
    assert "Error: cannot list aws instances (Unable to locate credentials)" in err
    assert "AWS_PROFILE" in err


def test_unexpected_errors_are_one_redacted_line(monkeypatch):
    import prefect_cloudsched.cli.prices_cmd as prices_cmd

    def boom(*_args, **_kwargs):
        raise RuntimeError("cannot reach postgresql://admin:hunter2@db:5432/x\nsecond line")

    monkeypatch.setattr(prices_cmd, "render_rows", boom)
    code, _, err = _run(["prices", "--limit", "1", "-f", "csv"])
    assert code == 1
    assert err.count("\n") == 1 and "Error: unexpected RuntimeError" in err
    assert "hunter2" not in err and "admin:***@db" in err
