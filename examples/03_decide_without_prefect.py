"""Ask the placement policy directly (pure Python, no Prefect): what would this task cost?

Run: ``source scripts/_env.sh && python examples/03_decide_without_prefect.py``
"""

from __future__ import annotations

from datetime import timedelta

from prefect_cloudsched import TaskNeeds, decide, load_catalog

needs = TaskNeeds(
    gpus=8,
    gpu_type="H100",
    est_runtime=timedelta(hours=10),
    deadline=timedelta(hours=30),
    spot_ok=True,
    checkpointable=True,
)
decision = decide(needs, load_catalog())
print(decision.explanation())
print(f"expected ${decision.expected_cost:,.2f} vs ${decision.baseline_cost:,.2f} on-demand")
