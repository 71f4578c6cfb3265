"""Running the command line in-process, for tests (like a CLI framework's test runner)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from cleanroom.cli.app import run

__all__ = ["Invocation", "invoke"]


@dataclass(frozen=True)
class Invocation:
    """One in-process run of ``cleanroom ARGS``: its exit status and text output."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, for assertion messages."""
        return self.stdout + self.stderr


def invoke(args: Sequence[str]) -> Invocation:
    """Run ``cleanroom ARGS`` in this process with ``sys.stdout``/``sys.stderr`` captured.

    argparse's exits (``--help``, ``--version``, usage errors) become exit codes.
    Commands that write bytes to ``sys.stdout.buffer`` (streamed runs) need a
    real process instead.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return Invocation(code, out.getvalue(), err.getvalue())
