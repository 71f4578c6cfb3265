"""The workspace side of one agent session: copy-in transfers, the manifest, reports.

Stdlib only: this module runs inside the guest. A :class:`SessionWorkspace`
receives the host's workspace transfers (the real one, or a scratch warm-up
removed again at its end), records the manifest of what arrived, and answers
BASELINE, CHANGES and ARTIFACTS against it. A refused transfer swallows the
host's chunks and answers with the refusal at its end.
"""

# os-level calls mirror the syscalls
# ruff: noqa: PTH118
from __future__ import annotations

import contextlib
import os
import shutil

from cleanroom.agent import imageroot
from cleanroom.agent.changes import Manifest, compare, record_manifest
from cleanroom.agent.errors import AgentProtocolError, GuestOperationFailed
from cleanroom.agent.filemessages import FilesDone, parse_artifacts, parse_changes
from cleanroom.agent.files import match_artifacts, send_files
from cleanroom.agent.messages import WorkspaceStats, parse_workspace_begin
from cleanroom.agent.protocol import ERR_CHANGES, ERR_WORKSPACE, Frame, FrameType
from cleanroom.agent.workspace import WorkspaceReceiver

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["SCRATCH_NAME", "SessionWorkspace"]

SCRATCH_NAME = ".cleanroom-scratch"
_SKIP = frozenset({SCRATCH_NAME})


class SessionWorkspace:
    """The workspace of one session at ``path`` (the agent's own view of it).

    ``send`` writes a frame to the host; ``check_idle(what)`` raises
    :class:`GuestOperationFailed` when no ``what`` may start now (a command
    runs, or the user image is unusable).
    """

    def __init__(
        self,
        path: str,
        send: Callable[[bytes], None],
        check_idle: Callable[[str], None],
        *,
        privileged: bool,
        root: imageroot.CommandRoot | None,
    ) -> None:
        self._path = path
        self._send = send
        self._check_idle = check_idle
        self._privileged = privileged
        self._root = root
        self._receiver: WorkspaceReceiver | None = None
        self._refused: GuestOperationFailed | None = None
        self._scratch = False
        self._ro_bound = False
        self._receiver_read_only = False
        self._manifest: Manifest | None = None
        """What the workspace held when copied in (None: no workspace, or read-only)."""
        self._manifest_taken = False

    @property
    def transferring(self) -> bool:
        """Whether a transfer is under way (only its frames are allowed now)."""
        return self._receiver is not None or self._refused is not None

    def transfer_frame(self, frame: Frame) -> None:
        """Handle a frame during a transfer: a chunk, the end or an abort."""
        t = frame.type
        if t is FrameType.WORKSPACE_CHUNK:
            if self._receiver is not None:
                self._receiver.feed(frame.payload)
        elif t is FrameType.WORKSPACE_END:
            self._end()
        elif t is FrameType.WORKSPACE_ABORT:
            self._abort()
        else:
            raise AgentProtocolError(f"{t.name} during a workspace transfer")

    def close(self) -> None:
        """Abort a transfer under way (the session is ending)."""
        if self._receiver is not None:
            self._receiver.abort()
            self._receiver = None

    def begin(self, payload: bytes) -> None:
        """WORKSPACE_BEGIN: start receiving (or refusing) a transfer."""
        begin = parse_workspace_begin(payload)
        try:
            self._check_idle("workspace")
            if begin.scratch:
                receiver = self._scratch_receiver(begin.read_only)
            else:
                acct = None if self._root is None else self._root.account
                receiver = WorkspaceReceiver(
                    self._path,
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
        return os.path.join(self._path, SCRATCH_NAME)

    def _end(self) -> None:
        receiver, refused = self._receiver, self._refused
        self._receiver = self._refused = None
        if refused is not None:
            raise refused
        assert receiver is not None
        try:
            stats = receiver.finish()
            if self._scratch:
                # A warm-up also walks the manifest and compare paths a run's
                # CHANGES takes (under emulation their first pass is ~4x later ones).
                dest = self._scratch_dir()
                with contextlib.suppress(OSError):
                    compare(dest, record_manifest(dest, receiver.hashes))
        finally:
            if self._scratch:
                shutil.rmtree(self._scratch_dir(), ignore_errors=True)
        if not self._scratch:
            self._ro_bound = self._receiver_read_only
            # A read-only workspace cannot change: it reports nothing (no manifest needed).
            self._manifest = None
            if not self._ro_bound:
                self._manifest = record_manifest(self._path, receiver.hashes, _SKIP)
            self._manifest_taken = True
        self._send(stats.to_frame())

    def _abort(self) -> None:
        receiver = self._receiver
        self._receiver = self._refused = None
        if receiver is not None:
            receiver.cancel()
        if self._scratch:
            shutil.rmtree(self._scratch_dir(), ignore_errors=True)
        raise GuestOperationFailed(ERR_WORKSPACE, "transfer aborted by the host")

    def baseline(self) -> None:
        """BASELINE: record the workspace as it is now (a disk the host seeded) as the manifest."""
        self._check_idle("baseline")
        self._manifest = None
        if not self._ro_bound:
            try:
                self._manifest = record_manifest(self._path, None, _SKIP)
            except OSError as exc:
                raise GuestOperationFailed(ERR_CHANGES, f"manifest: {exc}") from exc
        self._manifest_taken = True
        entries = () if self._manifest is None else self._manifest.entries.values()
        files = [e for e in entries if e.type == "file"]
        stats = WorkspaceStats(files=len(files), bytes=sum(e.size for e in files), skipped=0)
        self._send(stats.to_frame())

    def changes(self, payload: bytes) -> None:
        """CHANGES: send what changed since the manifest."""
        req = parse_changes(payload)
        self._check_idle("changes")
        if not self._manifest_taken:
            raise GuestOperationFailed(ERR_CHANGES, "no workspace manifest was recorded")
        if self._manifest is None:  # read-only
            self._send(FilesDone(0, 0).to_frame())
            return
        try:
            changes = compare(self._path, self._manifest, _SKIP)
        except OSError as exc:
            raise GuestOperationFailed(ERR_CHANGES, f"workspace walk: {exc}") from exc
        self._send(send_files(self._send, self._path, changes, req.limits).to_frame())

    def artifacts(self, payload: bytes) -> None:
        """ARTIFACTS: send the files matching the host's patterns."""
        req = parse_artifacts(payload)
        self._check_idle("artifacts")
        try:
            found = match_artifacts(self._path, req.patterns)
        except OSError as exc:
            raise GuestOperationFailed(ERR_CHANGES, f"workspace walk: {exc}") from exc
        self._send(send_files(self._send, self._path, found, req.limits).to_frame())
