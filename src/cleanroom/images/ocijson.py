"""Strict, bounded reading of OCI/Docker manifests, indexes and image configs.

Every document comes from outside (a registry or an archive): each is read
with a size limit, checked against the digest it was addressed by, parsed
with duplicate keys refused, and only the fields cleanroom uses are taken,
each type-checked. Unknown fields are allowed where the OCI spec allows
extensions; a missing or mistyped field we need is ``image_unavailable``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.errors import ImageUnavailable
from cleanroom.images.userimage import ImageConfig

__all__ = [
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "Manifest",
    "blob_digest",
    "media_type_of",
    "parse_config",
    "parse_json",
    "parse_manifest",
    "pick_platform",
    "read_bounded",
]

MAX_DOCUMENT = 4 << 20
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_ENV = 4096
_MAX_LAYERS = 512


def blob_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_bounded(path: Path, what: str, limit: int = MAX_DOCUMENT) -> bytes:
    """At most ``limit`` bytes of ``path``; more is ImageUnavailable."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ImageUnavailable(f"cannot read the image's {what}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ImageUnavailable(f"the image's {what} is larger than {limit} bytes")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object (duplicate keys refused); anything else is ImageUnavailable."""
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise ImageUnavailable(
            f"the image's {what} is not valid JSON", details={"cause": str(exc)[:200]}
        ) from exc
    if not isinstance(value, dict):
        raise ImageUnavailable(f"the image's {what} is not a JSON object")
    return value


def _bad(what: str, field: str) -> ImageUnavailable:
    return ImageUnavailable(f"malformed image {what}: bad or missing {field!r}")


def _digest(value: object, what: str, field: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise _bad(what, field)
    return value


@dataclass(frozen=True)
class Manifest:
    """An image manifest: its config blob and layer digests."""

    media_type: str
    config_digest: str
    layers: tuple[str, ...]


def media_type_of(doc: dict[str, Any]) -> str:
    """The document's ``mediaType`` (OCI allows omitting it: guessed from its fields)."""
    media = doc.get("mediaType")
    if media is None:
        return next(iter(INDEX_TYPES if "manifests" in doc else MANIFEST_TYPES))
    if not isinstance(media, str):
        raise _bad("manifest", "mediaType")
    return media


def parse_manifest(doc: dict[str, Any]) -> Manifest:
    """Parse an image manifest (OCI or Docker schema 2)."""
    media = media_type_of(doc)
    if media not in MANIFEST_TYPES or doc.get("schemaVersion") != 2:
        raise ImageUnavailable("unsupported manifest type", details={"media_type": media[:100]})
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise _bad("manifest", "config/layers")
    if len(layers) > _MAX_LAYERS:
        raise ImageUnavailable(f"the image has more than {_MAX_LAYERS} layers")
    digests = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise _bad("manifest", "layers")
        digests.append(_digest(layer.get("digest"), "manifest", "layers[].digest"))
    return Manifest(
        media, _digest(config.get("digest"), "manifest", "config.digest"), tuple(digests)
    )


def pick_platform(doc: dict[str, Any], *, os: str = "linux", arch: str = "amd64") -> str:
    """The digest of the index entry for ``os``/``arch``; ImageUnavailable if there is none."""
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise _bad("index", "manifests")
    seen: list[str] = []
    for entry in manifests:
        if not isinstance(entry, dict):
            raise _bad("index", "manifests[]")
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        entry_os, entry_arch = platform.get("os"), platform.get("architecture")
        seen.append(f"{entry_os}/{entry_arch}")
        if entry_os == os and entry_arch == arch:
            return _digest(entry.get("digest"), "index", "manifests[].digest")
    raise ImageUnavailable(
        f"the image has no {os}/{arch} variant",
        details={"cause": "no_platform", "platforms": seen[:50]},
    )


def _str_field(container: dict[str, Any], key: str) -> str:
    value = container.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad("config", f"config.{key}")
    return value


def parse_config(doc: dict[str, Any]) -> ImageConfig:
    """The honoured parts of an image config; the image must be linux/amd64."""
    if doc.get("os") != "linux" or doc.get("architecture") != "amd64":
        raise ImageUnavailable(
            "the image is not linux/amd64",
            details={
                "cause": "no_platform",
                "platform": f"{str(doc.get('os'))[:20]}/{str(doc.get('architecture'))[:20]}",
            },
        )
    section = doc.get("config")
    if section is None:
        return ImageConfig()
    if not isinstance(section, dict):
        raise _bad("config", "config")
    raw_env = section.get("Env")
    env: list[tuple[str, str]] = []
    if raw_env is not None:
        if not isinstance(raw_env, list) or len(raw_env) > _MAX_ENV:
            raise _bad("config", "config.Env")
        for item in raw_env:
            if not isinstance(item, str) or "=" not in item or "\0" in item:
                raise _bad("config", "config.Env")
            name, _, value = item.partition("=")
            if not name:
                raise _bad("config", "config.Env")
            env.append((name, value))
    return ImageConfig(
        env=tuple(env),
        user=_str_field(section, "User"),
        working_dir=_str_field(section, "WorkingDir"),
    )
