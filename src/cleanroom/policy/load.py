"""Finding and loading a repository's policy file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cleanroom.errors import PolicyInvalid, PolicyNotFound
from cleanroom.policy.compile import compile_policy_text
from cleanroom.policy.model import CompiledPolicy

__all__ = ["FALLBACK_POLICY", "MAX_POLICY_BYTES", "PRIMARY_POLICY", "find_policy", "load_policy"]

PRIMARY_POLICY = Path("cleanroom.yaml")
FALLBACK_POLICY = Path(".buildkite/cleanroom.yaml")
MAX_POLICY_BYTES = 1 << 20
"""Larger files are refused: a policy is a short list of hosts."""


def find_policy(directory: Path) -> tuple[Path, list[str]]:
    """The policy file for ``directory`` and any warnings about the choice.

    ``cleanroom.yaml`` wins over ``.buildkite/cleanroom.yaml``; when both exist
    a warning names the ignored one. Raises
    :class:`~cleanroom.errors.PolicyNotFound` naming both paths when neither exists.
    """
    primary = directory / PRIMARY_POLICY
    fallback = directory / FALLBACK_POLICY
    if primary.is_file():
        warnings = []
        if fallback.is_file():
            warnings.append(f"{FALLBACK_POLICY} is ignored because {PRIMARY_POLICY} exists")
        return primary, warnings
    if fallback.is_file():
        return fallback, []
    raise PolicyNotFound(
        f"no policy found in {directory}: expected {PRIMARY_POLICY} or {FALLBACK_POLICY}",
        details={"searched": [str(primary), str(fallback)]},
    )


def load_policy(directory: Path) -> CompiledPolicy:
    """Find, read and compile ``directory``'s policy.

    Problems name the file relative to ``directory``; the result's ``source``
    is the absolute path of the file. Raises ``PolicyNotFound`` or ``PolicyInvalid``.
    """
    path, warnings = find_policy(directory)
    name = str(path.relative_to(directory))
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyInvalid(
            f"cannot read policy {path}: {exc.strerror or exc}",
            details={"source": name, "problems": [f"{name}:1:1: cannot read the file"]},
        ) from exc
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyInvalid(
            f"policy {path} is larger than {MAX_POLICY_BYTES} bytes",
            details={"source": name, "problems": [f"{name}:1:1: file is too large"]},
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(
            f"policy {path} is not UTF-8",
            details={
                "source": name,
                "problems": [f"{name}:1:1: not valid UTF-8 (byte offset {exc.start})"],
            },
        ) from exc
    compiled = compile_policy_text(text.removeprefix("\ufeff"), name, warnings=warnings)
    return replace(compiled, source=path.resolve())
