"""The server's TLS certificate: the operator's (``--tls-cert``/``--tls-key``) or a
self-signed one made on first start.

The self-signed certificate (ECDSA P-256, ten years, names ``localhost``,
the loopback addresses, this host's name and the listen addresses) and its
key live in ``$XDG_STATE_HOME/cleanroom/tls/`` (0700; the key 0600) and are
reused by later starts. Clients pin it by its SHA-256 fingerprint
(``sha256:`` + 64 hex digits of the DER certificate's digest), which
``serve`` prints.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cleanroom import paths
from cleanroom._files import write_private
from cleanroom.errors import InvalidRequest

__all__ = ["TlsFiles", "certificate_fingerprint", "load_tls", "self_signed"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_VALID_DAYS = 3650


@dataclass(frozen=True)
class TlsFiles:
    """A certificate chain and key the server presents, and the leaf's fingerprint."""

    cert: Path
    key: Path
    fingerprint: str
    """``sha256:<hex>`` of the leaf certificate (DER)."""
    self_signed: bool


def certificate_fingerprint(cert: Path) -> str:
    """``sha256:<hex>`` of the first certificate in the PEM file ``cert``."""
    match = _PEM_CERT.search(cert.read_bytes())
    if match is None:
        raise ValueError(f"{cert} holds no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_tls(cert: Path, key: Path) -> TlsFiles:
    """The operator's certificate chain and key, checked to load as a pair.

    Raises ``InvalidRequest`` when they cannot be read or do not match.
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        fingerprint = certificate_fingerprint(cert)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise InvalidRequest(
            f"cannot use the TLS certificate {cert} with key {key}: {exc}",
            details={"cert": str(cert), "key": str(key)},
        ) from exc
    return TlsFiles(cert, key, fingerprint, self_signed=False)


def self_signed(hosts: Iterable[str] = (), directory: Path | None = None) -> TlsFiles:
    """The self-signed certificate in ``directory`` (default: the state dir's ``tls/``),
    made now if it is not there yet; ``hosts`` are extra names for a new one."""
    where = paths.state_dir() / "tls" if directory is None else directory
    cert, key = where / "server.crt", where / "server.key"
    if not (cert.is_file() and key.is_file()):
        try:
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make(cert, key, hosts)
        except OSError as exc:
            raise InvalidRequest(
                f"cannot write a TLS certificate in {where}: {exc.strerror or exc}"
            ) from exc
    files = load_tls(cert, key)
    return TlsFiles(files.cert, files.key, files.fingerprint, self_signed=True)


def _names(hosts: Iterable[str]) -> list[object]:
    from cryptography import x509  # noqa: PLC0415 -- only when a certificate is made

    dns = {"localhost", socket.gethostname()}
    ips: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            dns.add(host)
            continue
        if not address.is_unspecified:
            ips.add(address)
    return [
        *(x509.DNSName(name) for name in sorted(dns) if name),
        *(x509.IPAddress(ip) for ip in sorted(ips, key=str)),
    ]


def _make(cert: Path, key: Path, hosts: Iterable[str]) -> None:
    from cryptography import x509  # noqa: PLC0415 -- only when a certificate is made
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cleanroom server")])
    now = datetime.datetime.now(datetime.UTC)
    names = [n for n in _names(hosts) if isinstance(n, x509.DNSName | x509.IPAddress)]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(key, key_pem)
    write_private(cert, certificate.public_bytes(serialization.Encoding.PEM))
