"""One grammar: --format/--json everywhere, --version, --quiet, examples, tables never cut."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from rich.table import Table

from prefect_cloudsched.cli import main
from prefect_cloudsched.cli._common import print_table

COMMANDS = [
    ["prices"], ["prices", "refresh"], ["report"], ["forecast"], ["plan"], ["plan", "apply"],
    ["simulate"], ["reap"], ["blocks"], ["blocks", "apply"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_has_examples(command, capsys):
    assert main([*command, "--help"]) == 0
    assert "Examples" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("prefect-cloudsched")


def test_json_is_an_alias_of_format_json(capsys):
    assert main(["prices", "--gpu", "H100", "--limit", "3", "--json"]) == 0
    alias = json.loads(capsys.readouterr().out)
    assert main(["prices", "--gpu", "H100", "--limit", "3", "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == alias and len(alias) == 3


def test_markdown_and_csv_carry_full_values(capsys):
    assert main(["prices", "--gpu", "A10G", "--limit", "2", "-f", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| cloud | region |") and len(lines) == 4
    assert main(["prices", "--gpu", "A10G", "--limit", "2", "-f", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split(",")[9] == "0.29876"  # all digits, as in the catalog (table: 4)


def test_piped_table_cuts_nothing(capsys):
    assert main(["prices", "--gpu", "A10G", "--region", "us-west-2", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    for value in ("interruptions", "on-demand $/h", "g5.4xlarge", "0.4872", "1.6240", "15-20%"):
        assert value in out


def test_narrow_terminal_never_breaks_a_word():
    table = Table(title="narrow")
    for name in ("capacity key", "count", "$/h each"):
        table.add_column(name)
    table.add_row("gcp/us-central1-a/n1-highmem-16+2xP4", "12", "13.921100")
    buffer = io.StringIO()
    print_table(table, Console(file=buffer, width=30, force_terminal=True, color_system=None))
    text = buffer.getvalue()
    assert "gcp/us-central1-a/n1-highmem-16+2xP4" in text and "13.921100" in text
    assert "…" not in text


def test_quiet_after_the_command_silences_progress(tmp_path, capsys):
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("job_id,submit_s,duration_s,gpus,cpus,memory_gib,status,job_class\n"
                    "a,0,3600,1,4,16,Terminated,BE\n")  # fmt: skip
    assert main(["simulate", "--jobs", str(jobs), "--policies", "on-demand", "-f", "json"]) == 0
    assert "replaying" in capsys.readouterr().err
    args = ["simulate", "--jobs", str(jobs), "--policies", "on-demand", "-f", "json", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)[0]["policy"] == "on-demand"
