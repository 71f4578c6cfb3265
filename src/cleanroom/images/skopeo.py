"""Running skopeo and umoci: transports, TLS and credentials, and their failures.

Every failure becomes ``image_unavailable`` whose ``details['cause']`` is one
of ``not_found``, ``unauthorized``, ``unreachable``, ``digest_mismatch``,
``no_platform`` or ``tool_failed`` (with the tool's stderr tail). The cause is
read from the foreign tool's own words at this boundary only; callers act on
the class and the ``cause`` detail.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.loopback import is_loopback

__all__ = ["auth_file", "is_loopback_registry", "run_skopeo", "run_umoci", "tls_flag"]

_TIMEOUT = "30m"
_STDERR_LIMIT = 1 << 20
# Substrings of skopeo/containers-image messages -> our cause (first match wins).
_CAUSES: tuple[tuple[str, str], ...] = (
    ("unauthorized", "unauthorized"),
    ("authentication required", "unauthorized"),
    ("access to the resource is denied", "unauthorized"),
    ("no image found in manifest list", "no_platform"),
    ("no image found in image index", "no_platform"),
    ("choosing image instance", "no_platform"),
    ("digest did not match", "digest_mismatch"),
    ("digest mismatch", "digest_mismatch"),
    ("does not match", "digest_mismatch"),
    ("manifest unknown", "not_found"),
    ("name unknown", "not_found"),
    ("not found", "not_found"),
    ("no such file", "not_found"),
    ("connection refused", "unreachable"),
    ("no such host", "unreachable"),
    ("dial tcp", "unreachable"),
    ("i/o timeout", "unreachable"),
    ("server gave http response to https client", "unreachable"),
    ("network is unreachable", "unreachable"),
    ("pinging container registry", "unreachable"),
)


def is_loopback_registry(registry: str) -> bool:
    """Whether ``host[:port]`` is this machine (127.0.0.0/8, ``localhost``, ``::1``)."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback(host)


def tls_flag(registry: str, insecure: Sequence[str], *, src: bool = True) -> list[str]:
    """``--src-tls-verify=false`` for loopback or listed registries (plain HTTP allowed)."""
    plain = is_loopback_registry(registry) or registry.lower() in insecure
    name = "--src-tls-verify" if src else "--tls-verify"
    return [f"{name}={'false' if plain else 'true'}"]


def auth_file() -> Path | None:
    """``$REGISTRY_AUTH_FILE``, else ``~/.docker/config.json`` when it exists."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    default = Path.home() / ".docker" / "config.json"
    return default if default.is_file() else None


def _cause(stderr: str) -> str:
    lowered = stderr.lower()
    for fragment, cause in _CAUSES:
        if fragment in lowered:
            return cause
    return "tool_failed"


def _run(
    argv: list[str], what: str, progress: Progress, step: str | None
) -> subprocess.CompletedProcess[bytes]:
    # stderr goes to a file: a pipe nobody reads while stdout streams could fill and stall.
    with tempfile.TemporaryFile() as err_file:
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err_file, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ImageUnavailable(
                f"cannot run {argv[0]}: {exc.strerror or exc}",
                details={"cause": "tool_failed", "missing_tools": [argv[0]]},
            ) from exc
        out = bytearray()
        blobs = 0
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                out += line
                if step is not None and line.startswith(b"Copying blob"):
                    blobs += 1
                    progress.advance(step, blobs, None, "blobs")
        proc.wait()
        err_file.seek(0)
        err = err_file.read(_STDERR_LIMIT)
    if proc.returncode != 0:
        stderr = err.decode(errors="replace").strip()
        cause = _cause(stderr)
        raise ImageUnavailable(
            f"{what} failed ({cause.replace('_', ' ')})",
            details={"cause": cause, "stderr": stderr[-2000:], "argv": argv[:4]},
        )
    return subprocess.CompletedProcess(argv, 0, bytes(out), err)


def run_skopeo(
    args: Sequence[str],
    what: str,
    *,
    progress: Progress | None = None,
    step: str | None = None,
) -> bytes:
    """Run ``skopeo ARGS`` (credentials added when present); its stdout.

    With ``step``, each copied blob advances that progress step.
    """
    argv = ["skopeo", "--command-timeout", _TIMEOUT, *args]
    auth = auth_file()
    if auth is not None and args and args[0] in ("copy", "inspect"):
        argv[4:4] = ["--authfile", str(auth)]
    result = _run(argv, what, progress or NullProgress(), step)
    return result.stdout


def run_umoci(args: Sequence[str | Path], what: str) -> None:
    """Run ``umoci ARGS`` (rootless when not root)."""
    argv = ["umoci", *(str(a) for a in args)]
    if os.geteuid() != 0 and len(argv) > 2 and argv[1:3] == ["raw", "unpack"]:
        argv.insert(3, "--rootless")
    _run(argv, what, NullProgress(), None)
