"""A launched context: its policy compiled and admitted once, and the plan of each run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cleanroom.backends import Backend, resolve_backend_name
from cleanroom.config import RuntimeConfig
from cleanroom.errors import InvalidRequest
from cleanroom.policy import CompiledPolicy, load_policy
from cleanroom.service.admission import admit_isolation, admit_policy
from cleanroom.service.checks import check_capabilities, checked_run_dir
from cleanroom.service.ids import new_cleanroom_id, utc_now
from cleanroom.service.run import RunPlan
from cleanroom.service.sandbox import Sandbox, resolve_sandbox
from cleanroom.service.types import CleanroomInfo, LaunchOptions, RunOptions, RunResult

__all__ = ["Context", "open_context"]


@dataclass
class Context:
    """A live context and its running runs' tasks (mutable: the service owns it)."""

    info: CleanroomInfo
    policy: CompiledPolicy
    backend: Backend
    launch_seconds: float
    sandbox: Sandbox
    tasks: set[asyncio.Task[RunResult]] = field(default_factory=set)
    terminated: bool = False
    upload: Path | None = None
    """The uploaded tree the context owns (removed after it is terminated)."""

    def plan(
        self,
        run_id: str,
        run_dir: Path,
        argv: tuple[str, ...],
        run: RunOptions,
        *,
        timeout: float,
        config: RuntimeConfig,
    ) -> RunPlan:
        """The plan of one run of ``argv`` with ``run`` (both already checked) in this
        context; ``timeout`` is the run's resolved timeout (``run.timeout`` unused)."""
        return RunPlan(
            run_id=run_id,
            cleanroom_id=self.info.cleanroom_id,
            backend_name=self.info.backend,
            command=argv,
            cwd=self.info.cwd,
            run_dir=run_dir,
            policy=self.policy,
            read_only_workspace=self.info.read_only_workspace,
            launch_seconds=self.launch_seconds,
            timeout=timeout,
            image=self.sandbox.image,
            vcpus=self.sandbox.vcpus,
            memory_mib=self.sandbox.memory_mib,
            disk_mib=self.sandbox.disk_mib,
            machine=self.sandbox.machine,
            env=None if run.env is None else dict(run.env),
            stdin=run.stdin,
            artifacts=tuple(run.artifacts),
            terminal=run.terminal,
            limits=config.limits,
        )


async def open_context(
    cwd: Path,
    backend: str | None,
    opts: LaunchOptions,
    upload: Path | None,
    *,
    config: RuntimeConfig,
    get_backend: Callable[[str], Awaitable[Backend]],
    network_error: str | None,
    has_network: bool,
) -> Context:
    """Load ``cwd``'s policy, admit it (the caller's pin, the operator's ceiling, the
    backend's capabilities and isolation) and resolve its sandbox; raises the errors
    ``ServiceAPI.launch`` names."""
    # One thread hop for the file system (each costs a wake-up on the launch's path).
    policy = await asyncio.to_thread(_load_policy, cwd)
    admit_policy(policy, config, opts)  # the caller's pin, the operator's ceiling
    name = resolve_backend_name(backend, config)
    be = await get_backend(name)
    caps = await be.prepare()
    check_capabilities(policy, caps, has_network, network_error)
    admit_isolation(policy, config, caps)
    # Pulled or built now, so a bad image fails the launch, not a run. Only a
    # user image needs I/O (a thread); the built-in one is decided in place.
    if opts.image is None and policy.image is None and config.images.default is None:
        sandbox = resolve_sandbox(policy, config, name)
    else:
        sandbox = await asyncio.to_thread(
            resolve_sandbox, policy, config, name, override=opts.image
        )
    read_only = (
        opts.read_only_workspace
        if opts.read_only_workspace is not None
        else config.workspace.access == "ro"
    )
    if opts.run_dir is None:
        root = checked_run_dir(None, config.run_dir_roots)  # one mkdir of the state's runs/
    else:  # resolves and creates a caller's path: a thread
        root = await asyncio.to_thread(checked_run_dir, opts.run_dir, config.run_dir_roots)
    info = CleanroomInfo(
        cleanroom_id=new_cleanroom_id(),
        backend=name,
        cwd=cwd,
        policy_source=policy.source,
        policy_hash=policy.policy_hash,
        run_dir_root=root,
        read_only_workspace=read_only,
        created_at=utc_now(),
        image=sandbox.image_info,
        resources=sandbox.machine,
        isolation=caps.isolation,
    )
    launch_seconds = opts.launch_seconds or float(config.backends[name].launch_seconds)
    return Context(info, policy, be, launch_seconds, sandbox, upload=upload)


def _load_policy(cwd: Path) -> CompiledPolicy:
    """``cwd``'s compiled policy; ``InvalidRequest`` when ``cwd`` is not a directory."""
    if not cwd.is_dir():
        raise InvalidRequest(f"cwd {cwd} is not a directory", details={"cwd": str(cwd)})
    return load_policy(cwd)
