"""A self-signed server certificate for the broker's TLS listener when the operator has not provided one.

Made with the ``openssl`` command line (present in the vitalab image through Debian's ca-certificates):
an EC P-256 key and a certificate whose subjectAltName lists the broker's host names and addresses.
Clients trust it by using ``server.crt`` as their CA file (``VITALAB_MQTT_CA_FILE``); replace both files
with a certificate from your CA for anything beyond a demo.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from vitalab.broker.errors import BrokerAuthError

logger = logging.getLogger(__name__)

CERT_FILE = "server.crt"
KEY_FILE = "server.key"


class CertificateError(BrokerAuthError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"TLS certificate: {detail}")
        self.detail = detail


def subject_alt_names(names: Sequence[str]) -> str:
    """``DNS:host,IP:1.2.3.4`` for openssl's ``subjectAltName`` extension."""
    parts = []
    for name in names:
        try:
            parts.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            if not name or any(c in name for c in ",/= \n"):
                raise CertificateError(f"{name!r} is not a host name") from None
            parts.append(f"DNS:{name}")
    return ",".join(parts)


def ensure_self_signed(tls_dir: Path, names: Sequence[str], *, days: int = 825) -> bool:
    """Create ``server.crt``/``server.key`` in ``tls_dir`` unless both exist; ``True`` if created."""
    cert, key = tls_dir / CERT_FILE, tls_dir / KEY_FILE
    if cert.exists() and key.exists():
        return False
    if not names:
        raise CertificateError("at least one host name is needed")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("the openssl command is not installed")
    tls_dir.mkdir(parents=True, exist_ok=True)
    command = [
        openssl, "req", "-x509", "-nodes",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key), "-out", str(cert), "-days", str(days),
        "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={subject_alt_names(names)}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CertificateError(f"openssl failed: {result.stderr.strip()}")
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    logger.info("self-signed broker certificate for %s in %s", ", ".join(names), tls_dir)
    return True
