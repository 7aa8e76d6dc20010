"""The blocks and cost artifacts as a user sees them in the Prefect UI (headless Chromium).

Run separately: ``.venv/bin/pytest -m browser tests/browser``. Screenshots go to a temporary
folder; ``CLOUDSCHED_SCREENSHOT_DIR=docs/img`` refreshes the docs' own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

UI_FLOW = Path(__file__).with_name("ui_flow.py")


def _field(page: Any, title: str) -> Any:
    """The schema-form property whose header is ``title`` (optional or not)."""
    header = page.locator(
        "h3, label", has_text=re.compile(rf"^{re.escape(title)}( \(Optional\))?$")
    )
    return page.locator(".schema-form-property", has=header).last


def _choose(page: Any, title: str, option: str) -> None:
    """Pick ``option`` in the select of a property (the list opens from the keyboard)."""
    _field(page, title).locator("button.p-select-button__control").focus()
    page.keyboard.press("ArrowDown")
    page.locator(".p-select-option", has_text=re.compile(rf"^{re.escape(option)}$")).click()


def test_policy_block_created_in_the_ui_form_loads_in_python(
    prefect_server: str, page: Any, screenshots: Path
) -> None:
    from prefect.blocks.core import Block

    from prefect_cloudsched.prefect import blocks
    from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

    ours = [getattr(blocks, name) for name in blocks.__all__]
    block_types = sum(isinstance(c, type) and issubclass(c, Block) for c in ours)

    page.goto(f"{prefect_server}/blocks/catalog", wait_until="networkidle")
    page.get_by_placeholder("Search blocks").fill("cloudsched")
    # ours (policy, ledger, two pools, executor), registered through the entry point
    page.get_by_text(f"{block_types} Blocks").wait_for()
    catalog = page.inner_text("body")
    for name in (
        "CloudSched Policy",
        "CloudSched AWS Compute Pool",
        "CloudSched GCP Compute Pool",
        "CloudSched Ledger",
    ):
        assert name in catalog
    page.screenshot(path=str(screenshots / "ui-block-catalog.png"))

    page.goto(f"{prefect_server}/blocks/catalog/cloudsched-policy/create", wait_until="networkidle")
    page.locator(".p-text-input__control").first.fill("ui-policy")
    _field(page, "Budget Per Run Usd").locator("input").fill("12.5")
    _field(page, "Budget Per Day Usd").locator("input").fill("40")
    _choose(page, "Budget Enforcement", "soft")
    _field(page, "Allowed Regions").locator("textarea").fill('["us-east-1", "us-central1"]')
    spot_share = _field(page, "Spot Max Share").locator("input")
    spot_share.fill("1.5")  # out of range: the form must refuse it, naming the field
    page.get_by_role("button", name="Create").click()
    error = page.get_by_text("Spot Max Share must be less than or equal to 1")
    error.wait_for()
    spot_share.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshots / "ui-policy-form-validation.png"))
    assert "/create" in page.url  # nothing was saved

    spot_share.fill("0.4")
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(re.compile(r"/blocks/block/[0-9a-f-]{36}$"))
    page.get_by_text('CloudSchedPolicy.load("ui-policy")').wait_for()
    page.screenshot(path=str(screenshots / "ui-policy-created.png"))

    policy = CloudSchedPolicy.load_named("ui-policy")
    assert policy.budget_per_run_usd == 12.5 and policy.budget_per_day_usd == 40
    assert policy.budget_enforcement == "soft" and policy.spot_max_share == 0.4
    assert policy.allowed_regions == ["us-east-1", "us-central1"]
    assert policy.to_budget().hard is False


def test_flow_run_page_shows_the_cost_artifacts(
    prefect_server: str, page: Any, screenshots: Path, tmp_path: Path
) -> None:
    from prefect_cloudsched.prefect.blocks import CloudSchedPolicy

    # _sync: Playwright's sync API keeps an event loop running in this thread, where save()
    # would otherwise return an un-awaited coroutine
    policy = CloudSchedPolicy(budget_per_run_usd=50, spot_max_share=0.67)
    policy.save("ui-run", overwrite=True, _sync=True)
    env = {
        **os.environ,
        "PREFECT_API_URL": f"{prefect_server}/api",
        "PREFECT_CLOUDSCHED_HOME": str(tmp_path),
        "PREFECT_CLOUDSCHED_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
    }
    done = subprocess.run(
        [sys.executable, str(UI_FLOW), "ui-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = re.search(r"FLOW_RUN_ID=([0-9a-f-]{36})", done.stdout).group(1)

    page.goto(f"{prefect_server}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_text("Artifacts", exact=True).first.click()
    table_card = page.get_by_text("cloudsched-cost-ui-cost-demo", exact=True)
    table_card.wait_for()
    page.get_by_text("cloudsched-cost-summary-ui-cost-demo", exact=True).wait_for()
    page.screenshot(path=str(screenshots / "ui-flow-run-artifacts.png"))

    page.set_viewport_size({"width": 1900, "height": 1000})  # the table is wide
    table_card.click()
    page.get_by_text("instance_type").first.wait_for()
    body = page.inner_text("body")
    assert body.count("train") == 3 and body.count("prepare") == 3
    assert "spot" in body and "on-demand" in body  # train may use spot, prepare may not
    page.screenshot(path=str(screenshots / "ui-cost-table.png"), full_page=True)

    page.goto(f"{prefect_server}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text("cloudsched-cost-summary-ui-cost-demo", exact=True).click()
    page.get_by_text("Cost of").first.wait_for()
    assert "saved" in page.inner_text("body")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # let the page's fade-in finish before the docs screenshot
    page.screenshot(path=str(screenshots / "ui-cost-summary.png"))


def test_executor_block_created_in_the_ui_form_loads_in_python(
    prefect_server: str, page: Any, screenshots: Path
) -> None:
    """Remote execution is configured from the UI (issue 13): the executor block's form."""
    from prefect_cloudsched.adapters.execute.dask import DaskExecutor
    from prefect_cloudsched.prefect.blocks import CloudSchedExecutor

    page.goto(
        f"{prefect_server}/blocks/catalog/cloudsched-executor/create", wait_until="networkidle"
    )
    page.locator(".p-text-input__control").first.fill("ui-remote")
    _field(page, "Scheduler Host").locator("textarea").fill("10.0.1.5")
    _field(page, "Python").locator("textarea").fill("python3.11")
    port = _field(page, "Scheduler Port").locator("input")
    port.fill("70000")  # out of range: refused, naming the field
    page.get_by_role("button", name="Create").click()
    page.get_by_text("Scheduler Port must be less than or equal to 65535").wait_for()
    assert "/create" in page.url
    port.fill("8786")
    page.locator(".p-text-input__control").first.scroll_into_view_if_needed()  # the form's top
    page.screenshot(path=str(screenshots / "ui-executor-form.png"))
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(re.compile(r"/blocks/block/[0-9a-f-]{36}$"))

    block = CloudSchedExecutor.load_named("ui-remote")
    assert block.scheduler_host == "10.0.1.5" and block.python == "python3.11"
    executor = block.build_executor()
    assert isinstance(executor, DaskExecutor) and executor._config["tls"] is True
