"""Helpers shared by the benchmark scripts: isolated homes and result files."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: The traces and series the benchmarks replay (provenance in ``data/SOURCE.md``).
DATA = Path(__file__).resolve().parent / "data"


def isolate() -> Path:
    """Point Prefect and the ledger at a throw-away home (call before importing prefect)."""
    home = Path(tempfile.mkdtemp(prefix="cloudsched-bench-"))
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_CLOUDSCHED_HOME"] = str(home / "cloudsched")
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("PREFECT_CLOUDSCHED_LEDGER_URL", None)
    return home


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write(name: str, data: dict[str, Any], markdown: str) -> None:
    """Write ``results/<name>.json`` and ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**data, "machine": machine()}, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
