"""Layers import downward only.

Bottom: errors, config, policy, paths (and the small value modules beside them);
then images and agent; then backends and network side by side; then service;
then server and client; then cli. Every ``import`` counts, including those
inside functions and ``TYPE_CHECKING`` blocks: a deferred import is still a
dependency. Packages on one layer do not import each other (network imports
no backend, the client no server), and the agent imports nothing outside
itself (the guest image carries only its files).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import cleanroom

PACKAGE = Path(cleanroom.__file__).resolve().parent

LAYERS: dict[str, int] = {
    # bottom: values, errors, parsing
    "": 0,  # cleanroom/__init__.py
    "_fields": 0,
    "_rules": 0,
    "_files": 0,
    "_yaml": 0,
    "backend_table": 0,
    "config": 0,
    "config_images": 0,
    "config_limits": 0,
    "config_policy": 0,
    "config_reader": 0,
    "doctor": 0,
    "errors": 0,
    "events": 0,
    "models": 0,
    "workspace_tree": 0,
    "netspec": 0,
    "loopback": 0,
    "paths": 0,
    "policy": 0,
    "tokens": 0,
    # guest image and guest agent
    "images": 1,
    "agent": 1,
    # starting guests, isolating their network
    "backends": 2,
    "network": 2,
    "changes": 2,
    # contexts and runs
    "service": 3,
    # the API's two ends
    "server": 4,
    "client": 4,
    # composition roots
    "cli": 5,
    "testing": 5,
}
"""Top-level module or package of ``cleanroom`` -> its layer (higher may import lower)."""

SELF_CONTAINED = frozenset({"agent"})
"""Packages that import nothing from ``cleanroom`` outside themselves."""

FORBIDDEN: frozenset[tuple[str, str]] = frozenset({("network", "agent")})
"""Downward imports that are still not allowed: the network layer describes the
guest's interface in its own values (``cleanroom.netspec``); the service tells the agent."""

KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}
"""``(file relative to the package, imported module)`` -> why it is tolerated for now.

Only files owned elsewhere (service/, server/, client/) may be listed here, each
by name; an entry that no longer matches fails the test so the list shrinks."""


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    importer: str
    imported: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    """``cleanroom.a.b`` for ``root/a/b.py`` (``root/a/__init__.py`` -> ``cleanroom.a``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["cleanroom", *parts])


def imported_modules(source: str, module: str, *, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every ``cleanroom`` module named by an import anywhere in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target == "cleanroom":
                # `from cleanroom import paths` imports the submodule `paths`.
                for alias in node.names:
                    yield node.lineno, f"cleanroom.{alias.name}"
            else:
                yield node.lineno, target


def top_of(module: str) -> str | None:
    """The top-level part of a ``cleanroom`` module (``""`` for the package itself)."""
    parts = module.split(".")
    if parts[0] != "cleanroom":
        return None
    top = parts[1] if len(parts) > 1 else ""
    # `from cleanroom import __version__` names the package itself; a module not
    # in LAYERS fails test_every_top_level_module_has_a_layer instead.
    return top if top in LAYERS else ""


def check_import(importer: str, imported: str) -> bool:
    """Whether module ``importer`` may import ``imported``."""
    src, dst = top_of(importer), top_of(imported)
    if src is None or dst is None or src == dst:
        return True
    if src in SELF_CONTAINED or (src, dst) in FORBIDDEN:
        return False
    low, high = LAYERS[dst], LAYERS[src]
    if low == high:
        return low == 0  # bottom-level modules build on each other; others are peers
    return low < high


def backend_package(module: str) -> str | None:
    """``qemu`` for ``cleanroom.backends.qemu.guest``; None outside a backend's package."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "backends" and parts[2] in BACKEND_PACKAGES:
        return parts[2]
    return None


BACKEND_PACKAGES = frozenset(p.parent.name for p in (PACKAGE / "backends").glob("*/__init__.py"))
"""Each backend's own package: backends share code through ``cleanroom.backends``
modules, never by importing another backend."""


def find_violations(root: Path) -> list[Violation]:
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        is_package = path.name == "__init__.py"
        for line, imported in imported_modules(
            path.read_text(encoding="utf-8"), module, is_package=is_package
        ):
            own, other = backend_package(module), backend_package(imported)
            crosses = own is not None and other is not None and own != other
            if crosses or not check_import(module, imported):
                found.append(Violation(str(path.relative_to(root)), line, module, imported))
    return found


def test_every_top_level_module_has_a_layer() -> None:
    tops = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")
    }
    tops = {"" if t == "__init__" else t for t in tops}
    missing = sorted(tops - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_layers_import_downward_only() -> None:
    found = find_violations(PACKAGE)
    unexpected = [v for v in found if (v.file, v.imported) not in KNOWN_VIOLATIONS]
    assert not unexpected, "upward or sideways imports:\n" + "\n".join(map(str, unexpected))
    stale = set(KNOWN_VIOLATIONS) - {(v.file, v.imported) for v in found}
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {sorted(stale)}"
    for file, _ in KNOWN_VIOLATIONS:
        assert file.split("/")[0] in ("service", "server", "client"), file


# -- the checker itself ----------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "cleanroom"
    for name, text in files.items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


@pytest.mark.parametrize(
    ("name", "text", "imported"),
    [
        (
            "network/manager.py",
            "from cleanroom.agent.messages import X\n",
            "cleanroom.agent.messages",
        ),
        (
            "network/manager.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from cleanroom.backends.base import NetworkAttachment\n",
            "cleanroom.backends.base",
        ),
        (
            "backends/base.py",
            "def f():\n    import cleanroom.service.types\n",
            "cleanroom.service.types",
        ),
        ("backends/qemu/x.py", "from ...service import types\n", "cleanroom.service"),
        ("config.py", "from cleanroom import backends\n", "cleanroom.backends"),
        ("agent/host.py", "from cleanroom.errors import CleanroomError\n", "cleanroom.errors"),
        ("client/_sync.py", "from cleanroom.server import app\n", "cleanroom.server"),
        (
            "backends/firecracker/b.py",
            "from cleanroom.backends.qemu.accel import V\n",
            "cleanroom.backends.qemu.accel",
        ),
    ],
)
def test_checker_catches(tmp_path: Path, name: str, text: str, imported: str) -> None:
    root = _tree(tmp_path, {name: text})
    found = find_violations(root)
    assert [v.imported for v in found] == [imported]


def test_checker_allows_downward(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "cli/app.py": "from cleanroom.service import Service\nimport cleanroom.client\n",
            "service/x.py": "from cleanroom.backends import get_backend\nfrom . import y\n",
            "backends/qemu/b.py": "from ..base import Guest\nfrom cleanroom.netspec import N\n",
            "config.py": "from cleanroom._yaml import parse_yaml\nfrom cleanroom import paths\n",
            "agent/guest.py": "from cleanroom.agent.messages import X\n",
        },
    )
    assert find_violations(root) == []
