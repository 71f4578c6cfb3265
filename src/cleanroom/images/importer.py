"""``cleanroom image import``: archives and layouts into the user image cache.

Accepted inputs, told apart by their content (not their name):

- an OCI image layout directory (has ``oci-layout``): skopeo ``oci:``;
- a tar with ``oci-layout`` and ``index.json``: an OCI archive, skopeo ``oci-archive:``;
- a tar with ``manifest.json``: a ``docker save`` archive, skopeo ``docker-archive:``;
- any other tar (optionally compressed): a plain root filesystem as from
  ``docker export``, extracted by :mod:`cleanroom.images.rootfstar`.

Image archives are keyed by their manifest's digest, root filesystem tarballs
by the SHA-256 of the file. The result's ``key`` (``sha256:<hex>``) is the
``ref`` to write in a policy.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.ocipull import PLATFORM_FLAGS, unpack_dir_image
from cleanroom.images.progress import NullProgress, Progress
from cleanroom.images.rootfstar import extract_rootfs
from cleanroom.images.skopeo import run_skopeo
from cleanroom.images.usercache import CachedImage, Produced, obtain_user_image
from cleanroom.images.userimage import ImageConfig

__all__ = ["DEFAULT_PATH", "detect_archive", "import_image"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHUNK = 1 << 20


def detect_archive(path: Path) -> str:
    """``oci``, ``oci-archive``, ``docker-archive`` or ``rootfs``; ImageUnavailable otherwise."""
    if path.is_dir():
        if (path / "oci-layout").is_file():
            return "oci"
        raise ImageUnavailable(
            f"{path.name} is a directory but not an OCI image layout",
            details={"cause": "corrupt_archive", "path": str(path)},
        )
    try:
        with tarfile.open(path) as tar:
            names = {name.removeprefix("./") for name in tar.getnames()}
    except FileNotFoundError as exc:
        raise ImageUnavailable(
            f"no such file: {path}", details={"cause": "not_found", "path": str(path)}
        ) from exc
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ImageUnavailable(
            f"{path.name} is not a readable tar archive",
            details={"cause": "corrupt_archive", "error": str(exc)[:200]},
        ) from exc
    if "oci-layout" in names and "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    return "rootfs"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ImageUnavailable(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    return f"sha256:{digest.hexdigest()}"


def import_image(
    path: Path, *, name: str | None = None, progress: Progress | None = None
) -> CachedImage:
    """Import ``path`` into the cache (a cache hit if the same content is there).

    ``name`` (default: the file name) is recorded as ``import:<name>``.
    Raises ImageUnavailable with ``details['cause']``; nothing is left
    behind in the cache on failure.
    """
    progress = progress if progress is not None else NullProgress()
    path = path.absolute()
    kind = detect_archive(path)
    source = f"import:{name or path.name}"
    if kind == "rootfs":
        key = _file_digest(path)

        def produce_rootfs(work: Path, progress: Progress) -> Produced:
            progress.start("extract", f"extracting {path.name}")
            tree = work / "rootfs"
            count = extract_rootfs(path, tree)
            progress.finish("extract", f"{count} entries")
            config = ImageConfig(env=(("PATH", DEFAULT_PATH),))
            return Produced(key, source, tree, config, {"kind": "rootfs", "file": path.name})

        return obtain_user_image(produce_rootfs, key=key, progress=progress)

    def produce_image(work: Path, progress: Progress) -> Produced:
        progress.start("copy", f"reading {kind} {path.name}")
        run_skopeo(
            ["copy", *PLATFORM_FLAGS, f"{kind}:{path}", f"dir:{work / 'dir'}"],
            f"reading {path.name}",
            progress=progress,
            step="copy",
        )
        progress.finish("copy")
        tree, config, digest = unpack_dir_image(
            work / "dir", work, expected=None, progress=progress, scan_layers=True
        )
        origin = {"kind": kind, "file": path.name, "manifest": digest}
        return Produced(digest, source, tree, config, origin)

    return obtain_user_image(produce_image, progress=progress)
