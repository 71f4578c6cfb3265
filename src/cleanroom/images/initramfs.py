"""The initramfs: busybox, the virtio drivers, and an ``/init`` that mounts the rootfs.

The Debian cloud kernel builds every virtio driver as a module, so the guest
needs an initramfs that loads them before it can see its root disk. ``/init``
loads the modules in a fixed order, mounts the root device (``/dev/vda`` or
``cleanroom.root=DEV``) read-write at ``/newroot`` and ``switch_root``s into
``/sbin/cleanroom-init``. With ``cleanroom.image=1`` (a user image is attached)
it also loads the user-image modules (overlayfs), which the agent needs to
build the command root; other boots do not pay for them. On failure it prints
one ``cleanroom-initramfs:`` line on the console and powers the guest off.
``cleanroom.debug=1`` makes it log each step; otherwise it is silent (console
output slows an emulated boot).
"""

from __future__ import annotations

import gzip
import io
import lzma
from collections.abc import Mapping, Sequence
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.cpio import NewcWriter

__all__ = ["build_initramfs", "init_script"]

_INIT_TEMPLATE = """\
#!/bin/sh
# cleanroom initramfs: load the virtio drivers, mount the rootfs, start the agent's init.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
required_modules="@REQUIRED@"
optional_modules="@OPTIONAL@"
image_modules="@IMAGE@"
root=/dev/vda
debug=0
image=0

fail() {
    echo "cleanroom-initramfs: $*"
    poweroff -f
    sleep 10
    exit 1
}

log() {
    if [ "$debug" = 1 ]; then echo "cleanroom-initramfs: $*"; fi
}

mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"

for arg in $(cat /proc/cmdline); do
    case "$arg" in
        cleanroom.root=*) root="${arg#cleanroom.root=}" ;;
        cleanroom.debug=1) debug=1 ;;
        cleanroom.image=1) image=1 ;;
    esac
done

for m in $required_modules; do
    [ -e "/lib/modules/$m.ko" ] || fail "missing module $m"
    insmod "/lib/modules/$m.ko" || fail "cannot load module $m"
    log "loaded $m"
done
if [ "$image" = 1 ]; then
    for m in $image_modules; do
        [ -e "/lib/modules/$m.ko" ] || fail "missing module $m"
        insmod "/lib/modules/$m.ko" || fail "cannot load module $m"
        log "loaded $m"
    done
fi
for m in $optional_modules; do
    if insmod "/lib/modules/$m.ko" 2>/dev/null; then log "loaded $m"; else log "skipped $m"; fi
done

tries=0
while [ ! -b "$root" ]; do
    tries=$((tries + 1))
    [ "$tries" -le 500 ] || fail "cannot mount root: $root did not appear"
    usleep 10000
done
log "mounting $root"
mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount root $root"
[ -x /newroot/sbin/cleanroom-init ] || fail "cannot mount root: $root has no /sbin/cleanroom-init"
umount /proc /sys
mount --move /dev /newroot/dev || fail "cannot move /dev into the root filesystem"
log "switching root"
exec switch_root /newroot /sbin/cleanroom-init "$@"
"""


def init_script(required: Sequence[str], optional: Sequence[str], image: Sequence[str] = ()) -> str:
    """The ``/init`` script loading ``required``, then (only with ``cleanroom.image=1``)
    ``image``, then ``optional`` modules, in order."""
    return (
        _INIT_TEMPLATE.replace("@REQUIRED@", " ".join(required))
        .replace("@OPTIONAL@", " ".join(optional))
        .replace("@IMAGE@", " ".join(image))
    )


def _module_bytes(path: Path) -> bytes:
    """The uncompressed module (busybox ``insmod`` loads only plain ``.ko`` files)."""
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as exc:
            raise ImageUnavailable(f"cannot decompress kernel module {path.name}") from exc
    raise ImageUnavailable(f"unsupported kernel module compression: {path.name}")


def build_initramfs(
    out: Path,
    *,
    busybox: Path,
    applets: Sequence[str],
    modules: Mapping[str, Path],
    script: str,
    compress: bool,
) -> int:
    """Write the initramfs to ``out`` (gzip-compressed if ``compress``); returns its size.

    ``applets`` are busybox's ``--list-full`` paths (``usr/bin/env``); each
    becomes a symlink to ``/bin/busybox``. ``modules`` maps module name to
    its file and is stored as ``/lib/modules/<name>.ko``.
    """
    buf = io.BytesIO()
    cpio = NewcWriter(buf)
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "newroot", "lib"]
    dirs += ["lib/modules", "tmp", "run", "root"]
    for d in dirs:
        cpio.add_dir(d)
    cpio.add_chardev("dev/console", 5, 1)
    cpio.add_chardev("dev/null", 1, 3, mode=0o666)
    cpio.add_file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in applets:
        name = applet.strip("/")
        if name == "bin/busybox" or name.rsplit("/", 1)[0] not in dirs:
            continue
        cpio.add_symlink(name, "/bin/busybox")
    for name, path in modules.items():
        cpio.add_file(f"lib/modules/{name}.ko", _module_bytes(path))
    cpio.add_file("init", script.encode(), mode=0o755)
    cpio.close()
    payload = buf.getvalue()
    if compress:
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    out.write_bytes(payload)
    return len(payload)
