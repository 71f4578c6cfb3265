"""Commands that run or talk to the server: serve, exec, launch, run, terminate, ls, status, doctor.

Every command except ``serve`` is a thin layer over :mod:`cleanroom.client`;
``exec`` and ``doctor`` live in their own modules. Server address: ``--host``
> ``$CLEANROOM_HOST`` > the default local socket. Errors print
``error[code]: message`` (or the error body with ``--json``) and exit with the
error's documented status.
"""

# Heavy modules (client/httpx, server/fastapi/uvicorn, rich) are imported inside
# the commands that use them, to keep every CLI command's start-up fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cleanroom.cli.exec_cmd import command_argv, result_to_dict, stream_run
from cleanroom.cli.launch_image import add_launch_arguments, launch_options, prepare_launch_image
from cleanroom.cli.options import (
    Subcommands,
    add_command,
    add_host,
    add_json,
    connection,
)
from cleanroom.cli.output import print_json
from cleanroom.cli.runio import add_run_inputs, read_env, read_stdin
from cleanroom.models import to_dict
from cleanroom.service.types import CleanroomInfo

if TYPE_CHECKING:
    from cleanroom.client import Client

__all__ = ["register"]


def _client(args: argparse.Namespace) -> Client:
    from cleanroom.client import Client

    return Client(args.host, **connection(args))


def _info_to_dict(info: CleanroomInfo) -> dict[str, Any]:
    return {
        "cleanroom_id": info.cleanroom_id,
        "backend": info.backend,
        "cwd": str(info.cwd),
        "policy_source": str(info.policy_source),
        "policy_hash": info.policy_hash,
        "run_dir_root": str(info.run_dir_root),
        "read_only_workspace": info.read_only_workspace,
        "created_at": info.created_at,
        "runs": list(info.runs),
        "image": None if info.image is None else to_dict(info.image),
        "resources": None if info.resources is None else to_dict(info.resources),
        "isolation": info.isolation,
    }


def _serve(args: argparse.Namespace) -> None:
    from cleanroom.config import load_config
    from cleanroom.errors import InvalidRequest
    from cleanroom.paths import default_socket_path
    from cleanroom.server import (
        ServeSecurity,
        TlsFiles,
        configure_logging,
        load_tls,
        needs_tls,
        parse_listen,
        self_signed,
        serve_forever,
    )
    from cleanroom.service import Service

    urls = args.listen or [f"unix://{default_socket_path()}"]
    addresses = [parse_listen(url) for url in urls]
    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidRequest("--tls-cert and --tls-key go together")
    on_loopback = bool(args.tls) or args.tls_cert is not None
    tls: TlsFiles | None = None
    if args.tls_cert is not None:
        tls = load_tls(args.tls_cert, args.tls_key)
    elif needs_tls(addresses, on_loopback):
        tls = self_signed(hosts=[a.host for a in addresses if a.host is not None])
    if tls is not None:
        kind = "self-signed " if tls.self_signed else ""
        sys.stderr.write(
            f"cleanroom: TLS {kind}certificate {tls.cert}\n"
            f"cleanroom: TLS certificate fingerprint {tls.fingerprint}\n"
        )
    security = ServeSecurity(tls=tls, tls_on_loopback=on_loopback)
    if any(a.scheme == "tcp" for a in addresses) and not security.tokens.records():
        sys.stderr.write(
            "cleanroom: no API tokens yet: TCP requests are refused until "
            "`cleanroom token create NAME` makes one\n"
        )
    configure_logging()
    service = Service(load_config())
    serve_forever(service, addresses, allow_remote=args.allow_remote, security=security)


def _status_table(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    timings = Table(title=f"run {record.get('run_id', '?')}: timings", title_justify="left")
    timings.add_column("phase")
    timings.add_column("ms", justify="right")
    fields = Table(title="fields", title_justify="left", show_header=False)
    fields.add_column("field")
    fields.add_column("value", overflow="fold")
    for key, value in record.items():
        if key.endswith("_ms"):
            if value is None:
                shown = "-"  # the run ended before this step
            elif isinstance(value, int | float):
                shown = f"{value:,.1f}"
            else:
                shown = str(value)
            timings.add_row(key.removesuffix("_ms"), shown)
        else:
            fields.add_row(key, value if isinstance(value, str) else _compact(value))
    console = Console()
    if timings.row_count:
        console.print(timings)
    console.print(fields)


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _serve_cmd(args: argparse.Namespace) -> int:
    _serve(args)
    return 0


def _launch(args: argparse.Namespace) -> int:
    from cleanroom.client import resolve_endpoint

    options = launch_options(args.read_only, args.image, args.expect_policy_hash)
    if resolve_endpoint(args.host).is_default:
        prepare_launch_image(args.cwd, args.image, args.expect_policy_hash)
    with _client(args) as client:
        result = client.launch(args.cwd, backend=args.backend, options=options)
    if args.as_json:
        print_json(to_dict(result))
    else:
        sys.stdout.write(result.cleanroom_id + "\n")
    return 0


def _run(args: argparse.Namespace) -> int:

    argv = command_argv(args.parser, args.command)
    env = read_env(args.env, args.env_file)
    stdin = read_stdin(args.interactive)
    with _client(args) as client:
        if args.as_json:
            result = client.run(args.cleanroom_id, argv, timeout=args.timeout, env=env, stdin=stdin)
            print_json(result_to_dict(result))
            return result.exit_code
        return stream_run(
            client.run_stream(args.cleanroom_id, argv, timeout=args.timeout, env=env, stdin=stdin)
        )


def _terminate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.terminate(args.cleanroom_id)
    if args.as_json:
        print_json({"terminated": True})
    return 0


def _ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        infos = client.list_cleanrooms()
    if args.as_json:
        print_json({"cleanrooms": [_info_to_dict(i) for i in infos]})
        return 0
    for info in infos:
        sys.stdout.write(
            f"{info.cleanroom_id}\t{info.backend}\t{len(info.runs)} runs\t"
            f"{info.created_at}\t{info.cwd}\n"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        record = client.run_record(args.run_id)
    if args.as_json:
        print_json(record)
    else:
        _status_table(record)
    return 0


def register(commands: Subcommands) -> None:
    """Add the server and client commands (``exec`` and ``doctor`` register themselves)."""
    serve = add_command(
        commands,
        "serve",
        _serve_cmd,
        "Run the cleanroom server (foreground; SIGTERM/Ctrl-C stop it cleanly).",
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="unix:///path (default: the per-user socket) or tcp://HOST:PORT. "
        "TCP listens on loopback addresses only unless --allow-remote is given, and "
        "every TCP request needs an API token (`cleanroom token create NAME`). "
        "Repeat to listen on several addresses.",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="Allow a non-loopback TCP address (served over TLS only; callers need a token).",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="PEM certificate chain for TCP listeners (with --tls-key). Without it, a "
        "non-loopback listener gets a self-signed certificate made on first start and "
        "kept in the state directory; its fingerprint is printed for clients to pin.",
    )
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key.")
    serve.add_argument(
        "--tls",
        action="store_true",
        help="Serve loopback TCP listeners over TLS too (non-loopback ones always are).",
    )

    launch = add_command(
        commands,
        "launch",
        _launch,
        "Launch a cleanroom context from a directory's policy; prints its id.",
    )
    add_host(launch)
    add_launch_arguments(launch, "Repository directory.")
    add_json(launch)

    run = add_command(
        commands,
        "run",
        _run,
        "Run a command in a launched context (streams output; exits with its code). "
        "Put the command after --.",
    )
    run.add_argument("cleanroom_id", metavar="CLEANROOM_ID", help="The context id from `launch`.")
    run.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="Kill the command after this many seconds (exit 124, run_timeout).",
    )
    add_run_inputs(run, tty=False)
    run.add_argument("command", nargs="+", help="The command (after --).")
    add_host(run)
    add_json(run, "Print the result object instead of streaming.")
    run.set_defaults(parser=run)

    terminate = add_command(
        commands, "terminate", _terminate, "Terminate a context (cancels its runs). Idempotent."
    )
    terminate.add_argument("cleanroom_id", metavar="CLEANROOM_ID", help="The context id.")
    add_host(terminate)
    add_json(terminate)

    ls = add_command(commands, "ls", _ls, "List the live contexts.")
    add_host(ls)
    add_json(ls)

    status = add_command(
        commands, "status", _status, "Show a run's record: every timing and field."
    )
    status.add_argument("--run-id", required=True, help="The run id.")
    add_host(status)
    add_json(status)
