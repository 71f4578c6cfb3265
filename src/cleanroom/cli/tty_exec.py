"""``cleanroom exec -it``: the command on a pseudo-terminal in the guest, driven from this one.

The host terminal goes into raw mode for the run (every key, Ctrl-C
included, is typed into the guest's terminal, whose line discipline turns
Ctrl-C into SIGINT for its foreground process group), SIGWINCH is forwarded
as a resize, and the terminal's settings are restored however the run ends.
The process exits with the command's exit status.
"""

# ruff: noqa: PLC0415 -- heavy modules load when the command runs

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from cleanroom.errors import InvalidRequest

if TYPE_CHECKING:
    from cleanroom.client import Client
    from cleanroom.client._tty import TerminalSession
    from cleanroom.models import RunResult

__all__ = ["run_on_terminal"]


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pump_keys(fd: int, session: TerminalSession) -> None:
    """Keystrokes into the session until end of input (then EOF)."""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            session.eof()
            return
        session.send(data)


def run_on_terminal(
    client: Client,
    args: argparse.Namespace,
    argv: list[str],
    env: Mapping[str, str] | None,
    common: dict[str, Any],
) -> tuple[int, RunResult | None]:
    """Run ``argv`` on a terminal mirroring this one; (exit status, result)."""
    from cleanroom.client._tty import TerminalExit

    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        raise InvalidRequest("-t needs a terminal on standard input (the input is not a tty)")
    size = os.get_terminal_size(fd)
    session = client.exec_tty(
        args.cwd,
        argv,
        rows=size.lines,
        cols=size.columns,
        backend=common["backend"],
        options=common["options"],
        timeout=common["timeout"],
        env=env,
        artifacts=common["artifacts"],
    )

    def on_winch(_signum: int, _frame: object) -> None:
        now = os.get_terminal_size(fd)
        session.resize(now.lines, now.columns)

    result = None
    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        with session, _raw(fd):
            threading.Thread(target=_pump_keys, args=(fd, session), daemon=True).start()
            out = sys.stdout.fileno()
            for event in session.events():
                if isinstance(event, TerminalExit):
                    result = event.result
                    break
                view = memoryview(event.data)
                while view:
                    view = view[os.write(out, view) :]
    finally:
        signal.signal(signal.SIGWINCH, previous)
    if result is None:
        return 70, None
    return result.exit_code, result
