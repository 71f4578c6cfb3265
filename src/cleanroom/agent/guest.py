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

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from cleanroom.agent import imageroot, pid1, sysops
from cleanroom.agent.channel import channel_spec_from_cmdline, open_channel
from cleanroom.agent.errors import AgentError
from cleanroom.agent.session import EXIT_OK, EXIT_PROTOCOL, Session, log

__all__ = ["EXIT_OK", "EXIT_PROTOCOL", "EXIT_SETUP", "Session", "main", "serve"]

EXIT_SETUP = 4


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
