"""Per-run TLS for the Dask scheduler, the flow's client and the instances' workers.

Remote workers dial the scheduler across a network, and task bodies (and their inputs)
travel that link as pickles: in plaintext anyone on the path could read them, and anyone who
reaches the port could join as a worker and receive them. So by default each flow run makes a
fresh certificate authority (``cryptography``), signs one certificate for the scheduler and
the client and one for the workers, and the scheduler requires encryption and a certificate
signed by that CA (Dask verifies the CA, not host names). The CA's key never leaves this
process; the worker certificate and key travel in the instance's boot script, so they are
valid only for this run's CA and expire after ``days``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The Dask TLS options every role shares (TLS 1.2+ is distributed's default minimum).
_REQUIRE = {"require_encryption": True}


@dataclass(frozen=True)
class TlsMaterial:
    """PEM text of one run's CA and the certificates signed by it.

    Attributes:
        ca_pem: The CA certificate every side trusts.
        cert_pem / key_pem: Scheduler and client certificate and key (stay in this process).
        worker_cert_pem / worker_key_pem: Worker certificate and key (go to the instances).
    """

    ca_pem: str
    cert_pem: str = field(repr=False)
    key_pem: str = field(repr=False)
    worker_cert_pem: str = field(repr=False)
    worker_key_pem: str = field(repr=False)

    @classmethod
    def generate(cls, *, days: float = 7.0) -> TlsMaterial:
        """A fresh CA with a scheduler/client certificate and a worker certificate."""
        ca_key, ca_cert = _ca(days)
        cert, key = _leaf("cloudsched-scheduler", ca_key, ca_cert, days)
        worker_cert, worker_key = _leaf("cloudsched-worker", ca_key, ca_cert, days)
        return cls(_pem_cert(ca_cert), cert, key, worker_cert, worker_key)

    @classmethod
    def from_files(cls, ca_file: str, cert_file: str, key_file: str) -> TlsMaterial:
        """Certificates of an existing TLS scheduler (one pair for the client and workers).

        Raises:
            FileNotFoundError: a file is missing (the caller names the setting).
        """
        ca, cert, key = (Path(p).expanduser().read_text() for p in (ca_file, cert_file, key_file))
        return cls(ca, cert, key, cert, key)

    def security(self) -> Any:
        """``distributed.Security`` for this process: scheduler, client and local workers.

        Encryption is required; workers a ``LocalCluster`` starts here get the worker pair.
        """
        return self._security(
            tls_client_cert=self.cert_pem,
            tls_client_key=self.key_pem,
            tls_scheduler_cert=self.cert_pem,
            tls_scheduler_key=self.key_pem,
        )

    def worker_security(self) -> Any:
        """``distributed.Security`` of a worker (what the boot script's files amount to)."""
        return self._security()

    def _security(self, **pairs: str) -> Any:
        """What every role holds (the CA and the worker pair), plus ``pairs`` of its own."""
        from distributed.security import Security

        return Security(
            tls_ca_file=self.ca_pem,
            tls_worker_cert=self.worker_cert_pem,
            tls_worker_key=self.worker_key_pem,
            **pairs,
            **_REQUIRE,
        )

    def write_worker_files(self, directory: Path) -> dict[str, Path]:
        """Write the worker's CA, certificate and key (mode 600); return their paths."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        paths = {}
        for name, text in (
            ("ca.pem", self.ca_pem),
            ("worker.pem", self.worker_cert_pem),
            ("worker-key.pem", self.worker_key_pem),
        ):
            path = directory / name
            path.touch(mode=0o600)
            path.write_text(text)
            paths[name] = path
        return paths


def worker_tls_args(ca: str, cert: str, key: str) -> list[str]:
    """``dask worker`` options that make it dial with TLS using these files."""
    return ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]


def _ca(days: float) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prefect-cloudsched run CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(common_name: str, ca_key: Any, ca_cert: Any, days: float) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return _pem_cert(cert), key_pem


def _pem_cert(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()
