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

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cleanroom.cli import doctor_cmd, exec_cmd
from cleanroom.cli.exec_cmd import HostOption, result_to_dict, shell_command, stream_run
from cleanroom.cli.output import print_json, report_error
from cleanroom.errors import CleanroomError
from cleanroom.service.types import CleanroomInfo, LaunchOptions

if TYPE_CHECKING:
    from cleanroom.client import Client

__all__ = ["register"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _client(host: str | None) -> Client:
    from cleanroom.client import Client

    return Client(host)


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
    }


def _fail(exc: CleanroomError, *, as_json: bool) -> typer.Exit:
    return typer.Exit(report_error(exc, as_json=as_json))


def _serve(listen: list[str] | None, allow_remote: bool) -> None:
    from cleanroom.config import load_config
    from cleanroom.paths import default_socket_path
    from cleanroom.server import configure_logging, parse_listen, serve_forever
    from cleanroom.service import Service

    urls = listen or [f"unix://{default_socket_path()}"]
    addresses = [parse_listen(url) for url in urls]
    configure_logging()
    service = Service(load_config())
    serve_forever(service, addresses, allow_remote=allow_remote)


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


def register(app: typer.Typer) -> None:
    """Add the server and client commands to ``app``."""
    exec_cmd.register(app)
    doctor_cmd.register(app)

    @app.command(help="Run the cleanroom server (foreground; SIGTERM/Ctrl-C stop it cleanly).")
    def serve(
        listen: Annotated[
            list[str] | None,
            typer.Option(
                "--listen",
                help="unix:///path (default: the per-user socket) or tcp://HOST:PORT. "
                "TCP listens on loopback addresses only unless --allow-remote is given. "
                "Repeat to listen on several addresses.",
            ),
        ] = None,
        allow_remote: Annotated[
            bool,
            typer.Option(
                "--allow-remote",
                help="Allow a non-loopback TCP address. The API has no authentication: "
                "anyone who can reach it can run commands.",
            ),
        ] = False,
    ) -> None:
        try:
            _serve(listen, allow_remote)
        except CleanroomError as exc:
            raise _fail(exc, as_json=False) from exc

    @app.command(help="Launch a cleanroom context from a directory's policy; prints its id.")
    def launch(
        host: HostOption = None,
        cwd: Annotated[Path, typer.Option("-c", "--cwd", help="Repository directory.")] = Path(),
        backend: Annotated[str | None, typer.Option(help="Backend (default: config).")] = None,
        read_only: Annotated[bool, typer.Option("--read-only")] = False,
        as_json: JsonOption = False,
    ) -> None:
        options = LaunchOptions(read_only_workspace=True) if read_only else None
        try:
            with _client(host) as client:
                result = client.launch(cwd, backend=backend, options=options)
        except CleanroomError as exc:
            raise _fail(exc, as_json=as_json) from exc
        if as_json:
            print_json(
                {
                    "cleanroom_id": result.cleanroom_id,
                    "backend": result.backend,
                    "policy_source": str(result.policy_source),
                    "policy_hash": result.policy_hash,
                    "run_dir_root": str(result.run_dir_root),
                }
            )
        else:
            sys.stdout.write(result.cleanroom_id + "\n")

    @app.command(
        "run",
        help="Run a command in a launched context (streams output; exits with its code). "
        "Put the command after --.",
    )
    def run_(
        cleanroom_id: Annotated[str, typer.Argument(help="The context id from `launch`.")],
        command: Annotated[list[str], typer.Argument(help="The command (after --).")],
        host: HostOption = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the result object instead of streaming.")
        ] = False,
    ) -> None:
        argv = shell_command(command)
        try:
            with _client(host) as client:
                if as_json:
                    result = client.run(cleanroom_id, argv)
                    print_json(result_to_dict(result))
                    raise typer.Exit(result.exit_code)
                raise typer.Exit(stream_run(client.run_stream(cleanroom_id, argv)))
        except CleanroomError as exc:
            raise _fail(exc, as_json=as_json) from exc

    @app.command(help="Terminate a context (cancels its runs). Idempotent.")
    def terminate(
        cleanroom_id: Annotated[str, typer.Argument(help="The context id.")],
        host: HostOption = None,
        as_json: JsonOption = False,
    ) -> None:
        try:
            with _client(host) as client:
                client.terminate(cleanroom_id)
        except CleanroomError as exc:
            raise _fail(exc, as_json=as_json) from exc
        if as_json:
            print_json({"terminated": True})

    @app.command("ls", help="List the live contexts.")
    def ls(host: HostOption = None, as_json: JsonOption = False) -> None:
        try:
            with _client(host) as client:
                infos = client.list_cleanrooms()
        except CleanroomError as exc:
            raise _fail(exc, as_json=as_json) from exc
        if as_json:
            print_json({"cleanrooms": [_info_to_dict(i) for i in infos]})
            return
        for info in infos:
            sys.stdout.write(
                f"{info.cleanroom_id}\t{info.backend}\t{len(info.runs)} runs\t"
                f"{info.created_at}\t{info.cwd}\n"
            )

    @app.command(help="Show a run's record: every timing and field.")
    def status(
        run_id: Annotated[str, typer.Option("--run-id", help="The run id.")],
        host: HostOption = None,
        as_json: JsonOption = False,
    ) -> None:
        try:
            with _client(host) as client:
                record = client.run_record(run_id)
        except CleanroomError as exc:
            raise _fail(exc, as_json=as_json) from exc
        if as_json:
            print_json(record)
        else:
            _status_table(record)
