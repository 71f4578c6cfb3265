"""Strict, located reading of runtime-config sections (shared by every section's owner).

The runtime config (:mod:`cleanroom.config`) and each backend's own section
parser read their keys through :class:`SectionReader`, so every section reports
problems the same way: ``config.yaml:L:C: key.path: message``.
"""

from __future__ import annotations

from pathlib import Path

from cleanroom._yaml import (
    Problems,
    YamlEntry,
    YamlNode,
    join_key,
    read_choice,
    read_int,
    read_mapping,
    read_number,
    read_str,
)

__all__ = ["SectionReader", "is_null"]


class SectionReader:
    """Reads values out of a located YAML mapping, collecting problems instead of raising.

    Every reader takes the mapping's entries, a key and the dotted path of the
    mapping (for messages such as ``backends.qemu.vcpus: ...``) and returns the
    value, or the default when the key is absent or its value is invalid (the
    problem is recorded; the caller raises once, listing all of them).
    """

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def section(
        self, entries: dict[str, YamlEntry], key: str, path: str, allowed: tuple[str, ...]
    ) -> dict[str, YamlEntry]:
        entry = entries.get(key)
        if entry is None:
            return {}
        return read_mapping(entry.value, join_key(path, key), self.problems, allowed=allowed) or {}

    def path_value(self, node: YamlNode, path: str) -> Path | None:
        text = read_str(node, path, self.problems)
        if text is None:
            return None
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            self.problems.add(node.mark, path, f"must be an absolute path, got {text!r}")
            return None
        return candidate

    def optional_path(self, entries: dict[str, YamlEntry], key: str, path: str) -> Path | None:
        entry = entries.get(key)
        if entry is None or is_null(entry.value):
            return None
        return self.path_value(entry.value, join_key(path, key))

    def integer(
        self,
        entries: dict[str, YamlEntry],
        key: str,
        path: str,
        default: int,
        *,
        minimum: int,
        maximum: int | None = None,
    ) -> int:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_int(
            entry.value, join_key(path, key), self.problems, minimum=minimum, maximum=maximum
        )
        return default if value is None else value

    def seconds(self, entries: dict[str, YamlEntry], key: str, path: str, default: float) -> float:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_number(entry.value, join_key(path, key), self.problems, exclusive_minimum=0)
        return default if value is None else value

    def choice(
        self,
        entries: dict[str, YamlEntry],
        key: str,
        path: str,
        choices: tuple[str, ...],
        default: str,
    ) -> str:
        entry = entries.get(key)
        if entry is None:
            return default
        value = read_choice(entry.value, join_key(path, key), self.problems, choices)
        return default if value is None else value

    def optional_command(self, entries: dict[str, YamlEntry], key: str, path: str) -> Path | None:
        """A program: an absolute path, or a bare command name (no ``/``) that is
        looked up on ``PATH`` when it is used, never at load time."""
        entry = entries.get(key)
        if entry is None or is_null(entry.value):
            return None
        text = read_str(entry.value, join_key(path, key), self.problems)
        if text is None:
            return None
        if text and "/" not in text and not text.startswith("~") and text not in (".", ".."):
            return Path(text)
        return self.path_value(entry.value, join_key(path, key))


def is_null(node: YamlNode) -> bool:
    """Whether ``node`` is YAML ``null`` (``~``, ``null`` or an empty value)."""
    return getattr(node, "value", "") is None
