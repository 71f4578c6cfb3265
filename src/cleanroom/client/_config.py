"""The client configuration file: which server, and how to trust and reach it.

``$XDG_CONFIG_HOME/cleanroom/client.yaml`` (default ``~/.config/cleanroom/client.yaml``)::

    host: tcp://build-host:8765           # unix:///path, tcp://HOST:PORT or http(s)://HOST:PORT
    token_file: ~/.config/cleanroom/token # the API token (0600); the token itself is not kept here
    tls_fingerprint: sha256:ab12...        # pin the server's certificate (as `serve` prints it)
    tls_ca: /etc/ssl/build-ca.pem          # or verify it against this CA file

Every key is optional and unknown keys are errors (``config_invalid``, listing
every problem). A setting given as an argument (a CLI flag) wins, then the
environment (``CLEANROOM_HOST``, ``CLEANROOM_TOKEN``/``CLEANROOM_TOKEN_FILE``,
``CLEANROOM_TLS_FINGERPRINT``, ``CLEANROOM_TLS_CA``), then this file. A
missing file is no settings; the YAML parser is loaded only when the file exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cleanroom import paths
from cleanroom.client._auth import normalize_fingerprint
from cleanroom.errors import ConfigInvalid, InvalidRequest

__all__ = ["CLIENT_KEYS", "ClientConfig", "client_config_file", "load_client_config"]

CLIENT_KEYS = ("host", "token_file", "tls_fingerprint", "tls_ca")
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClientConfig:
    """The file's settings (``None``: not set)."""

    host: str | None = None
    token_file: Path | None = None
    tls_fingerprint: str | None = None
    """``sha256:<64 lower-case hex>``."""
    tls_ca: Path | None = None


def client_config_file() -> Path:
    """``config_dir()/client.yaml``."""
    return paths.config_dir() / "client.yaml"


def parse_client_config(text: str, source_name: str) -> ClientConfig:
    """Parse the client configuration ``text``; problems name the file ``source_name``.

    Raises ``ConfigInvalid`` listing every problem.
    """
    from cleanroom._yaml import Problems, parse_yaml, read_mapping, read_str  # noqa: PLC0415
    from cleanroom.config_reader import SectionReader, is_null  # noqa: PLC0415

    problems = Problems(source_name)
    root = parse_yaml(text, problems)
    problems.raise_if_any(ConfigInvalid, "client config")
    if root is None:
        return ClientConfig()
    entries = read_mapping(root, "", problems, allowed=CLIENT_KEYS) or {}
    reader = SectionReader(problems)
    for key in ("host", "tls_fingerprint"):  # null: not set, as for the paths
        if key in entries and is_null(entries[key].value):
            del entries[key]
    host = pin = None
    if "host" in entries:
        host = read_str(entries["host"].value, "host", problems)
    if "tls_fingerprint" in entries:
        node = entries["tls_fingerprint"].value
        text_pin = read_str(node, "tls_fingerprint", problems)
        if text_pin is not None:
            try:
                pin = normalize_fingerprint(text_pin)
            except InvalidRequest as exc:
                problems.add(node.mark, "tls_fingerprint", exc.message)
    token_file = reader.optional_path(entries, "token_file", "")
    tls_ca = reader.optional_path(entries, "tls_ca", "")
    problems.raise_if_any(ConfigInvalid, "client config")
    return ClientConfig(host=host, token_file=token_file, tls_fingerprint=pin, tls_ca=tls_ca)


def load_client_config(path: Path | None = None) -> ClientConfig:
    """Read the client configuration from ``path`` (default :func:`client_config_file`).

    A missing file gives no settings. Raises ``ConfigInvalid``.
    """
    target = client_config_file() if path is None else path
    try:
        with target.open("rb") as file:
            data = file.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return ClientConfig()
    except OSError as exc:
        raise _unreadable(target, exc.strerror or str(exc)) from exc
    if len(data) > _MAX_BYTES:
        raise _unreadable(target, f"larger than {_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise _unreadable(target, "not valid UTF-8") from exc
    return parse_client_config(text, str(target))


def _unreadable(target: Path, why: str) -> ConfigInvalid:
    return ConfigInvalid(
        f"cannot read the client config {target}: {why}",
        details={"source": str(target), "problems": [f"{target}:1:1: {why}"]},
    )
