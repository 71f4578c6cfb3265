"""Whether a repository's policy is admitted: the caller's pin, the operator's ceiling,
the isolation both ask for (pure functions of the values they are given).

The repository's policy only asks. At launch :func:`admit_policy` refuses it
(``policy_conflict``) when it is not the policy the caller pinned with
``expected_policy_hash``, or when it asks beyond the runtime config's
``policy.ceiling`` (every excess listed in ``details['excess']``); once the
backend is prepared, :func:`admit_isolation` refuses a backend whose guests are
isolated more weakly than the policy's ``sandbox.isolation`` or the runtime
config's ``policy.isolation`` require (``backend_capability_mismatch``), before
any guest of the context boots. :func:`run_timeout` applies the ceiling's
``max.timeout_seconds`` to each run.
"""

from __future__ import annotations

from cleanroom.backends import Capabilities
from cleanroom.config import RuntimeConfig
from cleanroom.errors import BackendCapabilityMismatch, PolicyConflict
from cleanroom.models import LaunchOptions
from cleanroom.policy import (
    CompiledPolicy,
    check_ceiling,
    raise_excess,
    require_image_ref,
    satisfies,
    strongest,
    timeout_excess,
)

__all__ = ["admit_isolation", "admit_policy", "run_timeout"]


def admit_policy(policy: CompiledPolicy, config: RuntimeConfig, options: LaunchOptions) -> None:
    """Raise ``policy_conflict`` unless ``policy`` is the pinned one and within the ceiling.

    The pin is checked first: a caller who pinned a hash learns that the file
    changed before anything about its contents.
    """
    pinned = options.expected_policy_hash
    if pinned is not None and not policy.has_hash(pinned):
        raise PolicyConflict(
            f"the policy in {policy.source} is not the one expected: its hash is "
            f"{policy.policy_hash}",
            details={
                "expected_policy_hash": pinned[:200],
                "policy_hash": policy.policy_hash,
                "policy_source": str(policy.source),
            },
        )
    ceiling = config.policy.ceiling
    if ceiling is None:
        return
    override = None
    if options.image is not None:
        override = require_image_ref(options.image, "image override")
    check_ceiling(policy, ceiling, image_override=override)


def admit_isolation(policy: CompiledPolicy, config: RuntimeConfig, caps: Capabilities) -> None:
    """Raise ``backend_capability_mismatch`` if ``caps.isolation`` is weaker than what
    the policy (``sandbox.isolation``) or the runtime config (``policy.isolation``) require."""
    required = strongest(policy.isolation, config.policy.isolation)
    if satisfies(caps.isolation, required):
        return
    asked_by = [
        name
        for name, value in (
            ("sandbox.isolation", policy.isolation),
            ("policy.isolation", config.policy.isolation),
        )
        if value == required
    ]
    raise BackendCapabilityMismatch(
        f"isolation {required} is required ({', '.join(asked_by)}), but backend "
        f"{caps.backend_name} isolates guests with {caps.isolation} on this host",
        details={
            "required": required,
            "required_by": asked_by,
            "isolation": caps.isolation,
            "backend": caps.backend_name,
        },
    )


def run_timeout(requested: float | None, config: RuntimeConfig) -> float:
    """A run's timeout: ``requested``, or the runtime default capped by the ceiling.

    Raises ``policy_conflict`` when ``requested`` is over ``policy.ceiling.max.timeout_seconds``.
    """
    ceiling = config.policy.ceiling
    default = config.limits.run_timeout_seconds
    if requested is None:
        if ceiling is not None and ceiling.max_timeout_seconds is not None:
            return min(default, ceiling.max_timeout_seconds)
        return default
    if ceiling is not None:
        excess = timeout_excess(requested, ceiling)
        raise_excess(() if excess is None else (excess,), "the run")
    return requested
