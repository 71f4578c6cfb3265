"""The service's own checks: a run's inputs, a policy against a backend, pool and
network readiness for ``doctor`` (pure functions of the state they are given)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cleanroom import paths
from cleanroom.backends import Capabilities
from cleanroom.errors import BackendCapabilityMismatch, CapacityExhausted, InvalidRequest
from cleanroom.models import RunRequest, encode_stdin
from cleanroom.policy import CompiledPolicy
from cleanroom.service.pool import WarmPool
from cleanroom.service.pools import PoolKey, pool_check_name
from cleanroom.service.types import DoctorCheck, RunOptions

__all__ = [
    "RETRY_AFTER_SECONDS",
    "check_capabilities",
    "check_capacity",
    "check_cwd",
    "checked_request",
    "checked_run_dir",
    "current_task_cancelling",
    "network_check",
    "pool_checks",
]

RETRY_AFTER_SECONDS = 5
"""What a run refused for capacity is told to wait (``Retry-After``)."""


def check_capacity(running: int, limit: int) -> None:
    """``CapacityExhausted`` if ``running`` runs already reach ``limit``
    (``limits.max_concurrent_runs``)."""
    if running >= limit:
        raise CapacityExhausted(
            f"the server already runs {running} runs (limits.max_concurrent_runs)",
            details={"running": running, "limit": limit, "retry_after": RETRY_AFTER_SECONDS},
        )


def check_capabilities(
    policy: CompiledPolicy, caps: Capabilities, network: bool, network_error: str | None
) -> None:
    """Raises ``BackendCapabilityMismatch`` when the backend (or the host's egress
    enforcement, ``network``) cannot enforce the policy's allow rules."""
    if not policy.allow:
        return  # nothing to reach: the guest gets no NIC at all
    missing = [
        cap
        for cap in ("network_default_deny", "network_host_port_filtering", "dns_control")
        if not getattr(caps, cap)
    ]
    if not network:
        missing.append("egress enforcement (" + (network_error or "unavailable") + ")")
    if missing:
        raise BackendCapabilityMismatch(
            f"backend {caps.backend_name} cannot enforce this policy's allow rules: "
            + ", ".join(missing),
            details={"missing": missing, "backend": caps.backend_name},
        )


def check_cwd(cwd: Path, roots: Sequence[Path], local: bool) -> None:
    """Raises ``InvalidRequest`` unless the caller may name ``cwd`` on this server:
    a ``local`` caller (the owner-only unix socket) may name any directory, a
    remote one only a directory under ``roots`` (``workspace.roots``; symlinks
    resolved on both sides)."""
    if local:
        return
    real = os.path.realpath(cwd)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip("/") + "/"):
            return
    raise InvalidRequest(
        "a server-side cwd is accepted only over the unix socket or under the runtime "
        "config's workspace.roots; upload the workspace instead (workspace_id)",
        details={"cwd": str(cwd)[:300], "roots": [str(r) for r in roots]},
    )


def pool_checks(pools: Iterable[tuple[PoolKey, WarmPool]]) -> list[DoctorCheck]:
    """One ``doctor`` check per warm pool (``pass`` when a guest is ready)."""
    return [
        DoctorCheck(
            pool_check_name(key),
            "pass" if pool.ready else "warn",
            f"{pool.ready}/{pool.size} warm guests ready ({pool.hits} hits, {pool.misses} misses)",
            details={
                "ready": pool.ready,
                "size": pool.size,
                "hits": pool.hits,
                "misses": pool.misses,
            },
        )
        for key, pool in pools
    ]


def network_check(network_error: str | None) -> DoctorCheck:
    """The ``doctor`` warning when egress enforcement is not available."""
    return DoctorCheck(
        "network.enforcement",
        "warn",
        network_error or "egress enforcement is not available",
    )


def checked_request(cleanroom_id: str, command: Sequence[str], run: RunOptions) -> RunRequest:
    """The run's inputs as the wire's ``RunRequest``, whose rules (argv, timeout bound,
    NUL bytes, environment names, stdin size, globs) live in ``cleanroom.models`` only;
    ``InvalidRequest`` (never quoting an environment value) when one is broken."""
    if isinstance(command, str | bytes):
        raise InvalidRequest("command must be a sequence of arguments, not a string")
    return RunRequest(
        cleanroom_id=cleanroom_id,
        command=tuple(command),
        timeout_seconds=run.timeout,
        env=None if run.env is None else dict(run.env),
        stdin_base64=encode_stdin(run.stdin),
        artifacts=tuple(run.artifacts) or None,
    )


def current_task_cancelling() -> bool:
    """True while the current task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root.resolve()) for root in roots)


def checked_run_dir(run_dir: Path | None, roots: Sequence[Path] | None) -> Path:
    """The directory a context's runs go in, created: ``run_dir`` if given, else
    the state directory's ``runs/``.

    A given ``run_dir`` must lie, symbolic links resolved, inside one of
    ``roots`` (``None``: the state directory), checked before and after it
    is created; otherwise, or when it cannot be created, ``InvalidRequest``.
    """
    if run_dir is None:
        chosen = paths.state_dir() / "runs"
    else:
        allowed = list(roots) if roots is not None else [paths.state_dir()]
        chosen = run_dir.resolve()
        details = {"run_dir": str(run_dir), "roots": [str(root) for root in allowed]}
        if not _inside(chosen, allowed):
            raise InvalidRequest(
                f"run_dir {run_dir} is not under an allowed root "
                "(the runtime config's run_dir_roots; default: the state directory)",
                details=details,
            )
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(
            f"cannot create run_dir {chosen}: {exc.strerror}", details={"run_dir": str(chosen)}
        ) from exc
    if run_dir is not None and not _inside(chosen.resolve(), allowed):
        raise InvalidRequest(f"run_dir {run_dir} moved out of its root", details=details)
    return chosen
