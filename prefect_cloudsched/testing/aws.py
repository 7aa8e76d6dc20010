"""moto helpers: a local EC2 endpoint plus the faults and prices moto cannot produce itself.

moto 5 runs EC2 in memory but never interrupts a spot instance, never runs out of capacity,
never throttles, ignores ``ClientToken`` and reports every spot price as ``0.00001``. These
helpers add exactly that, in-process, for both ``mock_aws()`` and a ``ThreadedMotoServer``
(which share moto's backends). They patch moto's EC2 *response* layer, so every boto3 call,
from any thread, sees them; nothing here reaches a real AWS account.

Example:
    ```python
    with moto_server() as url, MotoControl() as moto:
        moto.spot_prices[("g5.xlarge", "us-east-1a")] = 0.41
        moto.inject("InsufficientInstanceCapacity", instance_type="g5.xlarge")
        ...  # boto3.client("ec2", endpoint_url=url, ...) now sees both
        moto.interrupt("i-0123...")  # terminated with Server.SpotInstanceTermination
    ```

See ``docs/provisioning.md`` ("The mock clouds") for every hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

#: Any id works while moto's AMI validation is off (its default).
MOCK_AMI = "ami-03cf127a"
DUMMY_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@contextmanager
def moto_server() -> Iterator[str]:
    """A ``ThreadedMotoServer`` on a free loopback port; yields its URL, stops it after.

    Other processes reach it with ``AWS_ENDPOINT_URL=<url>`` and dummy keys.
    """
    from prefect_cloudsched._extras import require

    require("moto.server", "the AWS stand-in (moto)")
    from moto.server import ThreadedMotoServer

    # werkzeug logs one line per request, and a traceback for each call moto has not
    # implemented (e.g. describe_reserved_instances); the client gets that error as a 500
    # and reports it itself, so the server's copy is noise in the demo's output
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.CRITICAL)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        access_log.setLevel(level)


@dataclass
class _Fault:
    action: str
    code: str
    message: str
    remaining: int
    instance_type: str | None
    region: str | None
    after: bool

    def matches(self, action: str, region: str, instance_type: str | None) -> bool:
        return (
            self.remaining > 0
            and self.action == action
            and (self.region is None or self.region == region)
            and (self.instance_type is None or self.instance_type == instance_type)
        )


class MotoControl:
    """Faults, spot prices, interruptions and ``ClientToken`` idempotency for moto EC2.

    Use as a context manager (or ``install()``/``uninstall()``) around ``mock_aws()`` or a
    :func:`moto_server`. Thread-safe.

    Attributes:
        spot_prices: ``{(instance_type, availability_zone): usd_per_hour}`` returned by
            ``DescribeSpotPriceHistory`` instead of moto's ``0.00001`` rows.
        launched: ``{instance_id: region}`` of every instance started while installed.
        token_hits: How many ``RunInstances`` calls were answered from an earlier
            ``ClientToken`` (a retried launch that did not start a second instance).
        faults_fired: How many injected faults were raised so far.
    """

    ACTIONS = (
        "run_instances",
        "terminate_instances",
        "describe_instances",
        "create_tags",
        "describe_reserved_instances",
    )

    def __init__(self, account_id: str | None = None) -> None:
        from moto.core import DEFAULT_ACCOUNT_ID

        self.account_id = account_id or DEFAULT_ACCOUNT_ID
        self.spot_prices: dict[tuple[str, str], float] = {}
        self.launched: dict[str, str] = {}
        self.token_hits = 0
        self.faults_fired = 0
        self._faults: list[_Fault] = []
        self._tokens: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._stack: ExitStack | None = None

    # ------------------------------------------------------------------ install
    def __enter__(self) -> MotoControl:
        self.install()
        return self

    def __exit__(self, *_: Any) -> None:
        self.uninstall()

    def install(self) -> None:
        """Patch moto's EC2 responses (idempotent per instance)."""
        from unittest import mock

        from moto.ec2.responses import EC2Response

        if self._stack is not None:
            return
        stack = ExitStack()
        for action in self.ACTIONS:
            original = getattr(EC2Response, action)
            stack.enter_context(
                mock.patch.object(EC2Response, action, self._wrap(action, original))
            )
        stack.enter_context(
            mock.patch.object(
                EC2Response, "describe_spot_price_history", self._spot_price_history()
            )
        )
        self._stack = stack

    def uninstall(self) -> None:
        """Undo :meth:`install`."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # ------------------------------------------------------------------ faults
    def inject(
        self,
        code: str,
        *,
        action: str = "run_instances",
        count: int = 1,
        instance_type: str | None = None,
        region: str | None = None,
        message: str | None = None,
        after: bool = False,
    ) -> None:
        """Make the next ``count`` matching calls fail with an EC2 error ``code``.

        Args:
            code: e.g. ``InsufficientInstanceCapacity``, ``VcpuLimitExceeded``,
                ``SpotMaxPriceTooLow``, ``MaxSpotInstanceCountExceeded``,
                ``RequestLimitExceeded``, ``AuthFailure``, ``InvalidAMIID.NotFound``.
            action: One of :attr:`ACTIONS`.
            instance_type: Only launches of this type (``run_instances``).
            region: Only calls to this region.
            after: Perform the call, then fail (a lost response: the instance exists but
                the caller saw an error; ``ClientToken`` is what prevents a duplicate).
        """
        if action not in self.ACTIONS:
            raise ValueError(f"action must be one of {self.ACTIONS}, got {action!r}")
        text = message or f"{code} (injected by MotoControl)"
        with self._lock:
            self._faults.append(_Fault(action, code, text, count, instance_type, region, after))

    def clear_faults(self) -> None:
        """Drop every pending injected fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, action: str, region: str, instance_type: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(action, region, instance_type):
                    fault.remaining -= 1
                    self.faults_fired += 1
                    return fault
        return None

    def _wrap(self, action: str, original: Any) -> Any:
        control = self

        def handler(response: Any) -> Any:
            from moto.ec2.exceptions import EC2ClientError

            region = response.region
            instance_type = (
                response._get_param("InstanceType") if action == "run_instances" else None
            )
            fault = control._take_fault(action, region, instance_type)
            if fault is not None and not fault.after:
                raise EC2ClientError(fault.code, fault.message)
            result = (
                control._run_instances(response, original)
                if action == "run_instances"
                else original(response)
            )
            if fault is not None:
                raise EC2ClientError(fault.code, fault.message)
            return result

        return handler

    def _run_instances(self, response: Any, original: Any) -> Any:
        """``RunInstances`` with EC2's ``ClientToken`` idempotency (moto ignores it)."""
        from moto.core.responses import ActionResult

        token = response._get_param("ClientToken")
        key = (response.region, token)
        with self._lock:
            earlier = self._tokens.get(key) if token else None
            if earlier is not None:
                self.token_hits += 1
                return ActionResult(earlier)
        result = original(response)
        reservation = _reservation_of(result)
        with self._lock:
            if token and reservation is not None:
                self._tokens[key] = reservation
            for instance in getattr(reservation, "instances", []):
                self.launched[instance.id] = response.region
        return result

    def _spot_price_history(self) -> Any:
        from moto.ec2.responses import EC2Response

        control, original = self, EC2Response.describe_spot_price_history

        def handler(response: Any) -> Any:
            from moto.core.responses import ActionResult

            if not control.spot_prices:
                return original(response)
            types = response._get_param("InstanceTypes", [])
            zones = response._filters_from_querystring().get("availability-zone")
            rows = [
                {
                    "InstanceType": itype,
                    "AvailabilityZone": zone,
                    "ProductDescription": "Linux/UNIX",
                    "SpotPrice": f"{price:.6f}",
                    "Timestamp": "2026-01-01T00:00:00.000Z",
                }
                for (itype, zone), price in sorted(control.spot_prices.items())
                if zone.startswith(response.region)
                and (not types or itype in types)
                and (not zones or zone in zones)
            ]
            return ActionResult({"SpotPriceHistory": rows})

        return handler

    # ------------------------------------------------------------------ instances
    def backend(self, region: str) -> Any:
        """moto's in-memory EC2 backend of ``region``."""
        from moto.backends import get_backend

        return get_backend("ec2")[self.account_id][region]

    def interrupt(self, instance_id: str, region: str | None = None, *, stop: bool = False) -> None:
        """Reclaim a spot instance as EC2 does: ``terminated`` (or ``stopped``) with
        ``StateReason.Code = Server.SpotInstanceTermination``."""
        from moto.ec2.models.instances import StateReason

        region = region or self.launched.get(instance_id)
        if region is None:
            raise KeyError(f"{instance_id} was not launched while MotoControl was installed")
        instance = self.backend(region).get_instance(instance_id)
        if stop:
            instance.stop()
        else:
            instance.terminate()
        instance.state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination",
            "Server.SpotInstanceTermination",
        )
        instance._reason = "Service initiated (spot interruption)"

    def is_spot(self, instance_id: str) -> bool:
        """Whether a launched instance is a spot instance."""
        region = self.launched[instance_id]
        return self.backend(region).get_instance(instance_id).lifecycle == "spot"


def _reservation_of(result: Any) -> Any:
    """The ``Reservation`` model inside moto's ``ActionResult``."""
    for name in ("result", "_result", "data"):
        value = getattr(result, name, None)
        if value is not None and hasattr(value, "instances"):
            return value
    return None
