"""Compile policy text into a canonical, hashed :class:`CompiledPolicy`.

Canonical form: hosts normalised, ports sorted and unique, rules sorted and
exact duplicates dropped. Rule order in the file therefore never matters (the
decision order is defined by :func:`cleanroom.policy.decide`, not by position).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cleanroom._yaml import Problems
from cleanroom.errors import PolicyInvalid
from cleanroom.policy.model import AllowRule, CompiledPolicy, DenyRule
from cleanroom.policy.schema import read_policy

__all__ = ["canonical_allow", "canonical_deny", "compile_policy_text"]


def canonical_allow(rules: Iterable[AllowRule]) -> tuple[AllowRule, ...]:
    """``rules`` sorted by host, ports and reason, exact duplicates removed."""
    unique = set(rules)
    return tuple(sorted(unique, key=lambda rule: (rule.host, rule.ports, rule.reason or "")))


def canonical_deny(rules: Iterable[DenyRule]) -> tuple[DenyRule, ...]:
    """``rules`` sorted by host then ports (every-port rules first), duplicates removed."""
    unique = set(rules)
    return tuple(
        sorted(
            unique,
            key=lambda rule: (rule.host, rule.ports is not None, rule.ports or ()),
        )
    )


def _shadow_warnings(allow: tuple[AllowRule, ...], deny: tuple[DenyRule, ...]) -> list[str]:
    """Warnings for allow rules that an every-port deny of the same host makes useless."""
    denied = {rule.host for rule in deny if rule.ports is None}
    return [
        f"allow rule {rule.label()} has no effect: {rule.host} is denied on every port"
        for rule in allow
        if rule.host in denied
    ]


def compile_policy_text(
    text: str, source_name: str, *, warnings: Iterable[str] = ()
) -> CompiledPolicy:
    """Validate and compile policy ``text``.

    ``source_name`` is how problems name the file (e.g. ``cleanroom.yaml``) and
    becomes the policy's ``source``. ``warnings`` (e.g. from locating the file)
    are carried into the result ahead of the compiler's own. Raises
    :class:`~cleanroom.errors.PolicyInvalid` listing every problem in
    ``details['problems']``.
    """
    problems = Problems(source_name)
    document = read_policy(text, problems)
    if document is None:
        problems.fail(PolicyInvalid, "policy")
    allow = canonical_allow(document.allow)
    deny = canonical_deny(document.deny)
    return CompiledPolicy(
        allow=allow,
        deny=deny,
        source=Path(source_name),
        image=document.image,
        resources=document.resources,
        isolation=document.isolation,
        warnings=(*warnings, *_shadow_warnings(allow, deny)),
    )
