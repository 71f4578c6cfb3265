"""Test support for the server: an in-process fake service and a server in a thread.

:class:`FakeService` implements :class:`~cleanroom.service.ServiceAPI` faithfully
but runs each command as a plain local subprocess (no guest, no isolation), so
streaming, cancellation and concurrency are exercised for real. It is for tests
only. Its "policy" is ``cleanroom.yaml`` holding ``key: value`` lines; the keys
are ``timeout_seconds`` and ``version`` (ignored); anything else is a
``policy_invalid`` problem.

``python -m cleanroom.server.testing --listen unix:///path`` serves a
FakeService (used to test autostart and signal handling from subprocesses).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cleanroom.errors import (
    BackendUnavailable,
    CleanroomNotFound,
    InvalidRequest,
    PolicyInvalid,
    PolicyNotFound,
    RunCancelled,
    RunNotFound,
    RunTimeout,
)
from cleanroom.server.listen import ListenAddress, bind, parse_listen
from cleanroom.server.runner import CleanroomServer, configure_logging
from cleanroom.service.types import (
    CleanroomInfo,
    DoctorCheck,
    EventSink,
    LaunchOptions,
    RunExit,
    RunOutput,
    RunResult,
    RunStarted,
)

__all__ = ["FakeService", "ServerThread"]

_KNOWN_UNAVAILABLE = ("firecracker", "qemu", "gvisor")
_CAPTURE_LIMIT = 1024 * 1024
_CHUNK = 65536


@dataclass
class _Context:
    info: CleanroomInfo
    timeout: float | None
    tasks: set[asyncio.Task[RunResult]] = field(default_factory=set)


class FakeService:
    """A ServiceAPI whose "guest" is a local subprocess in the context's directory.

    Observable for tests: ``cancelled_runs`` (ids of runs killed by
    cancellation), ``closed``, ``started``.
    """

    def __init__(self, state_root: Path, *, capture_limit: int = _CAPTURE_LIMIT) -> None:
        self._root = state_root
        self._capture_limit = capture_limit
        self._contexts: dict[str, _Context] = {}
        self._terminated: set[str] = set()
        self._records: dict[str, Path] = {}
        self.cancelled_runs: list[str] = []
        self.started = False
        self.closed = False

    async def start(self) -> None:
        """Nothing to reconcile."""
        self.started = True

    async def close(self) -> None:
        """Cancel every run and forget every context."""
        self.closed = True
        for cleanroom_id in list(self._contexts):
            await self.terminate(cleanroom_id)

    async def launch(
        self, cwd: Path, *, backend: str | None = None, options: LaunchOptions | None = None
    ) -> CleanroomInfo:
        """Check the directory, fake policy and backend; create a context."""
        options = options or LaunchOptions()
        name = backend or "fake"
        if name in _KNOWN_UNAVAILABLE:
            raise BackendUnavailable(
                f"backend {name!r} is not available", details={"backend": name}
            )
        if name != "fake":
            raise InvalidRequest(
                f"unknown backend {name!r}", details={"backend": name, "known": ["fake"]}
            )
        policy, text, timeout = _load_policy(cwd)
        cleanroom_id = "cr-" + secrets.token_hex(6)
        info = CleanroomInfo(
            cleanroom_id=cleanroom_id,
            backend=name,
            cwd=cwd,
            policy_source=policy,
            policy_hash="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
            run_dir_root=options.run_dir or self._root / "runs",
            read_only_workspace=bool(options.read_only_workspace),
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        self._contexts[cleanroom_id] = _Context(info, timeout)
        return info

    async def run(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        *,
        on_event: EventSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``command`` as a local subprocess, streaming its output to ``on_event``."""
        ctx = self._contexts.get(cleanroom_id)
        if ctx is None:
            raise CleanroomNotFound(f"no cleanroom {cleanroom_id!r}", details={"id": cleanroom_id})
        if not command:
            raise InvalidRequest("command must not be empty")
        run_id = "run-" + secrets.token_hex(6)
        ctx.info = replace(ctx.info, runs=(*ctx.info.runs, run_id))
        if timeout is not None:
            ctx = replace(ctx, timeout=timeout)
        inner = asyncio.create_task(self._execute(ctx, run_id, list(command), on_event))
        ctx.tasks.add(inner)
        try:
            return await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller was cancelled (client went away)
            raise RunCancelled(
                "the run was cancelled (context terminated)", details={"run_id": run_id}
            ) from None
        finally:
            ctx.tasks.discard(inner)

    async def _execute(
        self, ctx: _Context, run_id: str, command: list[str], on_event: EventSink | None
    ) -> RunResult:
        started = time.monotonic()
        run_dir = ctx.info.run_dir_root / run_id
        run_dir.mkdir(parents=True)
        plan_path = run_dir / "plan.json"
        plan_path.write_text(json.dumps({"command": command, "backend": ctx.info.backend}))
        if on_event is not None:
            await on_event(RunStarted(run_id, ctx.info.cleanroom_id, run_dir))
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                cwd=ctx.info.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"{command[0]}: {exc.strerror}\n".encode()
            if on_event is not None:
                await on_event(RunOutput("stderr", message))
            return await self._finish(
                ctx, command, run_id, run_dir, plan_path, 127, None, b"", message, started, on_event
            )
        captured = {"stdout": bytearray(), "stderr": bytearray()}
        try:
            async with asyncio.timeout(ctx.timeout):
                await asyncio.gather(
                    self._pump(proc.stdout, "stdout", captured, on_event),
                    self._pump(proc.stderr, "stderr", captured, on_event),
                )
                code = await proc.wait()
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise RunTimeout(
                f"the command did not finish within {ctx.timeout} s",
                details={"run_id": run_id, "timeout_seconds": ctx.timeout},
            ) from None
        except asyncio.CancelledError:
            _kill(proc)
            await proc.wait()
            self.cancelled_runs.append(run_id)
            raise
        sig = signal.Signals(-code).name if code < 0 else None
        exit_code = 128 - code if code < 0 else code
        return await self._finish(
            ctx,
            command,
            run_id,
            run_dir,
            plan_path,
            exit_code,
            sig,
            bytes(captured["stdout"]),
            bytes(captured["stderr"]),
            started,
            on_event,
        )

    async def _pump(
        self,
        reader: asyncio.StreamReader | None,
        name: str,
        captured: dict[str, bytearray],
        on_event: EventSink | None,
    ) -> None:
        assert reader is not None
        while chunk := await reader.read(_CHUNK):
            captured[name] += chunk  # truncated to the capture limit in _finish
            if on_event is not None:
                await on_event(RunOutput("stdout" if name == "stdout" else "stderr", chunk))

    async def _finish(
        self,
        ctx: _Context,
        command: list[str],
        run_id: str,
        run_dir: Path,
        plan_path: Path,
        exit_code: int,
        sig: str | None,
        out: bytes,
        err: bytes,
        started: float,
        on_event: EventSink | None,
    ) -> RunResult:
        limit = self._capture_limit
        result = RunResult(
            run_id=run_id,
            cleanroom_id=ctx.info.cleanroom_id,
            exit_code=exit_code,
            stdout=out[:limit].decode("utf-8", "replace"),
            stderr=err[:limit].decode("utf-8", "replace"),
            run_dir=run_dir,
            plan_path=plan_path,
            signal=sig,
            stdout_truncated=len(out) > limit,
            stderr_truncated=len(err) > limit,
        )
        (run_dir / "stdout.log").write_bytes(out)
        (run_dir / "stderr.log").write_bytes(err)
        total_ms = round((time.monotonic() - started) * 1000, 3)
        record = {
            "run_id": run_id,
            "cleanroom_id": ctx.info.cleanroom_id,
            "backend": ctx.info.backend,
            "policy_hash": ctx.info.policy_hash,
            "exit_code": exit_code,
            "command": command,
            "guest_command_runtime_ms": total_ms,
            "total_ms": total_ms,
        }
        self._records[run_id] = _write_record(run_dir, record)
        if on_event is not None:
            await on_event(RunExit(result))
        return result

    async def terminate(self, cleanroom_id: str) -> None:
        """Cancel the context's runs and forget it (idempotent for launched ids)."""
        ctx = self._contexts.pop(cleanroom_id, None)
        if ctx is None:
            if cleanroom_id in self._terminated:
                return
            raise CleanroomNotFound(f"no cleanroom {cleanroom_id!r}", details={"id": cleanroom_id})
        self._terminated.add(cleanroom_id)
        for task in list(ctx.tasks):
            task.cancel()
        for task in list(ctx.tasks):
            with contextlib.suppress(BaseException):
                await task

    async def exec(
        self,
        cwd: Path,
        command: Sequence[str],
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        on_event: EventSink | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """Launch, run once, terminate."""
        info = await self.launch(cwd, backend=backend, options=options)
        try:
            return await self.run(info.cleanroom_id, command, on_event=on_event, timeout=timeout)
        finally:
            with contextlib.suppress(CleanroomNotFound):
                await asyncio.shield(self.terminate(info.cleanroom_id))

    def list_cleanrooms(self) -> list[CleanroomInfo]:
        """Live contexts, oldest first."""
        return [ctx.info for ctx in self._contexts.values()]

    async def run_record(self, run_id: str) -> dict[str, Any]:
        """The stored record of a finished run."""
        path = self._records.get(run_id)
        if path is None:
            raise RunNotFound(f"no run {run_id!r}", details={"run_id": run_id})
        record: dict[str, Any] = json.loads(path.read_text())
        return record

    async def doctor(self) -> list[DoctorCheck]:
        """Two fixed checks: the fake backend passes, KVM is not used."""
        return [
            DoctorCheck("backend:fake", "pass", "local subprocesses (test fake, no isolation)"),
            DoctorCheck("kvm", "warn", "not used by the fake service"),
        ]


def _load_policy(cwd: Path) -> tuple[Path, str, float | None]:
    if not cwd.is_dir():
        raise InvalidRequest(f"{cwd} is not a directory", details={"cwd": str(cwd)})
    policy = cwd / "cleanroom.yaml"
    if not policy.is_file():
        raise PolicyNotFound(f"no cleanroom.yaml in {cwd}", details={"cwd": str(cwd)})
    text = policy.read_text()
    return policy, text, _parse_policy(policy, text)


def _write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    path = run_dir / "run-observability.json"
    path.write_text(json.dumps(record))
    return path


def _parse_policy(path: Path, text: str) -> float | None:
    timeout: float | None = None
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() == "version":
            continue  # accepted so that a file can be valid for the real loader too
        if not sep or key.strip() != "timeout_seconds":
            problems.append(f"{path.name}:{number}: unknown key {key.strip()!r}")
            continue
        try:
            timeout = float(value)
        except ValueError:
            problems.append(f"{path.name}:{number}: timeout_seconds must be a number")
    if problems:
        raise PolicyInvalid(f"{path} is invalid", details={"problems": problems})
    return timeout


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class ServerThread:
    """A real server (uvicorn on a bound socket) running in a background thread.

    Use as a context manager: the listener is bound on entry (errors raise
    there) and the server is stopped and its socket removed on exit.
    """

    def __init__(self, service: Any, address: ListenAddress, *, allow_remote: bool = False) -> None:
        self.service = service
        self.address = address
        self._allow_remote = allow_remote
        self._server: CleanroomServer | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The bound address as a URL (``tcp://127.0.0.1:PORT`` for port 0)."""
        assert self._server is not None
        return self._server.listeners[0].url()

    def __enter__(self) -> ServerThread:
        listener = bind(self.address, allow_remote=self._allow_remote)
        self._server = CleanroomServer(self.service, [listener])
        self._thread = threading.Thread(target=self._main, name="cleanroom-server", daemon=True)
        self._thread.start()
        if not self._server.started.wait(15) or self._error is not None:
            self.__exit__(None, None, None)
            raise RuntimeError(f"test server did not start: {self._error!r}")
        return self

    def _main(self) -> None:
        assert self._server is not None
        try:
            asyncio.run(self._server.serve())
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__/__exit__
            self._error = exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.request_stop()
        if self._thread is not None:
            self._thread.join(30)
            if self._thread.is_alive():
                raise RuntimeError("test server did not stop")


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a FakeService on ``--listen`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description="cleanroom test server (fake service)")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--state", required=True, type=Path)
    args = parser.parse_args(argv)
    configure_logging()
    listener = bind(parse_listen(args.listen))
    asyncio.run(CleanroomServer(FakeService(args.state), [listener]).serve())


if __name__ == "__main__":
    main()
