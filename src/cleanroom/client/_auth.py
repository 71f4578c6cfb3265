"""What the client shows a TCP server: the API token and how it trusts the server's TLS.

Each setting comes from the argument if given, else the environment, else the
client configuration file (:mod:`._config`):

- token: ``token=`` > ``token_file=`` > ``$CLEANROOM_TOKEN`` > ``$CLEANROOM_TOKEN_FILE``
  > the file's ``token_file``.
  A token file holds the token on its first line and must not be readable
  by other users (like an ssh key).
- TLS trust: ``tls_fingerprint=`` / ``$CLEANROOM_TLS_FINGERPRINT`` pins the
  server's certificate by its SHA-256 (as ``serve`` prints it; ``sha256:``
  prefix, colons and case optional); ``tls_ca=`` / ``$CLEANROOM_TLS_CA``
  verifies it against a CA file (with the host name checked); neither: the
  system's CAs.

The token is sent only to TCP servers (the unix socket admits its owner
without one), and never in clear text to a host other than loopback.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cleanroom.errors import InvalidRequest

if TYPE_CHECKING:
    from cleanroom.client._config import ClientConfig

__all__ = [
    "TLS_CA_ENV",
    "TLS_FINGERPRINT_ENV",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "Credentials",
    "normalize_fingerprint",
    "resolve_credentials",
]

TOKEN_ENV = "CLEANROOM_TOKEN"  # noqa: S105 - the variable's name, not a secret
TOKEN_FILE_ENV = "CLEANROOM_TOKEN_FILE"  # noqa: S105
TLS_FINGERPRINT_ENV = "CLEANROOM_TLS_FINGERPRINT"
TLS_CA_ENV = "CLEANROOM_TLS_CA"
_MAX_TOKEN_FILE = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Credentials:
    """The token (never shown in ``repr``) and the TLS trust settings."""

    token: str | None = field(default=None, repr=False)
    tls_fingerprint: str | None = None
    """``sha256:<64 lower-case hex>``, or ``None``."""
    tls_ca: Path | None = None

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header, when there is a token."""
        return {} if self.token is None else {"Authorization": f"Bearer {self.token}"}

    @property
    def pins_tls(self) -> bool:
        """Whether TLS is asked for explicitly (a pinned fingerprint or a CA file)."""
        return self.tls_fingerprint is not None or self.tls_ca is not None


def normalize_fingerprint(text: str) -> str:
    """``sha256:<hex>`` from ``SHA256:AB:CD:...``, ``ab cd ...`` or plain hex;
    ``InvalidRequest`` for anything else."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:").removeprefix("sha256=")
    value = re.sub(r"[:\s]", "", value)
    if _HEX64.fullmatch(value) is None:
        raise InvalidRequest(
            f"not a SHA-256 certificate fingerprint: {text!r}", details={"fingerprint": text}
        )
    return "sha256:" + value


def _read_token_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            data = file.read(_MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read the token file {path}: {exc.strerror or exc}",
            details={"token_file": str(path)},
        ) from exc
    if stat.S_IMODE(mode) & 0o077:
        raise InvalidRequest(
            f"the token file {path} is accessible to other users (chmod 600 it)",
            details={"token_file": str(path)},
        )
    lines = data[:_MAX_TOKEN_FILE].decode("utf-8", "replace").strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise InvalidRequest(f"the token file {path} is empty", details={"token_file": str(path)})
    return token


def resolve_credentials(
    token: str | None = None,
    token_file: Path | str | None = None,
    tls_fingerprint: str | None = None,
    tls_ca: Path | str | None = None,
    *,
    defaults: ClientConfig | None = None,
) -> Credentials:
    """The credentials from the arguments, else the environment, else ``defaults``
    (the client configuration file; see the module doc)."""
    chosen: str | None = token
    if chosen is None and token_file is not None:
        chosen = _read_token_file(Path(token_file))
    if chosen is None and os.environ.get(TOKEN_ENV):
        chosen = os.environ[TOKEN_ENV].strip()
    if chosen is None and os.environ.get(TOKEN_FILE_ENV):
        chosen = _read_token_file(Path(os.environ[TOKEN_FILE_ENV]))
    if chosen is None and defaults is not None and defaults.token_file is not None:
        chosen = _read_token_file(defaults.token_file)
    if chosen is not None and (not chosen or any(c.isspace() for c in chosen)):
        raise InvalidRequest("an API token is one word without spaces")
    pin = tls_fingerprint or os.environ.get(TLS_FINGERPRINT_ENV) or None
    ca = tls_ca or os.environ.get(TLS_CA_ENV) or None
    if defaults is not None:
        pin = pin or defaults.tls_fingerprint
        ca = ca or defaults.tls_ca
    return Credentials(
        token=chosen,
        tls_fingerprint=None if pin is None else normalize_fingerprint(pin),
        tls_ca=None if ca is None else Path(ca),
    )
