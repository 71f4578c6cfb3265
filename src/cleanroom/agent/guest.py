"""The guest agent: ``python3 -m cleanroom.agent.guest [--channel SPEC] [--workspace DIR]``.

Stdlib only, and nothing from ``cleanroom`` outside ``cleanroom.agent``: the
image copies exactly this package into the guest.

As PID 1 (inside the VM after ``switch_root``) it is also the VM's init
(:mod:`cleanroom.agent.pid1`): the session is served by a forked child.

With ``cleanroom.image=1`` on the kernel command line, init first builds the
command root of the user image (:mod:`cleanroom.agent.imageroot`): commands
then run chrooted into it, as its user, and the workspace is its
``/workspace``. If that fails, the session still answers, but every workspace
and exec request gets ERROR ``image_failed`` (nothing runs in the wrong root).

Anywhere else (tests on the host) it serves one session and exits. It then
changes nothing system-wide: entropy is mixed in uncredited, and read-only
workspaces (bind mounts) and network settings are applied only when the agent
runs as root in a mount namespace of its own (``unshare -m ...``: not
shared with its parent process).

Session rules: the host's HELLO comes first; malformed, oversized, unknown or
out-of-place frames get an ERROR ``protocol_error`` and end the session (exit
status 3); a failed operation (configure, workspace) gets an ERROR with its
code and the session goes on; STDIN/SIGNAL/RESIZE frames that arrive when no
command runs (RESIZE: no command on a terminal) are ignored (they can cross an
EXIT in flight); EXEC while a command runs gets ERROR ``busy``. End of stream
or SHUTDOWN ends the session (0).

Exit statuses: 0 session over, 2 bad arguments, 3 protocol error, 4 no channel.
"""

# raw system files (/proc, /dev); os-level calls mirror the syscalls
# ruff: noqa: PTH103, PTH115, PTH118
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Sequence

from cleanroom.agent import imageroot, pid1, sysops
from cleanroom.agent.changes import Manifest, compare, record_manifest
from cleanroom.agent.channel import Channel, channel_spec_from_cmdline, open_channel
from cleanroom.agent.command import RunningCommand
from cleanroom.agent.errors import (
    AgentDisconnected,
    AgentError,
    AgentProtocolError,
    GuestOperationFailed,
)
from cleanroom.agent.filemessages import (
    FilesDone,
    parse_artifacts,
    parse_changes,
)
from cleanroom.agent.files import match_artifacts, send_files
from cleanroom.agent.messages import (
    ErrorMessage,
    GuestInfo,
    WorkspaceStats,
    parse_configure,
    parse_exec,
    parse_host_hello,
    parse_resize,
    parse_signal,
    parse_workspace_begin,
)
from cleanroom.agent.protocol import (
    AGENT_VERSION,
    ERR_BUSY,
    ERR_CHANGES,
    ERR_CONFIGURE,
    ERR_IMAGE,
    ERR_INTERNAL,
    ERR_PROTOCOL,
    ERR_VERSION,
    ERR_WORKSPACE,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from cleanroom.agent.tty import TtyCommand
from cleanroom.agent.workspace import WorkspaceReceiver

__all__ = ["EXIT_OK", "EXIT_PROTOCOL", "EXIT_SETUP", "Session", "main", "serve"]

EXIT_OK = 0
EXIT_PROTOCOL = 3
EXIT_SETUP = 4
_EOF_POLL = 0.02
_SCRATCH_NAME = ".cleanroom-scratch"
_SKIP = frozenset({_SCRATCH_NAME})


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
        self._restorable = (
            init_mode and root is None and sysops.snapshot_mode_requested(sysops.read_cmdline())
        )
        """Booted to be snapshotted: each configure reseeds the CRNG, and the first
        mounts the workspace disk (see ``sysops.SNAPSHOT_CMDLINE_FLAG``)."""
        self._greeted = False
        self._receiver: WorkspaceReceiver | None = None
        self._ro_bound = False
        self._command: RunningCommand | TtyCommand | None = None
        self._receiver_read_only = False
        self._scratch = False
        if init_mode:
            # Commands default to cwd /workspace, also before any workspace arrives.
            with contextlib.suppress(OSError):
                os.makedirs(workspace, exist_ok=True)
        self._refused: GuestOperationFailed | None = None
        self._manifest: Manifest | None = None
        """What the workspace held when copied in (None: no workspace, or read-only)."""
        self._manifest_taken = False

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
        if self._receiver is not None:
            self._receiver.abort()
            self._receiver = None
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
        elif self._receiver is not None or self._refused is not None:
            if t is FrameType.WORKSPACE_CHUNK:
                if self._receiver is not None:
                    self._receiver.feed(frame.payload)
            elif t is FrameType.WORKSPACE_END:
                self._workspace_end()
            elif t is FrameType.WORKSPACE_ABORT:
                self._workspace_abort()
            else:
                raise AgentProtocolError(f"{t.name} during a workspace transfer")
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
            self._workspace_begin(frame.payload)
        elif t is FrameType.BASELINE:
            self._baseline()
        elif t is FrameType.CHANGES:
            self._changes(frame.payload)
        elif t is FrameType.ARTIFACTS:
            self._artifacts(frame.payload)
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

    def _workspace_begin(self, payload: bytes) -> None:
        begin = parse_workspace_begin(payload)
        try:
            self._idle_or_fail("workspace")
            if begin.scratch:
                receiver = self._scratch_receiver(begin.read_only)
            else:
                acct = None if self._root is None else self._root.account
                receiver = WorkspaceReceiver(
                    self._workspace,
                    read_only=begin.read_only,
                    can_mount=self._privileged,
                    unbind_first=self._ro_bound,
                    owner=None if acct is None else (acct.uid, acct.gid),
                )
        except GuestOperationFailed as exc:
            # The host sends its chunks regardless: swallow them, answer at the end.
            self._refused = exc
            return
        self._scratch = begin.scratch
        if not begin.scratch:
            self._ro_bound = False
            self._receiver_read_only = begin.read_only
        self._receiver = receiver

    def _scratch_receiver(self, read_only: bool) -> WorkspaceReceiver:
        # On the workspace's own filesystem, so a warm-up exercises the same
        # code paths (in the emulator and the kernel) as the real transfer.
        if read_only or self._ro_bound:
            raise GuestOperationFailed(
                ERR_WORKSPACE, "a scratch transfer needs a writable workspace"
            )
        dest = self._scratch_dir()
        if os.path.lexists(dest):
            raise GuestOperationFailed(ERR_WORKSPACE, f"{dest} exists")
        return WorkspaceReceiver(dest, read_only=False, can_mount=self._privileged)

    def _scratch_dir(self) -> str:
        return os.path.join(self._workspace, _SCRATCH_NAME)

    def _workspace_end(self) -> None:
        receiver, refused = self._receiver, self._refused
        self._receiver = self._refused = None
        if refused is not None:
            raise refused
        assert receiver is not None
        try:
            stats = receiver.finish()
        finally:
            if self._scratch:
                shutil.rmtree(self._scratch_dir(), ignore_errors=True)
        if not self._scratch:
            self._ro_bound = self._receiver_read_only
            # A read-only workspace cannot change: it reports nothing (no manifest needed).
            self._manifest = None
            if not self._ro_bound:
                self._manifest = record_manifest(self._workspace, receiver.hashes, _SKIP)
            self._manifest_taken = True
        self._ch.send(stats.to_frame())

    def _workspace_abort(self) -> None:
        receiver = self._receiver
        self._receiver = self._refused = None
        if receiver is not None:
            receiver.cancel()
        if self._scratch:
            shutil.rmtree(self._scratch_dir(), ignore_errors=True)
        raise GuestOperationFailed(ERR_WORKSPACE, "transfer aborted by the host")

    def _baseline(self) -> None:
        """Record the workspace as it is now (a disk the host seeded) as the manifest."""
        self._idle_or_fail("baseline")
        self._manifest = None
        if not self._ro_bound:
            try:
                self._manifest = record_manifest(self._workspace, None, _SKIP)
            except OSError as exc:
                raise GuestOperationFailed(ERR_CHANGES, f"manifest: {exc}") from exc
        self._manifest_taken = True
        entries = () if self._manifest is None else self._manifest.entries.values()
        files = [e for e in entries if e.type == "file"]
        stats = WorkspaceStats(files=len(files), bytes=sum(e.size for e in files), skipped=0)
        self._ch.send(stats.to_frame())

    def _changes(self, payload: bytes) -> None:
        req = parse_changes(payload)
        self._idle_or_fail("changes")
        if not self._manifest_taken:
            raise GuestOperationFailed(ERR_CHANGES, "no workspace manifest was recorded")
        if self._manifest is None:  # read-only
            self._ch.send(FilesDone(0, 0).to_frame())
            return
        try:
            changes = compare(self._workspace, self._manifest, _SKIP)
        except OSError as exc:
            raise GuestOperationFailed(ERR_CHANGES, f"workspace walk: {exc}") from exc
        self._ch.send(send_files(self._ch.send, self._workspace, changes, req.limits).to_frame())

    def _artifacts(self, payload: bytes) -> None:
        req = parse_artifacts(payload)
        self._idle_or_fail("artifacts")
        try:
            found = match_artifacts(self._workspace, req.patterns)
        except OSError as exc:
            raise GuestOperationFailed(ERR_CHANGES, f"workspace walk: {exc}") from exc
        self._ch.send(send_files(self._ch.send, self._workspace, found, req.limits).to_frame())

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


USAGE = "usage: python3 -m cleanroom.agent.guest [--channel SPEC] [--workspace DIR]"


class _Args:
    """Command line options (parsed by hand: argparse costs a cold start ~50 ms)."""

    def __init__(self) -> None:
        self.channel: str | None = None
        self.workspace = "/workspace"


def _parse_args(argv: Sequence[str]) -> _Args:
    """``--channel SPEC`` and ``--workspace DIR`` (also as ``--opt=value``); else ValueError."""
    args = _Args()
    items = list(argv)
    while items:
        opt, eq, value = items.pop(0).partition("=")
        if opt not in ("--channel", "--workspace"):
            raise ValueError(f"unknown argument {opt!r}")
        if not eq:
            if not items:
                raise ValueError(f"{opt} needs a value")
            value = items.pop(0)
        if opt == "--channel":
            args.channel = value
        else:
            args.workspace = value
    return args


def _channel_spec(arg: str | None) -> str | None:
    return arg or channel_spec_from_cmdline(sysops.read_cmdline())


def serve(
    spec: str | None,
    workspace: str,
    *,
    init_mode: bool,
    root: imageroot.CommandRoot | None = None,
    root_problem: str | None = None,
) -> int:
    """Open the channel and serve one session; the agent's exit status."""
    if spec is None:
        log("no channel: pass --channel or cleanroom.channel= on the kernel command line")
        return EXIT_SETUP
    try:
        channel = open_channel(spec)
    except AgentError as exc:
        log(exc.message)
        return EXIT_SETUP
    return Session(
        channel, workspace, init_mode=init_mode, root=root, root_problem=root_problem
    ).run()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        log(f"{exc}\n{USAGE}")
        return 2
    if os.getpid() == 1:
        return pid1.run_init(
            args.workspace,
            lambda root, problem: serve(
                _channel_spec(args.channel),
                args.workspace,
                init_mode=True,
                root=root,
                root_problem=problem,
            ),
            log,
        )
    return serve(_channel_spec(args.channel), args.workspace, init_mode=False)


if __name__ == "__main__":
    sys.exit(main())
