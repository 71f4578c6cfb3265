"""``cleanroom exec``: launch, run one command, terminate, with output streamed live.

One argument after ``--`` runs under ``sh -lc ARG``; several run as argv. The
process exits with the command's exit code. On the default local socket a
server is started on demand (after making sure the guest image exists).
First Ctrl-C cancels the run (the stream is closed, so the server cancels it)
and waits for the server to clean up; a second Ctrl-C stops waiting.

Import cost matters here: this module loads only the standard library and,
when run, the client; never fastapi, uvicorn, rich or the image builder.
"""

# Heavy modules (the client, the image builder) are imported inside the
# functions that use them, to keep every CLI command's start-up fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cleanroom.cli.launch_image import add_launch_arguments, launch_options, prepare_launch_image
from cleanroom.cli.options import (
    Subcommands,
    add_command,
    add_host,
    add_json,
    connection,
)
from cleanroom.cli.output import print_json, report_error
from cleanroom.cli.runio import add_run_inputs, add_run_outputs, after_run, read_env, read_stdin
from cleanroom.errors import CleanroomError
from cleanroom.models import to_dict
from cleanroom.paths import state_dir
from cleanroom.service.types import (
    RunEvent,
    RunExit,
    RunOutput,
    RunResult,
    RunStarted,
)

if TYPE_CHECKING:
    from cleanroom.client import Client, Endpoint

__all__ = [
    "command_argv",
    "register",
    "result_to_dict",
    "shell_command",
    "stream_result",
    "stream_run",
]

_CANCEL_WAIT_SECONDS = 30.0


def shell_command(args: list[str]) -> list[str]:
    """One argument runs under ``sh -lc``; several are an argv."""
    return ["sh", "-lc", args[0]] if len(args) == 1 else list(args)


def result_to_dict(result: RunResult) -> dict[str, Any]:
    """The API's run result object."""
    return {
        "run_id": result.run_id,
        "cleanroom_id": result.cleanroom_id,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "run_dir": str(result.run_dir),
        "plan_path": str(result.plan_path),
        "signal": result.signal,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "changes": None if result.changes is None else to_dict(result.changes),
        "artifacts": [to_dict(a) for a in result.artifacts],
        "artifacts_caps_hit": list(result.artifacts_caps_hit),
        "isolation": result.isolation,
    }


def _say(message: str) -> None:
    sys.stderr.write(f"cleanroom: {message}\n")
    sys.stderr.flush()


def _report(exc: CleanroomError, run_id: str | None) -> int:
    code = report_error(exc)
    run_id = run_id or exc.details.get("run_id")
    if isinstance(run_id, str):
        sys.stderr.write(f"run id: {run_id} (details: cleanroom status --run-id {run_id})\n")
    return code


def stream_run(
    events: Iterator[RunEvent], *, wait_cancelled: Callable[[str], bool] | None = None
) -> int:
    """Copy a streamed run to this terminal (bytes as produced); the exit status.

    On Ctrl-C the stream is closed (the server cancels the run); then, if given,
    ``wait_cancelled(cleanroom_id)`` is polled until it is true, a second
    Ctrl-C, or a time limit.
    """
    return stream_result(events, wait_cancelled=wait_cancelled)[0]


def stream_result(
    events: Iterator[RunEvent], *, wait_cancelled: Callable[[str], bool] | None = None
) -> tuple[int, RunResult | None]:
    """Like :func:`stream_run`; also the run's result (None when it did not finish)."""
    run_id: str | None = None
    cleanroom_id: str | None = None
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        for event in events:
            if isinstance(event, RunOutput):
                target = out if event.stream == "stdout" else err
                target.write(event.data)
                target.flush()
            elif isinstance(event, RunStarted):
                run_id, cleanroom_id = event.run_id, event.cleanroom_id
            elif isinstance(event, RunExit):
                return event.result.exit_code, event.result
    except CleanroomError as exc:
        return _report(exc, run_id), None
    except KeyboardInterrupt:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # drops the connection: the server cancels the run
        _say(f"cancelling run {run_id or '(not started yet)'} (Ctrl-C again to stop waiting)")
        if wait_cancelled is not None and cleanroom_id is not None:
            _wait(lambda: wait_cancelled(cleanroom_id))
        return 130, None
    _say("the stream ended without a result")
    return 70, None


def _wait(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                if done():
                    _say("cancelled")
                    return
            except CleanroomError:
                return
            time.sleep(0.2)
        _say("the server is still cleaning up; not waiting any longer")
    except KeyboardInterrupt:
        _say("detached; the server finishes cleaning up on its own")


def _context_gone(client: Client) -> Callable[[str], bool]:
    def gone(cleanroom_id: str) -> bool:
        return all(c.cleanroom_id != cleanroom_id for c in client.list_cleanrooms())

    return gone


def _prepare_local(endpoint: Endpoint) -> None:
    """Start a local server if none answers, building the guest image first."""
    from cleanroom.cli.autostart import ensure_local_server, server_answers

    if server_answers(endpoint):
        return
    _ensure_image()
    if ensure_local_server(endpoint, log_path=state_dir() / "server.log") is not None:
        _say(f"started a server on {endpoint.url} (log: {state_dir() / 'server.log'})")


def _ensure_image() -> None:
    from cleanroom.images import PlainProgress, RichProgress, ensure_image

    if sys.stderr.isatty():
        with RichProgress() as progress:
            ensure_image(progress=progress)
    else:
        ensure_image(progress=PlainProgress(sys.stderr))


def command_argv(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """The command after ``--`` (or after the options), as it will run; a usage error if empty."""
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        parser.error("missing the command to run (put it after --)")
    return shell_command(args)


def _exec(args: argparse.Namespace) -> int:
    from cleanroom.client import Client, resolve_endpoint

    endpoint = resolve_endpoint(args.host)
    argv = command_argv(args.parser, args.command)
    if args.read_only and args.apply:
        args.parser.error("--apply needs a writable workspace (not --read-only)")
    if args.tty and args.as_json:
        args.parser.error("-t and --json do not go together")
    if args.out is not None and not args.artifact:
        args.parser.error("--out needs --artifact GLOB")
    if args.apply and endpoint.uds is None:
        args.parser.error(
            "--apply needs a server on this machine's unix socket; with a remote server, "
            "use --diff FILE and apply it with git apply"
        )
    options = launch_options(args.read_only, args.image, args.expect_policy_hash)
    try:
        env = read_env(args.env, args.env_file)
        stdin = None if args.tty else read_stdin(args.interactive)
        if endpoint.is_default and not args.no_autostart:
            _prepare_local(endpoint)
        if endpoint.is_default:
            prepare_launch_image(args.cwd, args.image, args.expect_policy_hash)
        with Client(endpoint.url, **connection(args)) as client:
            common: dict[str, Any] = {
                "backend": args.backend,
                "options": options,
                "timeout": args.timeout,
                "env": env,
                "stdin": stdin,
                "artifacts": args.artifact or None,
            }
            if args.tty:
                from cleanroom.cli.tty_exec import run_on_terminal

                code, finished = run_on_terminal(client, args, argv, env, common)
                if finished is None:
                    return code
                result = finished
            elif args.as_json:
                result = client.exec(args.cwd, argv, **common)
                print_json(result_to_dict(result))
                code = result.exit_code
            else:
                events = client.exec_stream(args.cwd, argv, **common)
                code, finished = stream_result(events, wait_cancelled=_context_gone(client))
                if finished is None:
                    return code
                result = finished
            failed = after_run(client, result, args)
            return failed or code
    except CleanroomError as exc:
        return report_error(exc, as_json=args.as_json)


def register(commands: Subcommands) -> None:
    """Add ``exec``."""
    parser = add_command(
        commands,
        "exec",
        _exec,
        "Run one command in a fresh cleanroom (launch, run, terminate) and exit with "
        "its exit code. One argument after -- runs under `sh -lc`; several run as argv.",
    )
    add_host(parser)
    add_launch_arguments(parser, "Repository directory (holds the policy).")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="Kill the command after this many seconds (exit 124, run_timeout).",
    )
    add_run_inputs(parser)
    add_run_outputs(parser)
    add_json(parser, "Print the result object instead of streaming.")
    parser.add_argument("--no-autostart", action="store_true", help="Do not start a local server.")
    # REMAINDER: everything from the first non-option on is the command, so
    # its own options (`exec ls -l`) are never taken for ours.
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The command (after --).")
    parser.set_defaults(parser=parser)
