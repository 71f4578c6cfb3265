"""Running ``ip`` and ``nft`` as asyncio subprocesses, with errors translated.

Every failure (the tool missing, a non-zero exit) becomes
:class:`~cleanroom.errors.NetworkSetupFailed` carrying the argv, exit status
and stderr in ``details``, so callers never see ``OSError`` from here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cleanroom.errors import NetworkSetupFailed

__all__ = ["CommandResult", "in_netns", "run_command"]


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and how it exited."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` wrapped to run inside ``netns`` (unchanged for None: the current namespace)."""
    if netns is None:
        return argv
    return ["ip", "netns", "exec", netns, *argv]


async def run_command(
    argv: list[str], *, stdin: str | None = None, check: bool = True
) -> CommandResult:
    """Run ``argv`` to completion and return its output.

    With ``check`` (the default) a non-zero exit raises ``NetworkSetupFailed``;
    without it the caller inspects ``returncode`` (used by cleanup, which must
    carry on past individual failures).
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise NetworkSetupFailed(f"cannot run {argv[0]}: {exc}", details={"argv": argv}) from exc
    try:
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except asyncio.CancelledError:
        # A cancelled caller must not leave a half-run ip/nft behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    result = CommandResult(
        tuple(argv),
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise NetworkSetupFailed(
            f"{' '.join(argv[:6])} failed (exit {result.returncode}): {result.stderr.strip()}",
            details={"argv": argv, "returncode": result.returncode, "stderr": result.stderr},
        )
    return result
