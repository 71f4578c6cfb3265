"""Isolation requirements: the weakest guest isolation a policy or an operator accepts.

A backend reports how its guests are isolated as ``<backend>-<mechanism>``
(``qemu-tcg``, ``qemu-kvm``, ``firecracker-kvm``). A requirement is one of:

- ``any``: every isolation will do (the default);
- ``kvm``: hardware virtualization; only a ``*-kvm`` isolation satisfies it.

Software emulation (TCG) is never enough for ``kvm``: QEMU's own security
policy says TCG is not a security boundary. An isolation this module does not
know satisfies only ``any`` (a new mechanism must be named here to count).
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ISOLATION_REQUIREMENTS",
    "IsolationRequirement",
    "isolation_mechanism",
    "satisfies",
    "strongest",
]

IsolationRequirement = Literal["any", "kvm"]
ISOLATION_REQUIREMENTS: tuple[IsolationRequirement, ...] = ("any", "kvm")
"""Weakest first."""

_HARDWARE = frozenset({"kvm"})


def isolation_mechanism(isolation: str) -> str:
    """The mechanism part of ``isolation`` (``tcg`` for ``qemu-tcg``)."""
    return isolation.rsplit("-", 1)[-1]


def satisfies(isolation: str, required: IsolationRequirement) -> bool:
    """Whether a guest isolated as ``isolation`` meets ``required``."""
    if required == "any":
        return True
    return isolation_mechanism(isolation) in _HARDWARE and isolation.count("-") == 1


def strongest(*required: IsolationRequirement | None) -> IsolationRequirement:
    """The strictest of ``required`` (``None`` entries mean no requirement)."""
    given = [r for r in required if r is not None]
    return max(given, key=ISOLATION_REQUIREMENTS.index, default="any")
