"""Placement policies: the pure decision code shared by the task runner and the simulator.

The modules are private by convention; this list is the public surface.
"""

from prefect_cloudsched.core.policy.placement import (
    DEFAULT_POLICY,
    Decision,
    PlacementState,
    PolicyConfig,
    cost_of,
    decide,
    spot_expected_cost,
    spot_slack_needed,
)

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "PlacementState",
    "PolicyConfig",
    "cost_of",
    "decide",
    "spot_expected_cost",
    "spot_slack_needed",
]
