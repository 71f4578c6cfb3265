"""One agent session with the host: the frame loop, greeting, configure and exec.

Stdlib only: this module runs inside the guest. The session's rules are in
:mod:`cleanroom.agent.guest` (the entry point); the workspace side (transfers,
manifest, change and artifact reports) is :mod:`cleanroom.agent.transfers`.
"""

# raw system files (/proc, /dev); os-level calls mirror the syscalls
# ruff: noqa: PTH103, PTH115
from __future__ import annotations

import contextlib
import os
import sys
import time

from cleanroom.agent import imageroot, sysops
from cleanroom.agent.channel import Channel
from cleanroom.agent.command import RunningCommand
from cleanroom.agent.errors import AgentDisconnected, AgentProtocolError, GuestOperationFailed
from cleanroom.agent.messages import (
    ErrorMessage,
    GuestInfo,
    parse_configure,
    parse_exec,
    parse_host_hello,
    parse_resize,
    parse_signal,
)
from cleanroom.agent.protocol import (
    AGENT_VERSION,
    ERR_BUSY,
    ERR_CONFIGURE,
    ERR_IMAGE,
    ERR_INTERNAL,
    ERR_PROTOCOL,
    ERR_VERSION,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from cleanroom.agent.transfers import SessionWorkspace
from cleanroom.agent.tty import TtyCommand

__all__ = ["EXIT_OK", "EXIT_PROTOCOL", "Session", "log"]

EXIT_OK = 0
EXIT_PROTOCOL = 3
_EOF_POLL = 0.02


def log(message: str) -> None:
    if sys.stderr is None:  # no console at all: nowhere to say it
        return
    sys.stderr.write(f"cleanroom-agent: {message}\n")
    sys.stderr.flush()


class _EndSession(Exception):
    """Stop serving; ``status`` is the agent's exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _own_mount_namespace() -> bool:
    """Whether this process got a mount namespace of its own (e.g. ``unshare -m agent``).

    Compared with the parent's, not PID 1's: PID 1 may itself live elsewhere.
    """
    try:
        mine = os.readlink("/proc/self/ns/mnt")
        return mine != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


class Session:
    """One host session over ``channel`` (see the module docstring for its rules)."""

    def __init__(
        self,
        channel: Channel,
        workspace: str,
        *,
        init_mode: bool,
        root: imageroot.CommandRoot | None = None,
        root_problem: str | None = None,
    ) -> None:
        """``root``: run commands in this user image's root (``workspace`` is then
        the path commands see); ``root_problem``: a user image was asked for but
        its root could not be built (workspace and exec requests are refused)."""
        self._ch = channel
        self._root = root
        self._root_problem = root_problem
        self._cmd_workspace = workspace
        self._workspace = workspace if root is None else root.workspace_path
        self._init = init_mode
        self._privileged = init_mode or (os.geteuid() == 0 and _own_mount_namespace())
        self._restorable = init_mode and sysops.snapshot_mode_requested(sysops.read_cmdline())
        """Booted to be snapshotted: each configure reseeds the CRNG, and the first
        mounts the workspace disk (see ``sysops.SNAPSHOT_CMDLINE_FLAG``; in a user
        image, inside its command root)."""
        self._greeted = False
        self._command: RunningCommand | TtyCommand | None = None
        if init_mode:
            # Commands default to cwd /workspace, also before any workspace arrives.
            with contextlib.suppress(OSError):
                os.makedirs(workspace, exist_ok=True)
        self._files = SessionWorkspace(
            self._workspace,
            channel.send,
            self._idle_or_fail,
            privileged=self._privileged,
            root=root,
        )

    def run(self) -> int:
        """Serve until end of stream, SHUTDOWN or a protocol error; return the exit status."""
        decoder = FrameDecoder()
        try:
            while True:
                data = self._ch.read()
                if not data:
                    if not self._greeted and self._ch.eof_until_first_data:
                        time.sleep(_EOF_POLL)  # virtio port: host end not connected yet
                        continue
                    return EXIT_OK
                decoder.push(data)
                try:
                    while (frame := decoder.pop()) is not None:
                        self._handle(frame)
                except _EndSession as end:
                    return end.status
                except AgentProtocolError as exc:  # framing, parsing or state
                    return self._protocol_failure(exc)
        except AgentDisconnected as exc:
            log(str(exc))
            return EXIT_OK
        finally:
            self._cleanup()

    def _protocol_failure(self, exc: AgentProtocolError) -> int:
        log(f"protocol error: {exc.message}")
        self._error(ERR_PROTOCOL, exc.message)
        return EXIT_PROTOCOL

    def _error(self, code: str, message: str) -> None:
        with contextlib.suppress(AgentDisconnected):  # peer gone: the read loop ends anyway
            self._ch.send(ErrorMessage(code, message).to_frame())

    def _cleanup(self) -> None:
        if self._command is not None:
            self._command.kill_and_wait()
            self._command = None
        self._files.close()
        self._ch.close()

    def _running(self) -> RunningCommand | TtyCommand | None:
        cmd = self._command
        return None if cmd is None or cmd.done.is_set() else cmd

    # -- dispatch ----------------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        try:
            self._dispatch(frame)
        except GuestOperationFailed as exc:
            log(f"{exc.wire_code}: {exc.message}")
            self._error(exc.wire_code, exc.message)
        except OSError as exc:  # an operation failed in a way nobody planned for
            log(f"internal error: {exc!r}")
            self._error(ERR_INTERNAL, str(exc))

    def _dispatch(self, frame: Frame) -> None:
        t = frame.type
        if not self._greeted:
            if t is not FrameType.HELLO:
                raise AgentProtocolError(f"expected HELLO first, got {t.name}")
            self._hello(frame.payload)
        elif self._files.transferring:
            self._files.transfer_frame(frame)
        elif t is FrameType.EXEC:
            self._exec(frame.payload)
        elif t is FrameType.STDIN:
            if (cmd := self._running()) is not None:
                cmd.stdin_data(frame.payload)
        elif t is FrameType.STDIN_EOF:
            if (cmd := self._running()) is not None:
                cmd.stdin_eof()
        elif t is FrameType.SIGNAL:
            req = parse_signal(frame.payload)
            if (cmd := self._running()) is not None:
                cmd.signal(req.signal)
        elif t is FrameType.RESIZE:
            size = parse_resize(frame.payload)
            if isinstance(cmd := self._running(), TtyCommand):
                cmd.resize(size.rows, size.cols)
        elif t is FrameType.CONFIGURE:
            self._configure(frame.payload)
        elif t is FrameType.WORKSPACE_BEGIN:
            self._files.begin(frame.payload)
        elif t is FrameType.BASELINE:
            self._files.baseline()
        elif t is FrameType.CHANGES:
            self._files.changes(frame.payload)
        elif t is FrameType.ARTIFACTS:
            self._files.artifacts(frame.payload)
        elif t is FrameType.SHUTDOWN:
            self._shutdown()
        else:
            raise AgentProtocolError(f"unexpected {t.name} frame from the host")

    def _hello(self, payload: bytes) -> None:
        hello = parse_host_hello(payload)
        if hello.protocol_version != PROTOCOL_VERSION:
            self._error(
                ERR_VERSION,
                f"host speaks protocol {hello.protocol_version}, agent {PROTOCOL_VERSION}",
            )
            raise _EndSession(EXIT_PROTOCOL)
        self._greeted = True
        info = GuestInfo(
            agent_version=AGENT_VERSION,
            protocol_version=PROTOCOL_VERSION,
            kernel=os.uname().release,
            python="{}.{}.{}".format(*sys.version_info[:3]),
        )
        self._ch.send(info.to_frame())

    def _idle_or_fail(self, what: str) -> None:
        if self._root_problem is not None:
            raise GuestOperationFailed(ERR_IMAGE, f"user image unusable: {self._root_problem}")
        if self._running() is not None:
            raise GuestOperationFailed(ERR_BUSY, f"{what} while a command runs")

    def _configure(self, payload: bytes) -> None:
        req = parse_configure(payload)
        if self._running() is not None:
            raise GuestOperationFailed(ERR_BUSY, "configure while a command runs")
        if req.entropy_seed is not None:
            sysops.add_entropy(req.entropy_seed, credit=self._init)
        if self._restorable:
            # Every guest restored from one snapshot starts with the same CRNG
            # state: reseed it from the pool that now holds this run's seed.
            sysops.reseed_crng()
            # ... and with the wall clock of the moment the snapshot was taken.
            sysops.set_clock_from_rtc()
        _reseed_python()
        if self._restorable and not sysops.is_mount_point(self._workspace):
            try:
                if self._root is not None:
                    self._root.mount_workspace()
                elif self._root_problem is None:
                    sysops.mount_workspace_disk(self._workspace, fresh=True)
            except OSError as exc:
                raise GuestOperationFailed(ERR_CONFIGURE, f"workspace disk: {exc}") from exc
        if req.network is not None:
            if not self._privileged:
                raise GuestOperationFailed(
                    ERR_CONFIGURE, "network setup needs the VM (or a private namespace)"
                )
            sysops.configure_network(req.network)
            if self._root is not None:
                try:
                    self._root.write_resolv_conf(req.network.dns)
                except (OSError, imageroot.ImageRootError) as exc:
                    raise GuestOperationFailed(
                        ERR_CONFIGURE, f"resolv.conf in the user image: {exc}"
                    ) from exc
        self._ch.send(encode_frame(FrameType.CONFIGURED, b"{}"))

    def _exec(self, payload: bytes) -> None:
        req = parse_exec(payload)
        self._idle_or_fail("exec")
        if self._command is not None:
            self._command.kill_and_wait()  # finished; joins its threads
        cwd = req.cwd if req.cwd is not None else self._cmd_workspace
        if req.tty is not None:
            self._command = TtyCommand(req, self._ch.send, log, cwd=cwd, root=self._root)
        else:
            self._command = RunningCommand(req, self._ch.send, log, cwd=cwd, root=self._root)
        self._command.start()

    def _shutdown(self) -> None:
        if self._command is not None:
            self._command.kill_and_wait()
            self._command = None
        os.sync()
        self._ch.send(encode_frame(FrameType.GOODBYE))
        raise _EndSession(EXIT_OK)


def _reseed_python() -> None:
    """Reseed this process's Python generators from the (reseeded) kernel: a restored
    agent would otherwise repeat the values of every other restore of its snapshot.
    Only modules already imported hold state; none is imported for this."""
    rnd = sys.modules.get("random")
    if rnd is not None:
        rnd.seed()
    tmp = sys.modules.get("tempfile")
    if tmp is not None:
        tmp._name_sequence = None  # type: ignore[attr-defined]  # rebuilt on next use
