"""Typed control messages of the guest-agent protocol.

Stdlib only: this module runs inside the guest. The codec rules are in
:mod:`cleanroom.agent.jsonwire`.

Every JSON payload is one object whose keys are exactly the message's fields
(``null`` for absent optionals); unknown keys, missing keys and wrong types
raise :class:`AgentProtocolError`. Bytes fields (the entropy seed) travel as
base64 strings. ``to_frame()`` encodes a message, ``parse_<name>(payload)``
decodes one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from cleanroom.agent.errors import AgentProtocolError
from cleanroom.agent.jsonwire import (
    MAX_DEPTH,
    FlatMessage,
    as_object,
    dump,
    get,
    load,
    opt,
)
from cleanroom.agent.protocol import FrameType

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

__all__ = [
    "DEFAULT_ENV",
    "MAX_DEPTH",
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


@dataclass(frozen=True)
class HostHello(FlatMessage):
    """The host's opening message."""

    FRAME = FrameType.HELLO

    protocol_version: int


parse_host_hello = HostHello.parse


@dataclass(frozen=True)
class GuestInfo(FlatMessage):
    """The guest's hello: who answers on the other end."""

    FRAME = FrameType.HELLO

    agent_version: str
    protocol_version: int
    kernel: str
    python: str


parse_guest_hello = GuestInfo.parse


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
        return dump(
            FrameType.CONFIGURE,
            {
                "entropy_seed": None if seed is None else base64.b64encode(seed).decode(),
                "network": None if net is None else as_object(net),
            },
        )


def parse_configure(payload: bytes) -> ConfigureRequest:
    w = "configure"
    obj = load(payload, w, frozenset({"entropy_seed", "network"}))
    seed_text = opt(obj, "entropy_seed", str, w)
    seed: bytes | None = None
    if seed_text is not None:
        try:
            seed = base64.b64decode(seed_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AgentProtocolError(f"{w}: entropy_seed is not base64") from exc
        if len(seed) > MAX_SEED:
            raise AgentProtocolError(f"{w}: entropy_seed longer than {MAX_SEED} bytes")
    net_obj = opt(obj, "network", dict, w)
    network: GuestNetwork | None = None
    if net_obj is not None:
        wn = "configure.network"
        if set(net_obj) != _NET_KEYS:
            raise AgentProtocolError(f"{wn}: keys must be exactly {sorted(_NET_KEYS)}")
        prefix = get(net_obj, "prefix", int, wn)
        if not 0 <= prefix <= 32:
            raise AgentProtocolError(f"{wn}: prefix out of range")
        network = GuestNetwork(
            address=get(net_obj, "address", str, wn),
            prefix=prefix,
            gateway=get(net_obj, "gateway", str, wn),
            dns=get(net_obj, "dns", str, wn),
            mac=opt(net_obj, "mac", str, wn),
        )
    return ConfigureRequest(entropy_seed=seed, network=network)


@dataclass(frozen=True)
class WorkspaceBegin(FlatMessage):
    """Start of a workspace tar stream.

    ``scratch``: extract into a throwaway directory on the workspace's
    filesystem, removed again before the reply, instead of the workspace
    itself (a warm-up that leaves the workspace as it was).
    """

    FRAME = FrameType.WORKSPACE_BEGIN

    read_only: bool
    scratch: bool = False


parse_workspace_begin = WorkspaceBegin.parse


@dataclass(frozen=True)
class WorkspaceStats(FlatMessage):
    """What the guest extracted: regular files, their bytes, and refused members."""

    FRAME = FrameType.WORKSPACE_DONE

    files: int
    bytes: int
    skipped: int


parse_workspace_done = WorkspaceStats.parse


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
        return dump(
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
    obj = load(payload, w, frozenset({"argv", "env", "cwd", "timeout", "stdin", "tty"}))
    argv = get(obj, "argv", list, w)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise AgentProtocolError(f"{w}: argv must be a non-empty list of strings")
    env = opt(obj, "env", dict, w)
    if env is not None and not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise AgentProtocolError(f"{w}: env must map names to strings")
    timeout = opt(obj, "timeout", float, w)
    if timeout is not None and not timeout > 0:
        raise AgentProtocolError(f"{w}: timeout must be positive")
    stdin = get(obj, "stdin", str, w)
    if stdin not in ("none", "stream"):
        raise AgentProtocolError(f"{w}: stdin must be 'none' or 'stream'")
    tty_obj = opt(obj, "tty", dict, w)
    return ExecRequest(
        argv=tuple(argv),
        env=env,
        cwd=opt(obj, "cwd", str, w),
        timeout=timeout,
        stdin="stream" if stdin == "stream" else "none",
        tty=None if tty_obj is None else _window(tty_obj, "exec.tty"),
    )


MAX_WINDOW = 0xFFFF
"""Largest row or column count of a terminal (``struct winsize`` holds u16)."""


def _window(obj: dict[str, Any], what: str) -> tuple[int, int]:
    if set(obj) != {"rows", "cols"}:
        raise AgentProtocolError(f"{what}: keys must be exactly ['cols', 'rows']")
    rows, cols = get(obj, "rows", int, what), get(obj, "cols", int, what)
    if not (1 <= rows <= MAX_WINDOW and 1 <= cols <= MAX_WINDOW):
        raise AgentProtocolError(f"{what}: rows and cols must be 1..{MAX_WINDOW}")
    return rows, cols


@dataclass(frozen=True)
class ResizeRequest:
    """New window size of the running command's terminal (ignored without one)."""

    rows: int
    cols: int

    def to_frame(self) -> bytes:
        return dump(FrameType.RESIZE, {"rows": self.rows, "cols": self.cols})


def parse_resize(payload: bytes) -> ResizeRequest:
    rows, cols = _window(load(payload, "resize", frozenset({"rows", "cols"})), "resize")
    return ResizeRequest(rows, cols)


@dataclass(frozen=True)
class SignalRequest:
    """Send ``signal`` to the running command's whole process group."""

    signal: int

    def to_frame(self) -> bytes:
        return dump(FrameType.SIGNAL, {"signal": self.signal})


def parse_signal(payload: bytes) -> SignalRequest:
    obj = load(payload, "signal", frozenset({"signal"}))
    signum = get(obj, "signal", int, "signal")
    if not 1 <= signum <= 64:
        raise AgentProtocolError("signal: number out of range")
    return SignalRequest(signum)


@dataclass(frozen=True)
class ExitStatus(FlatMessage):
    """How a command ended. Killed by signal N: ``exit_code`` is 128+N."""

    FRAME = FrameType.EXIT

    exit_code: int
    signal: int | None
    signal_name: str | None
    timed_out: bool
    duration_ms: float


parse_exit = ExitStatus.parse


@dataclass(frozen=True)
class ErrorMessage(FlatMessage):
    """An ERROR frame: a stable wire ``code`` and a human message."""

    FRAME = FrameType.ERROR

    code: str
    message: str


parse_error = ErrorMessage.parse


def parse_configured(payload: bytes) -> None:
    """The CONFIGURED acknowledgement is an empty JSON object."""
    load(payload, "configured", frozenset())
