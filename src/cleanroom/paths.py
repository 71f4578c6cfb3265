"""Where cleanroom keeps its files (XDG base directories, one place for all of them).

Every path honours the XDG environment variables at call time, so tests can
redirect everything by setting ``XDG_*`` in the environment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cleanroom.errors import ConfigInvalid

__all__ = [
    "cache_dir",
    "config_dir",
    "config_file",
    "data_dir",
    "default_socket_path",
    "env_dir",
    "images_dir",
    "private_dir",
    "runtime_dir",
    "state_dir",
]

APP = "cleanroom"


def env_dir(variable: str, default: Path) -> Path:
    """The directory the environment variable ``variable`` names, read at call
    time; ``default`` when it is unset or empty. Raises ``ConfigInvalid`` for a
    relative path (unlike an XDG variable's, it is a mistake, not ignored)."""
    value = os.environ.get(variable)
    if not value:
        return default
    path = Path(value)
    if not path.is_absolute():
        raise ConfigInvalid(f"{variable} must be an absolute path", details={"value": value[:300]})
    return path


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "")
    # The XDG spec says relative paths are invalid and must be ignored.
    base = Path(value) if value and Path(value).is_absolute() else Path.home() / fallback
    return base / APP


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/cleanroom`` (default ``~/.config/cleanroom``)."""
    return _xdg("XDG_CONFIG_HOME", ".config")


def config_file() -> Path:
    """The runtime configuration file, ``config_dir()/config.yaml``."""
    return config_dir() / "config.yaml"


def state_dir() -> Path:
    """``$XDG_STATE_HOME/cleanroom`` (default ``~/.local/state/cleanroom``): runs, logs."""
    return _xdg("XDG_STATE_HOME", ".local/state")


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cleanroom`` (default ``~/.cache/cleanroom``): images, verdicts."""
    return _xdg("XDG_CACHE_HOME", ".cache")


def images_dir() -> Path:
    """The content-addressed guest image cache, ``cache_dir()/images``."""
    return cache_dir() / "images"


def data_dir() -> Path:
    """``$XDG_DATA_HOME/cleanroom`` (default ``~/.local/share/cleanroom``)."""
    return _xdg("XDG_DATA_HOME", ".local/share")


def runtime_dir() -> Path:
    """A private (0700) per-user directory for sockets.

    ``$XDG_RUNTIME_DIR/cleanroom`` when that variable is set; otherwise
    ``/tmp/cleanroom-<uid>``. Either way it is made 0700 and refused if it is
    not a real directory owned by this user (a pre-created directory would let
    its owner hijack the socket); see :func:`private_dir`.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and Path(xdg).is_absolute():
        path = Path(xdg) / APP
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        path = Path(f"/tmp/{APP}-{os.getuid()}")  # noqa: S108 - private, checked below
    return private_dir(path)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can use: created 0700 if missing;
    an existing one must be a real directory (not a symlink) owned by this
    user, and is set to 0700 if its mode is looser. Raises ``PermissionError``
    otherwise; checked on every call, whoever made the directory."""
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def default_socket_path() -> Path:
    """The server's default unix socket, ``runtime_dir()/cleanroom.sock``."""
    return runtime_dir() / "cleanroom.sock"
