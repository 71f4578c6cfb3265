"""The host tools the image builder needs, and running them with errors translated.

Every failure of a host tool becomes :class:`~cleanroom.errors.ImageUnavailable`
carrying the command and its stderr; a missing tool names itself and says how
to provide an image by hand instead.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cleanroom.errors import ImageUnavailable

__all__ = ["MANUAL_IMAGE_HINT", "REQUIRED_TOOLS", "require_tools", "run_tool"]

#: Tool name -> the Debian package that provides it.
REQUIRED_TOOLS: dict[str, str] = {
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.ext4": "e2fsprogs",
    "lz4": "lz4",
}

MANUAL_IMAGE_HINT = (
    "install them, or provide a guest image by hand: set backends.qemu.kernel_image, "
    "backends.qemu.initrd and backends.qemu.rootfs in the runtime config "
    "(a bzImage, an initramfs that mounts /dev/vda and runs /sbin/cleanroom-init, "
    "and an ext4 rootfs carrying the cleanroom agent)"
)


def require_tools(names: Sequence[str] | None = None) -> dict[str, Path]:
    """Resolve each tool on PATH; raise ImageUnavailable naming every missing one."""
    wanted = list(names) if names is not None else list(REQUIRED_TOOLS)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in wanted:
        path = shutil.which(name)
        if path is None:
            missing.append(name)
        else:
            found[name] = Path(path)
    if missing:
        packages = sorted({REQUIRED_TOOLS.get(m, m) for m in missing})
        raise ImageUnavailable(
            f"cannot build the guest image here: missing host tools {', '.join(missing)} "
            f"(Debian packages: {', '.join(packages)})",
            details={"missing_tools": missing, "hint": MANUAL_IMAGE_HINT},
        )
    return found


def run_tool(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    input_bytes: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion, capturing output; a non-zero exit raises ImageUnavailable."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args, cwd=cwd, input=input_bytes, capture_output=True, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise ImageUnavailable(
            f"cannot build the guest image here: {args[0]} is not installed",
            details={"missing_tools": [args[0]], "hint": MANUAL_IMAGE_HINT},
        ) from exc
    except OSError as exc:
        raise ImageUnavailable(f"cannot run {args[0]}: {exc}") from exc
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise ImageUnavailable(
            f"{' '.join(args[:3])} failed with exit status {proc.returncode}: {stderr[-2000:]}",
            details={"argv": args, "returncode": proc.returncode},
        )
    return proc
