"""Build a provisioner from its settings (what the pool blocks and ``MockClouds`` call)."""

from __future__ import annotations

from prefect_cloudsched.adapters.provision.base import Provisioner
from prefect_cloudsched.adapters.provision.settings import AwsSettings, GcpSettings


def build_provisioner(settings: AwsSettings | GcpSettings) -> Provisioner:
    """The provisioner for ``settings``: ``AwsProvisioner`` or ``GcpProvisioner``.

    Raises:
        ProvisioningError: a setting is invalid (e.g. an unknown AWS region).
        TypeError: ``settings`` is neither ``AwsSettings`` nor ``GcpSettings``.
    """
    if isinstance(settings, AwsSettings):
        from prefect_cloudsched.adapters.provision.aws import AwsProvisioner

        return AwsProvisioner(settings)
    if isinstance(settings, GcpSettings):
        from prefect_cloudsched.adapters.provision.gcp import GcpProvisioner

        return GcpProvisioner(settings)
    raise TypeError(f"expected AwsSettings or GcpSettings, got {type(settings).__name__}")
