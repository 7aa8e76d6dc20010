"""Bounded exponential backoff for cloud API calls that the cloud throttled.

botocore and google-api-core both retry, but each with its own budget, and neither lets one
deadline cover a whole ``ensure()`` (call, throttle, call again, poll). Both provisioners turn
their SDK's own retries off for throttling and use this instead, so "bounded in time" is one
number the user sets.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to keep retrying a throttled call.

    Attributes:
        attempts: Calls in total (the first one included).
        base_seconds: Sleep before the second call; doubles each time (full jitter).
        max_seconds: Cap on one sleep.
        deadline_seconds: Give up once this much time has passed since the first call.
    """

    attempts: int = 6
    base_seconds: float = 0.5
    max_seconds: float = 8.0
    deadline_seconds: float = 60.0

    def call(self, fn: Callable[[], T], retryable: Callable[[BaseException], bool]) -> T:
        """Call ``fn``; on a ``retryable`` error sleep and call again, within the budget.

        Raises:
            The last error when it is not retryable or the budget is spent.
        """
        start = time.monotonic()
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as err:
                if not retryable(err) or attempt >= self.attempts:
                    raise
                delay = random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))
                if time.monotonic() - start + delay > self.deadline_seconds:
                    raise
                time.sleep(delay)
                attempt += 1
