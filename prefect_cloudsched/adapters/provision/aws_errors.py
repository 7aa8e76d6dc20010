"""EC2 error codes and what each means for the runner: try another offer, or fix a setting."""

from __future__ import annotations

from prefect_cloudsched.core.catalog import Offer
from prefect_cloudsched.errors import CapacityError, ProvisioningError

#: The cloud said "not now" for this offer: the runner falls back to the next one.
CAPACITY_CODES = frozenset(
    [
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "RequestLimitExceeded",
        "Unsupported",
        "UnsupportedOperation",
    ]
)
#: Retried with backoff first; a capacity refusal once the budget is spent.
THROTTLE_CODES = frozenset(
    [
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
    ]
)
AUTH_CODES = frozenset(
    [
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "Blocked",
        "ExpiredToken",
        "AccessDenied",
    ]
)


def error_code(err: BaseException) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(err: BaseException) -> str:
    """The ``Error.Message`` of a botocore ``ClientError``, else ``str(err)``."""
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Message", "")) or str(err)


def is_throttle(err: BaseException) -> bool:
    """Whether EC2 asked us to slow down (retried with backoff)."""
    return error_code(err) in THROTTLE_CODES


def launch_error(offer: Offer, err: Exception, image: str) -> Exception:
    """The error ``ensure`` raises for a refused ``RunInstances``: capacity or a setting."""
    code, message = error_code(err), error_message(err)
    if code in CAPACITY_CODES:
        return CapacityError(offer.key, code, message)
    region = offer.region
    if code.startswith("InvalidAMIID"):
        return ProvisioningError(
            f"AwsSettings.ami_per_region[{region!r}]: AMI {image} is not usable in {region} "
            f"({code}); give an AMI id of that region"
        )
    if code.startswith("InvalidSubnetID") or code == "InvalidSubnet":
        return ProvisioningError(
            f"AwsSettings.subnet_id: the subnet is not usable in {region} ({code}); give a "
            "subnet of that region"
        )
    if code.startswith("InvalidGroup") or code == "InvalidSecurityGroupID.NotFound":
        return ProvisioningError(
            f"AwsSettings.security_group_ids: {message} ({code}); give groups of the subnet's VPC"
        )
    return ProvisioningError(f"EC2 refused to start {offer.key}: {code}: {message}")
