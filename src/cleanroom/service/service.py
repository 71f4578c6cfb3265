"""The service: cleanroom contexts and their runs (the implementation of ``ServiceAPI``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from cleanroom import paths
from cleanroom.backend_table import backend_names
from cleanroom.backends import Backend, get_backend, resolve_backend_name
from cleanroom.config import RuntimeConfig
from cleanroom.errors import (
    CleanroomError,
    CleanroomNotFound,
    RunCancelled,
)
from cleanroom.models import Applied, LaunchRequest
from cleanroom.service.admission import run_timeout
from cleanroom.service.boots import BootGate, default_boot_limit
from cleanroom.service.checks import (
    check_capacity,
    check_cwd,
    checked_request,
    current_task_cancelling,
    network_check,
    pool_checks,
)
from cleanroom.service.context import Context, open_context
from cleanroom.service.doctor import backend_checks, host_checks
from cleanroom.service.finalize import Finalizers
from cleanroom.service.finished import FinishedRuns
from cleanroom.service.ids import new_run_id
from cleanroom.service.network import LeaseT, NetworkLayer, RunNetworks, SlotT, bind_network
from cleanroom.service.pool import WarmPool
from cleanroom.service.pools import Pools, resolve_pool_image
from cleanroom.service.repair import AutoPrune, prune_runs, repair_runs, retention
from cleanroom.service.run import execute_run
from cleanroom.service.staging import remove_dead_stagings
from cleanroom.service.statelock import StateLock
from cleanroom.service.types import (
    CleanroomInfo,
    DoctorCheck,
    EventSink,
    LaunchOptions,
    RunOptions,
    RunResult,
)
from cleanroom.service.uploads import Upload, Uploads

__all__ = ["Service"]

log = structlog.get_logger("cleanroom.service")


class Service:
    """Contexts and runs over the configured backends (see ``ServiceAPI`` for the contract)."""

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        backends: dict[str, Backend] | None = None,
        network: NetworkLayer[LeaseT, SlotT] | None = None,
    ) -> None:
        """``network``: the egress layer (default: a ``NetworkManager``, made by :meth:`start`)."""
        self._config = config
        self._backends: dict[str, Backend] = dict(backends or {})
        self._network: RunNetworks | None = bind_network(network) if network is not None else None
        self._network_error: str | None = None
        self._contexts: dict[str, Context] = {}
        self._terminated: set[str] = set()
        self._runs: dict[str, Path] = {}
        self._lock = asyncio.Lock()
        self._boots = BootGate(default_boot_limit())
        self._pools = Pools(
            config.pool,
            launch_seconds=self._backend_launch_seconds,
            network=lambda: self._network,
            boots=self._boots,
            console_log_bytes=config.limits.console_log_bytes,
        )
        self._finalizers = Finalizers()
        self._state_lock = StateLock(paths.state_dir())
        self._uploads = Uploads(paths.state_dir() / "uploads", config.limits)
        self._done = FinishedRuns(self._finalizers, self._runs, self._uploads)
        self._closed = False
        self._auto_prune: AutoPrune | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Lock the state directory (``ServerUnavailable`` when another server holds it),
        create the network manager (if this host can enforce egress) and reconcile."""
        self._state_lock.acquire()
        if self._network is None:
            try:
                from cleanroom.network import NetworkManager  # noqa: PLC0415 - optional layer

                manager = NetworkManager(self._config.network, limits=self._config.limits)
            except CleanroomError as exc:
                self._network_error = exc.message
            else:
                # mypy checks here that the manager conforms to NetworkLayer.
                self._network = bind_network(manager)
        if self._network is not None:
            removed = await self._network.reconcile()
            if removed:
                log.warning("reconciled leftovers from a previous server", removed=removed)
        # Pool directories of a previous server hold only dead guests' files.
        shutil.rmtree(paths.state_dir() / "pool", ignore_errors=True)
        self._uploads.clear_leftovers()
        remove_dead_stagings()
        await self._repair_runs()
        if self._pools.enabled:
            name = resolve_backend_name(None, self._config)
            try:
                be = await self._backend(name)
                await be.prepare()
            except CleanroomError as exc:
                log.warning("warm pool not started", backend=name, code=exc.code, error=exc.message)
            else:
                images = self._config.images
                self._pools.start(name, be, lambda entry: resolve_pool_image(entry, images))

    def pool(self, backend: str, image: str | None = None) -> WarmPool | None:
        """The warm pool of ``backend`` for the user image with key ``image`` (None: the
        built-in image); None when that pool is off or not started."""
        return self._pools.get(backend, image)

    async def close(self) -> None:
        """Cancel every run, wait for every run's cleanup, close the backends. Idempotent."""
        self._closed = True
        tasks = [t for ctx in self._contexts.values() for t in ctx.tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._pools.close()
        # Finished runs still releasing their guests and networks.
        await self._finalizers.drain()
        await self._uploads.close()
        if self._auto_prune is not None:
            await self._auto_prune.close()
        for ctx in self._contexts.values():
            ctx.terminated = True
            self._terminated.add(ctx.info.cleanroom_id)
        self._contexts.clear()
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                await backend.close()
        self._state_lock.release()

    # -- contexts ------------------------------------------------------------------

    async def upload_workspace(self, chunks: AsyncIterator[bytes]) -> Upload:
        """See ``ServiceAPI.upload_workspace``."""
        return await self._uploads.receive(chunks)

    async def launch(
        self,
        cwd: Path,
        *,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        workspace_id: str | None = None,
        local: bool = True,
    ) -> CleanroomInfo:
        """See ``ServiceAPI.launch``."""
        opts = options or LaunchOptions()
        # the wire rules, stated once
        LaunchRequest(cwd=Path(cwd), backend=backend, options=opts, workspace_id=workspace_id)
        if workspace_id is None:
            check_cwd(Path(cwd), self._config.workspace.roots, local)
            return await self._launch(Path(cwd), backend, opts, None)
        upload = self._uploads.claim(workspace_id)
        try:
            return await self._launch(upload, backend, opts, upload)
        except BaseException:
            self._uploads.release(upload)
            raise

    async def _launch(
        self, cwd: Path, backend: str | None, opts: LaunchOptions, upload: Path | None
    ) -> CleanroomInfo:
        ctx = await open_context(
            cwd,
            backend,
            opts,
            upload,
            config=self._config,
            get_backend=self._backend,
            network_error=self._network_error,
            has_network=self._network is not None,
        )
        info, policy, sandbox = ctx.info, ctx.policy, ctx.sandbox
        self._contexts[info.cleanroom_id] = ctx
        log.info(
            "launched",
            cleanroom_id=info.cleanroom_id,
            backend=info.backend,
            policy=policy.policy_hash,
            image=sandbox.image.source if sandbox.image is not None else "built-in",
        )
        return info

    async def terminate(self, cleanroom_id: str) -> None:
        """See ``ServiceAPI.terminate``."""
        ctx = self._contexts.pop(cleanroom_id, None)
        if ctx is None:
            if cleanroom_id in self._terminated:
                return
            raise CleanroomNotFound(
                f"no cleanroom {cleanroom_id!r}", details={"cleanroom_id": cleanroom_id}
            )
        ctx.terminated = True
        self._terminated.add(cleanroom_id)
        for task in list(ctx.tasks):
            task.cancel()
        if ctx.tasks:
            await asyncio.gather(*ctx.tasks, return_exceptions=True)
        if ctx.upload is not None:  # its runs' patches are rendered against it first
            self._uploads.release(ctx.upload, [self._finalizers.wait(r) for r in ctx.info.runs])
        log.info("terminated", cleanroom_id=cleanroom_id)

    def list_cleanrooms(self) -> list[CleanroomInfo]:
        """See ``ServiceAPI.list_cleanrooms``."""
        return [ctx.info for ctx in self._contexts.values()]

    # -- runs ----------------------------------------------------------------------

    async def run(
        self,
        cleanroom_id: str,
        command: Sequence[str],
        run: RunOptions | None = None,
        *,
        on_event: EventSink | None = None,
    ) -> RunResult:
        """See ``ServiceAPI.run``."""
        run = run or RunOptions()
        ctx = self._contexts.get(cleanroom_id)
        if ctx is None or ctx.terminated:
            raise CleanroomNotFound(
                f"no cleanroom {cleanroom_id!r}", details={"cleanroom_id": cleanroom_id}
            )
        argv = checked_request(cleanroom_id, command, run).command
        timeout = run_timeout(run.timeout, self._config)  # every run ends, within the ceiling
        running = sum(len(c.tasks) for c in self._contexts.values())
        check_capacity(running, self._config.limits.max_concurrent_runs)
        run_id = new_run_id()
        run_dir = ctx.info.run_dir_root / run_id
        self._runs[run_id] = run_dir
        ctx.info = replace(ctx.info, runs=(*ctx.info.runs, run_id))
        plan = ctx.plan(
            run_id,
            run_dir,
            argv,
            run,
            timeout=timeout,
            config=self._config,
        )
        # The run executes in its own task so that terminate() can cancel it while
        # the caller (e.g. an HTTP request) gets a RunCancelled error, not a bare
        # cancellation; cancelling the caller cancels the run too.
        # Pooled guests are of the backend's default size: another size boots cold.
        pool = (
            self._pools.for_run(ctx.info.backend, ctx.backend, ctx.sandbox.image)
            if plan.default_machine
            else None
        )
        task = asyncio.create_task(
            execute_run(
                plan,
                ctx.backend,
                self._network,
                on_event,
                pool,
                self._boots,
                defer=self._finalizers.start,
            )
        )
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)
        if self._auto_prune is not None:
            poke = self._auto_prune.poke
            task.add_done_callback(lambda _: poke())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and not current_task_cancelling():
                raise RunCancelled(
                    "the run was cancelled because its cleanroom was terminated",
                    details={"run_id": run_id, "cleanroom_id": cleanroom_id},
                ) from None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise

    async def _repair_runs(self) -> None:
        """Repair runs a dead server left in the default run root, then prune it."""
        root = paths.state_dir() / "runs"
        repaired = await asyncio.to_thread(repair_runs, root)
        if repaired:
            log.warning("repaired runs of a previous server", runs=repaired)
        keep = retention(self._config.limits)
        pruned = await asyncio.to_thread(prune_runs, root, keep)
        if pruned:
            log.info("pruned old runs", runs=len(pruned))
        self._auto_prune = AutoPrune(root, keep)

    async def exec(
        self,
        cwd: Path,
        command: Sequence[str],
        run: RunOptions | None = None,
        *,
        on_event: EventSink | None = None,
        backend: str | None = None,
        options: LaunchOptions | None = None,
        workspace_id: str | None = None,
        local: bool = True,
    ) -> RunResult:
        """See ``ServiceAPI.exec``."""
        run = run or RunOptions()
        # Judged before anything is launched (the run checks them again, cheaply).
        checked_request("exec", command, run)
        run_timeout(run.timeout, self._config)
        info = await self.launch(
            cwd, backend=backend, options=options, workspace_id=workspace_id, local=local
        )
        try:
            return await self.run(info.cleanroom_id, command, run, on_event=on_event)
        finally:
            await asyncio.shield(self.terminate(info.cleanroom_id))

    async def run_record(self, run_id: str) -> dict[str, Any]:
        """See ``ServiceAPI.run_record``."""
        return (await self._done.locate(run_id))[1]

    async def run_diff(self, run_id: str) -> bytes:
        """See ``ServiceAPI.run_diff``."""
        return await self._done.diff(run_id)

    async def run_artifact(self, run_id: str, path: str) -> Path:
        """See ``ServiceAPI.run_artifact``."""
        return await self._done.artifact(run_id, path)

    async def apply_changes(self, run_id: str) -> Applied:
        """See ``ServiceAPI.apply_changes``."""
        return await self._done.apply(run_id)

    async def doctor(self) -> list[DoctorCheck]:
        """See ``ServiceAPI.doctor``."""
        checks = await asyncio.to_thread(host_checks)
        name = resolve_backend_name(None, self._config)
        for be_name in backend_names():
            try:
                be: Backend | CleanroomError = await self._backend(be_name)
            except CleanroomError as exc:
                be = exc
            checks.extend(await backend_checks(be_name, name, be))
        checks.extend(pool_checks(self._pools.items()))
        if self._network is None:
            checks.append(network_check(self._network_error))
        return checks

    def warm_guests(self) -> tuple[int, int]:
        """See ``ServiceAPI.warm_guests``."""
        pools = [pool for _, pool in self._pools.items()]
        return sum(p.ready for p in pools), sum(p.size for p in pools)

    # -- helpers -------------------------------------------------------------------

    async def _backend(self, name: str) -> Backend:
        async with self._lock:
            be = self._backends.get(name)
            if be is None:
                be = get_backend(name, self._config)
                self._backends[name] = be
            return be

    def _backend_launch_seconds(self, name: str) -> float:
        return float(self._config.backends[name].launch_seconds)
