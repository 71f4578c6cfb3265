"""Typed control messages of the guest-agent protocol and their strict JSON codec.

Stdlib only: this module runs inside the guest.

Every JSON payload is one object whose keys are exactly the message's fields
(``null`` for absent optionals); unknown keys, missing keys and wrong types
raise :class:`AgentProtocolError`. Bytes fields (the entropy seed) travel as
base64 strings. ``to_frame()`` encodes a message, ``parse_<name>(payload)``
decodes one.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.protocol import FrameType, encode_frame

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal, TypeVar

__all__ = [
    "DEFAULT_ENV",
    "ConfigureRequest",
    "ErrorMessage",
    "ExecRequest",
    "ExitStatus",
    "GuestInfo",
    "GuestNetwork",
    "HostHello",
    "ResizeRequest",
    "SignalRequest",
    "WorkspaceBegin",
    "WorkspaceStats",
    "parse_configure",
    "parse_configured",
    "parse_error",
    "parse_exec",
    "parse_exit",
    "parse_guest_hello",
    "parse_host_hello",
    "parse_resize",
    "parse_signal",
    "parse_workspace_begin",
    "parse_workspace_done",
]

DEFAULT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
"""Environment a command gets when the exec request carries none."""

MAX_SEED = 4096
"""Largest entropy seed accepted, in bytes."""

MAX_DEPTH = 8
"""Deepest nesting of arrays and objects a payload may have (the deepest message needs 2).

Checked before ``json.loads`` sees the payload: the decoder recurses once per
level, so a 10 KB frame of ``[[[[...`` would otherwise raise ``RecursionError``."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")

if TYPE_CHECKING:
    T = TypeVar("T")


def _dump(ftype: FrameType, obj: Mapping[str, Any]) -> bytes:
    return encode_frame(ftype, json.dumps(obj, separators=(",", ":")).encode())


def _nesting(text: str) -> int:
    """The deepest bracket nesting of JSON ``text``, brackets inside strings not counted.

    For invalid JSON it may overcount (an unterminated string's brackets count),
    never undercount the depth the decoder would reach before failing.
    """
    bare = _STRING.sub("", text)
    if bare.count("[") + bare.count("{") <= MAX_DEPTH:
        return 0  # too few openers to be too deep: skip the walk
    depth = deepest = 0
    for match in _BRACKET.finditer(bare):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _load(payload: bytes, what: str, keys: frozenset[str]) -> dict[str, Any]:
    """The JSON object in ``payload`` with exactly ``keys``; anything else (bad UTF-8,
    bad JSON, nesting past :data:`MAX_DEPTH`, another type) raises ``AgentProtocolError``."""
    try:
        text = payload.decode("utf-8")
        if _nesting(text) > MAX_DEPTH:
            raise AgentProtocolError(f"{what}: JSON nested deeper than {MAX_DEPTH}")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # RecursionError/MemoryError: belt and braces behind the depth check.
        raise AgentProtocolError(f"{what}: invalid JSON payload") from exc
    if not isinstance(obj, dict):
        raise AgentProtocolError(f"{what}: payload is not a JSON object")
    found = set(obj)
    if found != keys:
        unknown = sorted(found - keys)
        missing = sorted(keys - found)
        raise AgentProtocolError(f"{what}: unknown keys {unknown}, missing keys {missing}")
    return obj


def _get(obj: dict[str, Any], key: str, typ: type[T], what: str) -> T:
    value = obj[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is an int subclass; never let true/false pass as a number.
    if not isinstance(value, typ) or (typ in (int, float) and isinstance(value, bool)):
        raise AgentProtocolError(f"{what}: {key!r} must be {typ.__name__}")
    return value


def _opt(obj: dict[str, Any], key: str, typ: type[T], what: str) -> T | None:
    return None if obj[key] is None else _get(obj, key, typ, what)


@dataclass(frozen=True)
class HostHello:
    """The host's opening message."""

    protocol_version: int

    def to_frame(self) -> bytes:
        return _dump(FrameType.HELLO, {"protocol_version": self.protocol_version})


def parse_host_hello(payload: bytes) -> HostHello:
    obj = _load(payload, "hello", frozenset({"protocol_version"}))
    return HostHello(_get(obj, "protocol_version", int, "hello"))


@dataclass(frozen=True)
class GuestInfo:
    """The guest's hello: who answers on the other end."""

    agent_version: str
    protocol_version: int
    kernel: str
    python: str

    def to_frame(self) -> bytes:
        return _dump(
            FrameType.HELLO,
            {
                "agent_version": self.agent_version,
                "protocol_version": self.protocol_version,
                "kernel": self.kernel,
                "python": self.python,
            },
        )


def parse_guest_hello(payload: bytes) -> GuestInfo:
    w = "hello"
    obj = _load(payload, w, frozenset({"agent_version", "protocol_version", "kernel", "python"}))
    return GuestInfo(
        agent_version=_get(obj, "agent_version", str, w),
        protocol_version=_get(obj, "protocol_version", int, w),
        kernel=_get(obj, "kernel", str, w),
        python=_get(obj, "python", str, w),
    )


@dataclass(frozen=True)
class GuestNetwork:
    """IPv4 settings for the guest's eth0 (``mac`` None keeps the device's own)."""

    address: str
    prefix: int
    gateway: str
    dns: str
    mac: str | None = None


_NET_KEYS = frozenset({"address", "prefix", "gateway", "dns", "mac"})


@dataclass(frozen=True)
class ConfigureRequest:
    """Entropy seed and/or network settings for the guest to apply."""

    entropy_seed: bytes | None = None
    network: GuestNetwork | None = None

    def to_frame(self) -> bytes:
        net, seed = self.network, self.entropy_seed
        return _dump(
            FrameType.CONFIGURE,
            {
                "entropy_seed": None if seed is None else base64.b64encode(seed).decode(),
                "network": None
                if net is None
                else {
                    "address": net.address,
                    "prefix": net.prefix,
                    "gateway": net.gateway,
                    "dns": net.dns,
                    "mac": net.mac,
                },
            },
        )


def parse_configure(payload: bytes) -> ConfigureRequest:
    w = "configure"
    obj = _load(payload, w, frozenset({"entropy_seed", "network"}))
    seed_text = _opt(obj, "entropy_seed", str, w)
    seed: bytes | None = None
    if seed_text is not None:
        try:
            seed = base64.b64decode(seed_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AgentProtocolError(f"{w}: entropy_seed is not base64") from exc
        if len(seed) > MAX_SEED:
            raise AgentProtocolError(f"{w}: entropy_seed longer than {MAX_SEED} bytes")
    net_obj = _opt(obj, "network", dict, w)
    network: GuestNetwork | None = None
    if net_obj is not None:
        wn = "configure.network"
        if set(net_obj) != _NET_KEYS:
            raise AgentProtocolError(f"{wn}: keys must be exactly {sorted(_NET_KEYS)}")
        prefix = _get(net_obj, "prefix", int, wn)
        if not 0 <= prefix <= 32:
            raise AgentProtocolError(f"{wn}: prefix out of range")
        network = GuestNetwork(
            address=_get(net_obj, "address", str, wn),
            prefix=prefix,
            gateway=_get(net_obj, "gateway", str, wn),
            dns=_get(net_obj, "dns", str, wn),
            mac=_opt(net_obj, "mac", str, wn),
        )
    return ConfigureRequest(entropy_seed=seed, network=network)


@dataclass(frozen=True)
class WorkspaceBegin:
    """Start of a workspace tar stream.

    ``scratch``: extract into a throwaway directory on the workspace's
    filesystem, removed again before the reply, instead of the workspace
    itself (a warm-up that leaves the workspace as it was).
    """

    read_only: bool
    scratch: bool = False

    def to_frame(self) -> bytes:
        return _dump(
            FrameType.WORKSPACE_BEGIN, {"read_only": self.read_only, "scratch": self.scratch}
        )


def parse_workspace_begin(payload: bytes) -> WorkspaceBegin:
    w = "workspace_begin"
    obj = _load(payload, w, frozenset({"read_only", "scratch"}))
    return WorkspaceBegin(_get(obj, "read_only", bool, w), _get(obj, "scratch", bool, w))


@dataclass(frozen=True)
class WorkspaceStats:
    """What the guest extracted: regular files, their bytes, and refused members."""

    files: int
    bytes: int
    skipped: int

    def to_frame(self) -> builtins.bytes:
        return _dump(
            FrameType.WORKSPACE_DONE,
            {"files": self.files, "bytes": self.bytes, "skipped": self.skipped},
        )


def parse_workspace_done(payload: bytes) -> WorkspaceStats:
    w = "workspace_done"
    obj = _load(payload, w, frozenset({"files", "bytes", "skipped"}))
    return WorkspaceStats(
        files=_get(obj, "files", int, w),
        bytes=_get(obj, "bytes", int, w),
        skipped=_get(obj, "skipped", int, w),
    )


@dataclass(frozen=True)
class ExecRequest:
    """One command to run. ``env`` None means :data:`DEFAULT_ENV`; ``cwd`` None, the
    agent's workspace directory; ``timeout`` None, none."""

    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    timeout: float | None = None
    stdin: Literal["none", "stream"] = "none"
    tty: tuple[int, int] | None = None
    """``(rows, cols)``: run on a pseudo-terminal of that size (see :mod:`.tty`)."""

    def to_frame(self) -> bytes:
        tty = self.tty
        return _dump(
            FrameType.EXEC,
            {
                "argv": list(self.argv),
                "env": None if self.env is None else dict(self.env),
                "cwd": self.cwd,
                "timeout": self.timeout,
                "stdin": self.stdin,
                "tty": None if tty is None else {"rows": tty[0], "cols": tty[1]},
            },
        )


def parse_exec(payload: bytes) -> ExecRequest:
    w = "exec"
    obj = _load(payload, w, frozenset({"argv", "env", "cwd", "timeout", "stdin", "tty"}))
    argv = _get(obj, "argv", list, w)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise AgentProtocolError(f"{w}: argv must be a non-empty list of strings")
    env = _opt(obj, "env", dict, w)
    if env is not None and not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise AgentProtocolError(f"{w}: env must map names to strings")
    timeout = _opt(obj, "timeout", float, w)
    if timeout is not None and not timeout > 0:
        raise AgentProtocolError(f"{w}: timeout must be positive")
    stdin = _get(obj, "stdin", str, w)
    if stdin not in ("none", "stream"):
        raise AgentProtocolError(f"{w}: stdin must be 'none' or 'stream'")
    tty_obj = _opt(obj, "tty", dict, w)
    return ExecRequest(
        argv=tuple(argv),
        env=env,
        cwd=_opt(obj, "cwd", str, w),
        timeout=timeout,
        stdin="stream" if stdin == "stream" else "none",
        tty=None if tty_obj is None else _window(tty_obj, "exec.tty"),
    )


MAX_WINDOW = 0xFFFF
"""Largest row or column count of a terminal (``struct winsize`` holds u16)."""


def _window(obj: dict[str, Any], what: str) -> tuple[int, int]:
    if set(obj) != {"rows", "cols"}:
        raise AgentProtocolError(f"{what}: keys must be exactly ['cols', 'rows']")
    rows, cols = _get(obj, "rows", int, what), _get(obj, "cols", int, what)
    if not (1 <= rows <= MAX_WINDOW and 1 <= cols <= MAX_WINDOW):
        raise AgentProtocolError(f"{what}: rows and cols must be 1..{MAX_WINDOW}")
    return rows, cols


@dataclass(frozen=True)
class ResizeRequest:
    """New window size of the running command's terminal (ignored without one)."""

    rows: int
    cols: int

    def to_frame(self) -> bytes:
        return _dump(FrameType.RESIZE, {"rows": self.rows, "cols": self.cols})


def parse_resize(payload: bytes) -> ResizeRequest:
    rows, cols = _window(_load(payload, "resize", frozenset({"rows", "cols"})), "resize")
    return ResizeRequest(rows, cols)


@dataclass(frozen=True)
class SignalRequest:
    """Send ``signal`` to the running command's whole process group."""

    signal: int

    def to_frame(self) -> bytes:
        return _dump(FrameType.SIGNAL, {"signal": self.signal})


def parse_signal(payload: bytes) -> SignalRequest:
    obj = _load(payload, "signal", frozenset({"signal"}))
    signum = _get(obj, "signal", int, "signal")
    if not 1 <= signum <= 64:
        raise AgentProtocolError("signal: number out of range")
    return SignalRequest(signum)


@dataclass(frozen=True)
class ExitStatus:
    """How a command ended. Killed by signal N: ``exit_code`` is 128+N."""

    exit_code: int
    signal: int | None
    signal_name: str | None
    timed_out: bool
    duration_ms: float

    def to_frame(self) -> bytes:
        return _dump(
            FrameType.EXIT,
            {
                "exit_code": self.exit_code,
                "signal": self.signal,
                "signal_name": self.signal_name,
                "timed_out": self.timed_out,
                "duration_ms": self.duration_ms,
            },
        )


def parse_exit(payload: bytes) -> ExitStatus:
    w = "exit"
    keys = frozenset({"exit_code", "signal", "signal_name", "timed_out", "duration_ms"})
    obj = _load(payload, w, keys)
    return ExitStatus(
        exit_code=_get(obj, "exit_code", int, w),
        signal=_opt(obj, "signal", int, w),
        signal_name=_opt(obj, "signal_name", str, w),
        timed_out=_get(obj, "timed_out", bool, w),
        duration_ms=_get(obj, "duration_ms", float, w),
    )


@dataclass(frozen=True)
class ErrorMessage:
    """An ERROR frame: a stable wire ``code`` and a human message."""

    code: str
    message: str

    def to_frame(self) -> bytes:
        return _dump(FrameType.ERROR, {"code": self.code, "message": self.message})


def parse_error(payload: bytes) -> ErrorMessage:
    obj = _load(payload, "error", frozenset({"code", "message"}))
    return ErrorMessage(_get(obj, "code", str, "error"), _get(obj, "message", str, "error"))


def parse_configured(payload: bytes) -> None:
    """The CONFIGURED acknowledgement is an empty JSON object."""
    _load(payload, "configured", frozenset())
