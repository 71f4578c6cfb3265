"""OCI/Docker images: pull by digest (or copy from an archive) and unpack to a root tree.

Pulling is skopeo's job and unpacking umoci's: skopeo copies the pinned
manifest and its blobs into a ``dir:`` directory (byte-exact, every blob
checked against its digest), we check the manifest's own digest and read the
config, then skopeo converts the directory to an OCI layout locally and
``umoci raw unpack`` applies the layers in order (whiteouts, opaque
directories, hard links, symlinks, modes, owners, xattrs).

A pinned digest may name a multi-arch index: its raw bytes are fetched and
checked against the pin first, and the linux/amd64 entry is what is copied.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.ocijson import (
    INDEX_TYPES,
    blob_digest,
    media_type_of,
    parse_config,
    parse_json,
    parse_manifest,
    pick_platform,
    read_bounded,
)
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.rootfstar import scan_layer
from cleanroom.images.skopeo import run_skopeo, run_umoci, tls_flag
from cleanroom.images.usercache import CachedImage, Produced, lookup_user_image, obtain_user_image
from cleanroom.images.userimage import ImageConfig
from cleanroom.policy.image import ImageRef

__all__ = ["PLATFORM_FLAGS", "pull_oci_image", "unpack_dir_image"]

PLATFORM_FLAGS = ("--override-os", "linux", "--override-arch", "amd64")


def unpack_dir_image(
    image_dir: Path,
    work: Path,
    *,
    expected: str | None,
    progress: Progress,
    scan_layers: bool = False,
) -> tuple[Path, ImageConfig, str]:
    """Check and unpack a skopeo ``dir:`` image into ``work/rootfs``.

    Returns the tree, the image config and the manifest digest (which must be
    ``expected`` when given). With ``scan_layers`` (imported archives) every
    layer is first checked for hostile members. Intermediate copies are removed.
    """
    raw = read_bounded(image_dir / "manifest.json", "manifest")
    digest = blob_digest(raw)
    if expected is not None and digest != expected:
        raise ImageUnavailable(
            "the image manifest does not match its digest",
            details={"cause": "digest_mismatch", "expected": expected, "actual": digest},
        )
    manifest = parse_manifest(parse_json(raw, "manifest"))
    config_raw = read_bounded(image_dir / manifest.config_digest[7:], "config")
    if blob_digest(config_raw) != manifest.config_digest:
        raise ImageUnavailable(
            "the image config does not match its digest",
            details={"cause": "digest_mismatch", "expected": manifest.config_digest},
        )
    config = parse_config(parse_json(config_raw, "config"))
    if scan_layers:
        for layer in manifest.layers:
            scan_layer(image_dir / layer[7:])
    layout = work / "oci"
    progress.start("unpack", f"applying {len(manifest.layers)} layer(s)")
    run_skopeo(["copy", "--quiet", f"dir:{image_dir}", f"oci:{layout}:image"], "converting")
    shutil.rmtree(image_dir, ignore_errors=True)
    tree = work / "rootfs"
    run_umoci(["raw", "unpack", "--image", f"{layout}:image", tree], "unpacking layers")
    shutil.rmtree(layout, ignore_errors=True)
    progress.finish("unpack", f"{len(manifest.layers)} layer(s)")
    return tree, config, digest


def _resolve_platform(ref: ImageRef, insecure_registries: Sequence[str]) -> str:
    """The manifest digest to copy: the pin itself, or its index's linux/amd64 entry."""
    tls = tls_flag(ref.registry, insecure_registries, src=False)
    raw = run_skopeo(
        ["inspect", "--raw", *tls, f"docker://{ref.pull_spec()}"],
        f"looking up {ref}",
    )
    actual = blob_digest(raw)
    if actual != ref.digest:
        raise ImageUnavailable(
            f"the registry's manifest for {ref} does not match its digest",
            details={"cause": "digest_mismatch", "expected": ref.digest, "actual": actual},
        )
    doc = parse_json(raw, "manifest")
    if media_type_of(doc) in INDEX_TYPES:
        return pick_platform(doc)
    return ref.digest


def pull_oci_image(
    ref: ImageRef,
    *,
    insecure_registries: Sequence[str] = (),
    progress: Progress | None = None,
) -> CachedImage:
    """The cached image for ``ref``, pulling it first if needed (no network on a hit).

    A local (imported) ref is only looked up. Raises ImageUnavailable with
    ``details['cause']``.
    """
    progress = progress if progress is not None else NullProgress()
    if ref.is_local:
        hit = lookup_user_image(ref.digest)
        if hit is None:
            raise ImageUnavailable(
                f"no imported image {ref.digest} in the cache",
                details={"cause": "not_found", "hint": "import it: cleanroom image import FILE"},
            )
        return hit

    def produce(work: Path, progress: Progress) -> Produced:
        tls = tls_flag(ref.registry, insecure_registries)
        progress.start("resolve", f"looking up {ref}")
        manifest_digest = _resolve_platform(ref, insecure_registries)
        progress.finish("resolve", manifest_digest[:19])
        progress.start("pull", f"pulling {ref.name}@{manifest_digest[:19]}")
        run_skopeo(
            [
                "copy",
                *tls,
                *PLATFORM_FLAGS,
                f"docker://{ref.name}@{manifest_digest}",
                f"dir:{work / 'dir'}",
            ],
            f"pulling {ref}",
            progress=progress,
            step="pull",
        )
        progress.finish("pull")
        tree, config, _ = unpack_dir_image(
            work / "dir", work, expected=manifest_digest, progress=progress
        )
        origin = {"kind": "oci", "ref": str(ref), "manifest": manifest_digest}
        return Produced(ref.digest, str(ref), tree, config, origin)

    return obtain_user_image(produce, key=ref.digest, progress=progress)
