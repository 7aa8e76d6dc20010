"""Ledger URLs as users give them: one line naming where the URL came from, no secret shown.

A URL reaches the ledger from ``--ledger`` (``--ledger-url`` on ``reap``), from
``PREFECT_CLOUDSCHED_LEDGER_URL`` or from a ``CloudSchedLedger`` block; each bad one is refused
with exit 2 naming that source, and nothing is created or altered on the way.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from prefect_cloudsched.adapters.ledger import Ledger, redact_url
from prefect_cloudsched.cli import main
from prefect_cloudsched.cli._common import hide_password
from prefect_cloudsched.errors import LedgerError

ENV = "PREFECT_CLOUDSCHED_LEDGER_URL"
BAD_PORT = "postgresql://a:pw-planted@h:notaport/db"
AT_PASSWORD = "postgresql://admin:S3cret@Passw0rd@127.0.0.1:1/db"
#: reap with a stand-in AWS that refuses connections: nothing can reach a real cloud.
REAP = ["reap", "--mock", "aws=http://127.0.0.1:1"]


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI on ``argv``: it must exit 2 with one ``Error:`` line, returned here."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1, err
    assert "unexpected" not in err and "a bug" not in err
    return err


# ------------------------------------------------------------------ where the URL comes from
@pytest.mark.parametrize("command", [["report"], [*REAP, "--dry-run"], REAP])
def test_bad_port_from_the_env_var_is_exit_2_naming_it(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, BAD_PORT)
    err = refusal(command, capsys)
    assert ENV in err and "port must be a number" in err and "pw-planted" not in err


@pytest.mark.parametrize("command", [["report"], [*REAP, "--dry-run"]])
def test_unparseable_env_var_is_named(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, "notaurl")
    err = refusal(command, capsys)
    assert ENV in err and "not a database URL" in err


@pytest.mark.parametrize("flag", ["--ledger", "--ledger-url"])
def test_bad_port_from_the_reap_option_names_the_option(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = refusal([*REAP, "--dry-run", flag, BAD_PORT], capsys)
    assert "--ledger" in err and "port must be a number" in err and "pw-planted" not in err


def test_ledger_names_its_source(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LedgerError, match=r"^--ledger 'postgresql://a:\*\*\*@h:notaport/db'"):
        Ledger(BAD_PORT, source="--ledger")
    monkeypatch.setenv(ENV, BAD_PORT)
    with pytest.raises(LedgerError, match=rf"^{ENV} .*port must be a number"):
        Ledger()
    with pytest.raises(LedgerError, match=r"^the ledger URL .*port must be a number"):
        Ledger(BAD_PORT)  # a URL given in code: no option or variable to name


# ------------------------------------------------------------------ passwords never shown
@pytest.mark.parametrize(
    ("text", "shown", "hidden"),
    [
        ("postgresql://bob@db/ledger", "postgresql://bob@db/ledger", None),
        (AT_PASSWORD, "postgresql://admin:***@127.0.0.1:1/db", "Passw0rd"),
        ("postgresql://u:a@b@c@host/db", "postgresql://u:***@host/db", "b@c"),
        ("postgresql://u:S3cret%40Pass@h/db", "postgresql://u:***@h/db", "Pass"),
        ("postgresql://u:p/a:ss@h/db", "postgresql://u:***@h/db", "ss"),
        ("postgresql://u:pa?ss@h/db", "postgresql://u:***@h/db", "ss"),
        ("postgresql://:only@h/db", "postgresql://:***@h/db", "only"),
        (
            "postgresql://u@h/db?sslmode=require&password=S3cret&user=x",
            "postgresql://u@h/db?sslmode=require&password=***&user=x",
            "S3cret",
        ),
        ("postgresql://u@h/db?sslpassword=a@b", "postgresql://u@h/db?sslpassword=***", "a@b"),
        ("sqlite:////tmp/a@b/ledger.db", "sqlite:////tmp/a@b/ledger.db", None),
        ("cannot open 'postgresql://u:x@y@h/db': refused", "'postgresql://u:***@h/db'", "x@y"),
        ("""--ledger "postgresql://u:it's@h/db": no""", '"postgresql://u:***@h/db"', "it's"),
    ],
)
def test_hide_password_hides_everything_up_to_the_last_at(
    text: str, shown: str, hidden: str | None
) -> None:
    assert shown in hide_password(text)
    if hidden is not None:
        assert hidden not in hide_password(text)
    if "://" in text and text.startswith(("postgresql", "sqlite")):
        assert redact_url(text) == hide_password(text)


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--ledger", AT_PASSWORD],
        [*REAP, "--dry-run", "--ledger-url", AT_PASSWORD],
        [*REAP, "--dry-run", "--ledger", AT_PASSWORD],
        ["report"],
    ],
)
def test_a_password_with_an_at_sign_never_shows(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, AT_PASSWORD)
    err = refusal(argv, capsys)
    assert "S3cret" not in err and "Passw0rd" not in err and "admin:***@127.0.0.1" in err


# ------------------------------------------------------------------ nothing created or altered
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reap_dry_run_creates_no_ledger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    new = tmp_path / "new.db"
    err = refusal([*REAP, "--dry-run", "--ledger", f"sqlite:///{new}"], capsys)
    assert "does not exist" in err and "--ledger" in err
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [[*REAP, "--dry-run"], ["report"]])
def test_an_unrelated_sqlite_file_is_refused_unchanged(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    before = digest(other)
    err = refusal([*argv, "--ledger", f"sqlite:///{other}"], capsys)
    assert "holds no prefect-cloudsched ledger" in err
    assert digest(other) == before  # no ledger tables, not even the WAL switch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


# ------------------------------------------------------------------ what the path names
def test_a_directory_is_called_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = refusal(["report", "--ledger", f"sqlite:///{tmp_path}"], capsys)
    assert "directory" in err and "does not exist" not in err and "--ledger" in err


@pytest.mark.parametrize("argv", [["report"], [*REAP, "--dry-run"], REAP])
def test_a_file_that_is_not_sqlite_says_so(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("just some notes\n" * 20)
    before = digest(junk)
    err = refusal([*argv, "--ledger", f"sqlite:///{junk}"], capsys)
    assert "not a SQLite database" in err and "--ledger" in err
    assert digest(junk) == before


def test_reap_dry_run_on_a_machine_without_a_ledger_reads_heartbeats_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """No ledger named and none here yet: the dry run goes on without one, creating none."""
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("PREFECT_CLOUDSCHED_HOME", str(tmp_path))
    main([*REAP, "--dry-run"])  # the mock endpoint refuses: listing fails after the ledger step
    captured = capsys.readouterr()
    assert "judges by heartbeats alone" in captured.out + captured.err
    assert "no ledger at sqlite" not in captured.err
    assert sorted(tmp_path.iterdir()) == []
