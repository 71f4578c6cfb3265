"""The ``sandbox.image``, ``sandbox.resources`` and ``sandbox.isolation`` parts of the
policy schema.

::

    sandbox:
      image:                          # optional; default: the built-in image
        ref: NAME[:TAG]@sha256:<64 hex>   # an OCI/Docker image pinned by digest
        # or, instead of ref:
        debian:
          suite: bookworm             # optional (null: the host's release)
          packages: [git, make]       # optional; sorted and de-duplicated
      resources:                      # optional; each value optional
        vcpus: 2
        memory_mib: 2048
        disk_mib: 8192
      isolation: kvm                  # optional; any (default) | kvm: refuse emulated guests
"""

from __future__ import annotations

from cleanroom._yaml import (
    Problems,
    YamlNode,
    YamlScalar,
    join_index,
    join_key,
    read_choice,
    read_int,
    read_mapping,
    read_sequence,
    read_str,
)
from cleanroom.policy.image import (
    MAX_DISK_MIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    DebianImage,
    ImageSpec,
    InvalidImageRef,
    OciImage,
    Resources,
    parse_image_ref,
    valid_package_name,
    valid_suite,
)
from cleanroom.policy.isolation import ISOLATION_REQUIREMENTS, IsolationRequirement

__all__ = ["read_image", "read_isolation", "read_resources"]

_MIN_MEMORY_MIB = 64
_MIN_DISK_MIB = 64
_MAX_PACKAGES = 1000


def _is_null(node: YamlNode) -> bool:
    return isinstance(node, YamlScalar) and node.value is None


def read_image(node: YamlNode, path: str, problems: Problems) -> ImageSpec | None:
    """``sandbox.image``: exactly one of ``ref`` and ``debian``."""
    entries = read_mapping(node, path, problems, allowed=("ref", "debian"))
    if entries is None:
        return None
    if ("ref" in entries) == ("debian" in entries):
        problems.add(node.mark, path, "give exactly one of 'ref' and 'debian'")
        return None
    if "debian" in entries:
        return _read_debian(entries["debian"].value, join_key(path, "debian"), problems)
    ref, ref_path = entries["ref"].value, join_key(path, "ref")
    text = read_str(ref, ref_path, problems)
    if text is None:
        return None
    try:
        return OciImage(parse_image_ref(text))
    except InvalidImageRef as exc:
        problems.add(ref.mark, ref_path, exc.message)
        return None


def _read_debian(node: YamlNode, path: str, problems: Problems) -> DebianImage | None:
    entries = read_mapping(node, path, problems, allowed=("suite", "packages"))
    if entries is None:
        return None
    suite: str | None = None
    ok = True
    suite_entry = entries.get("suite")
    if suite_entry is not None and not _is_null(suite_entry.value):
        suite_path = join_key(path, "suite")
        suite = read_str(suite_entry.value, suite_path, problems)
        if suite is not None and not valid_suite(suite):
            problems.add(suite_entry.value.mark, suite_path, f"not a Debian suite name: {suite!r}")
        ok = suite is not None and valid_suite(suite)
    packages: set[str] = set()
    packages_entry = entries.get("packages")
    if packages_entry is not None:
        packages_path = join_key(path, "packages")
        items = read_sequence(packages_entry.value, packages_path, problems)
        if items is None:
            return None
        if len(items) > _MAX_PACKAGES:
            problems.add(packages_entry.value.mark, packages_path, "too many packages")
            return None
        for index, item in enumerate(items):
            item_path = join_index(packages_path, index)
            name = read_str(item, item_path, problems)
            if name is None:
                ok = False
            elif not valid_package_name(name):
                problems.add(item.mark, item_path, f"not a Debian package name: {name!r}")
                ok = False
            else:
                packages.add(name)
    return DebianImage(suite, tuple(sorted(packages))) if ok else None


def read_resources(node: YamlNode, path: str, problems: Problems) -> Resources | None:
    """``sandbox.resources``: optional positive, bounded integers."""
    entries = read_mapping(node, path, problems, allowed=("vcpus", "memory_mib", "disk_mib"))
    if entries is None:
        return None
    bounds = {
        "vcpus": (1, MAX_VCPUS),
        "memory_mib": (_MIN_MEMORY_MIB, MAX_MEMORY_MIB),
        "disk_mib": (_MIN_DISK_MIB, MAX_DISK_MIB),
    }
    values: dict[str, int] = {}
    ok = True
    for key, (low, high) in bounds.items():
        entry = entries.get(key)
        if entry is None or _is_null(entry.value):
            continue
        value = read_int(entry.value, join_key(path, key), problems, minimum=low, maximum=high)
        if value is None:
            ok = False
        else:
            values[key] = value
    return Resources(**values) if ok else None


def read_isolation(node: YamlNode, path: str, problems: Problems) -> IsolationRequirement | None:
    """``sandbox.isolation``: the weakest guest isolation the policy accepts."""
    value = read_choice(node, path, problems, ISOLATION_REQUIREMENTS)
    return next((r for r in ISOLATION_REQUIREMENTS if r == value), None)
