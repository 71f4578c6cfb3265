"""Built images on disk: the manifest, the :class:`GuestImage` value, verification.

An image directory holds ``bzImage``, ``vmlinux``, ``initrd``, ``rootfs.ext4``
and ``manifest.json``. The manifest is written last, so a directory without a
valid manifest is never an image. Parsing is strict: unknown or missing keys
make the manifest invalid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cleanroom.errors import ImageUnavailable

__all__ = [
    "ARTIFACTS",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "GuestImage",
    "file_sha256",
    "image_from_paths",
    "load_image",
    "verify_image",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
#: Artifact role -> file name inside the image directory.
ARTIFACTS: Mapping[str, str] = MappingProxyType(
    {"kernel": "bzImage", "vmlinux": "vmlinux", "initrd": "initrd", "rootfs": "rootfs.ext4"}
)
_MANIFEST_KEYS = frozenset(
    {
        "schema",
        "digest",
        "artifacts",
        "packages",
        "kernel_version",
        "agent_version",
        "built_at",
        "build_seconds",
        "builder_version",
        "recipe_version",
        "inputs",
    }
)
_ARTIFACT_KEYS = frozenset({"file", "sha256", "size"})


@dataclass(frozen=True)
class GuestImage:
    """A guest image: kernel (bzImage), ELF vmlinux, initramfs and ext4 rootfs.

    ``digest`` is the content address of a built image (``"user-provided"`` for
    :func:`image_from_paths`); ``manifest`` is the parsed ``manifest.json``
    (empty for user-provided images).
    """

    digest: str
    path: Path
    kernel: Path
    vmlinux: Path
    initrd: Path
    rootfs: Path
    kernel_version: str
    agent_version: str
    manifest: Mapping[str, Any]


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` into ``directory`` (via a temp file, fsynced, then renamed)."""
    path = directory / MANIFEST_NAME
    tmp = directory / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def _invalid(directory: Path, why: str) -> ImageUnavailable:
    return ImageUnavailable(
        f"invalid image manifest in {directory}: {why}", details={"path": str(directory)}
    )


def _parse(directory: Path, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _invalid(directory, "not a JSON object")
    keys = set(raw)
    if keys - _MANIFEST_KEYS:
        raise _invalid(directory, f"unknown keys {sorted(keys - _MANIFEST_KEYS)}")
    if _MANIFEST_KEYS - keys:
        raise _invalid(directory, f"missing keys {sorted(_MANIFEST_KEYS - keys)}")
    if raw["schema"] != MANIFEST_SCHEMA:
        raise _invalid(directory, f"unsupported schema {raw['schema']!r}")
    artifacts = raw["artifacts"]
    if not isinstance(artifacts, dict) or set(artifacts) != set(ARTIFACTS):
        raise _invalid(directory, f"artifacts must be exactly {sorted(ARTIFACTS)}")
    for role, entry in artifacts.items():
        if not isinstance(entry, dict) or set(entry) != _ARTIFACT_KEYS:
            raise _invalid(directory, f"artifact {role} must have exactly {sorted(_ARTIFACT_KEYS)}")
        if entry["file"] != ARTIFACTS[role]:
            raise _invalid(directory, f"artifact {role} must be {ARTIFACTS[role]}")
        if not isinstance(entry["sha256"], str) or not isinstance(entry["size"], int):
            raise _invalid(directory, f"artifact {role} has a malformed sha256 or size")
    for key in ("digest", "kernel_version", "agent_version"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise _invalid(directory, f"{key} must be a non-empty string")
    if not isinstance(raw["packages"], list):
        raise _invalid(directory, "packages must be a list")
    return raw


def load_image(directory: Path) -> GuestImage:
    """Load the image in ``directory`` (light check: a valid manifest, artifacts present).

    Raises ImageUnavailable if the manifest is missing or invalid, or if its
    digest differs from the directory name.
    """
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ImageUnavailable(f"no image manifest at {path}", details={"path": str(path)}) from exc
    except (OSError, ValueError) as exc:
        raise _invalid(directory, str(exc)) from exc
    manifest = _parse(directory, raw)
    if manifest["digest"] != directory.name:
        raise _invalid(directory, f"digest {manifest['digest']} does not match the directory name")
    files = {role: directory / name for role, name in ARTIFACTS.items()}
    return GuestImage(
        digest=manifest["digest"],
        path=directory,
        kernel=files["kernel"],
        vmlinux=files["vmlinux"],
        initrd=files["initrd"],
        rootfs=files["rootfs"],
        kernel_version=manifest["kernel_version"],
        agent_version=manifest["agent_version"],
        manifest=MappingProxyType(manifest),
    )


def verify_image(image: GuestImage) -> None:
    """Recompute every artifact's size and sha256 against the manifest.

    Raises ImageUnavailable naming the first missing or mismatching file. A
    user-provided image (no manifest) is checked for presence only.
    """
    if not image.manifest:
        for path in (image.kernel, image.initrd, image.rootfs):
            if not path.is_file():
                raise ImageUnavailable(f"image file missing: {path}", details={"file": str(path)})
        return
    artifacts = image.manifest["artifacts"]
    for role, entry in artifacts.items():
        path = image.path / entry["file"]
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ImageUnavailable(
                f"image {image.digest[:12]}: {entry['file']} is missing",
                details={"file": str(path), "role": role},
            ) from exc
        if size != entry["size"]:
            raise ImageUnavailable(
                f"image {image.digest[:12]}: {entry['file']} has size {size}, "
                f"manifest says {entry['size']}",
                details={"file": str(path), "role": role},
            )
        if file_sha256(path) != entry["sha256"]:
            raise ImageUnavailable(
                f"image {image.digest[:12]}: {entry['file']} does not match its sha256",
                details={"file": str(path), "role": role},
            )


def image_from_paths(
    kernel: Path, initrd: Path, rootfs: Path, vmlinux: Path | None = None
) -> GuestImage:
    """A user-provided image (runtime config overrides); every given file must exist."""
    given = {"kernel": kernel, "initrd": initrd, "rootfs": rootfs}
    if vmlinux is not None:
        given["vmlinux"] = vmlinux
    for role, path in given.items():
        if not path.is_file():
            raise ImageUnavailable(
                f"user-provided {role} image {path} does not exist or is not a file",
                details={"file": str(path), "role": role},
            )
    resolved = {role: path.resolve() for role, path in given.items()}
    return GuestImage(
        digest="user-provided",
        path=resolved["rootfs"].parent,
        kernel=resolved["kernel"],
        # Without a vmlinux only QEMU (which boots the bzImage) can use this image.
        vmlinux=resolved.get("vmlinux", resolved["kernel"]),
        initrd=resolved["initrd"],
        rootfs=resolved["rootfs"],
        kernel_version="unknown",
        agent_version="unknown",
        manifest=MappingProxyType({}),
    )
