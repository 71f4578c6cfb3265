"""The guest root filesystem: a tree of unpacked Debian packages, the agent, and an ext4 image.

The tree is assembled from packages unpacked with ``dpkg-deb -x`` (no
maintainer scripts, no chroot), then completed here: busybox applet links,
``/usr/bin/python3``, the minimal ``/etc`` files, mount points, the cleanroom
agent under ``/opt/cleanroom/lib`` with its ``/sbin/cleanroom-init``, and
bytecode for the whole Python tree, compiled by the guest's own interpreter
(run on the host through the tree's dynamic loader) so the bytecode matches
the guest Python exactly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from cleanroom.errors import ImageUnavailable
from cleanroom.images.tools import run_tool

__all__ = [
    "AGENT_LIB",
    "GUEST_INIT",
    "compile_bytecode",
    "finish_tree",
    "guest_init_script",
    "make_ext4",
    "tree_usage",
]

#: Where the agent package lives in the guest (this directory goes on PYTHONPATH).
AGENT_LIB = "/opt/cleanroom/lib"
#: The agent's init, started by the initramfs via ``switch_root``.
GUEST_INIT = "/sbin/cleanroom-init"
GUEST_PYTHON = "python3.11"

_PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/share/bug",
    "usr/share/gdb",
)

_ETC_FILES: dict[str, str] = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    ),
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/hostname": "cleanroom\n",
    "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
    "etc/os-release": (
        'PRETTY_NAME="cleanroom guest (Debian 12 packages)"\n'
        'NAME="cleanroom guest"\nID=cleanroom\nID_LIKE=debian\nVERSION_ID="12"\n'
    ),
}

_MOUNT_POINTS = ("proc", "sys", "dev", "run", "tmp", "var/tmp", "workspace", "root", "mnt", "home")


def guest_init_script() -> str:
    """The ``/sbin/cleanroom-init`` script that execs the agent as PID 1."""
    return (
        "#!/bin/sh\n"
        "# cleanroom guest init: run the guest agent as PID 1 (it mounts /proc etc. itself).\n"
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
        "export HOME=/root\n"
        "export LANG=C.UTF-8\n"
        f"export PYTHONPATH={AGENT_LIB}\n"
        'exec /usr/bin/python3 -u -m cleanroom.agent.guest "$@"\n'
    )


def _link(root: Path, name: str, target: str) -> None:
    path = root / name
    if path.exists() or path.is_symlink():
        return  # a real file from a package wins over an applet link
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def finish_tree(
    root: Path,
    *,
    applets: Sequence[str],
    agent_files: Mapping[str, bytes],
) -> None:
    """Complete the unpacked package tree at ``root`` into a bootable guest tree.

    ``applets`` are busybox ``--list-full`` paths; ``agent_files`` maps the
    agent's ``*.py`` file names to their contents.
    """
    for rel in _PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    if not (root / "bin/busybox").is_file():
        raise ImageUnavailable("the rootfs tree has no /bin/busybox (busybox-static missing)")
    if not (root / "usr/bin" / GUEST_PYTHON).is_file():
        raise ImageUnavailable(f"the rootfs tree has no /usr/bin/{GUEST_PYTHON}")
    for applet in applets:
        _link(root, applet.strip("/"), "/bin/busybox")
    _link(root, "usr/bin/python3", GUEST_PYTHON)
    for rel in _MOUNT_POINTS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    for rel, text in _ETC_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    pkg = root / AGENT_LIB.strip("/") / "cleanroom"
    agent = pkg / "agent"
    agent.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_bytes(b"")
    for name, data in agent_files.items():
        (agent / name).write_bytes(data)
    init = root / GUEST_INIT.strip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    init.write_text(guest_init_script())
    init.chmod(0o755)


def compile_bytecode(root: Path) -> None:
    """Compile every ``.py`` under the guest's stdlib and agent dir with the guest's Python.

    Bytecode uses the ``unchecked-hash`` invalidation mode: the image is
    immutable, so the interpreter never needs to stat or hash the sources.
    """
    loader = root / "lib64/ld-linux-x86-64.so.2"
    python = root / "usr/bin" / GUEST_PYTHON
    if not loader.exists():
        raise ImageUnavailable("the rootfs tree has no /lib64/ld-linux-x86-64.so.2 (libc6 missing)")
    libs = f"{root}/lib/x86_64-linux-gnu:{root}/usr/lib/x86_64-linux-gnu"
    env = {"PYTHONHOME": f"{root}/usr", "LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")}
    run_tool(
        [
            loader,
            "--library-path",
            libs,
            python,
            "-S",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            # lib2to3's test data is deliberately invalid Python.
            "-x",
            r"lib2to3/tests/data",
            root / "usr/lib" / GUEST_PYTHON,
            root / AGENT_LIB.strip("/"),
        ],
        env=env,
    )


def tree_usage(root: Path) -> tuple[int, int]:
    """``(bytes, inodes)`` the tree needs: file sizes rounded up to 4 KiB blocks, one per inode."""
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            inodes += 1
            st = (Path(dirpath) / name).lstat()
            total += -(-st.st_size // 4096) * 4096 if st.st_size else 4096
    return total, inodes


def make_ext4(tree: Path, out: Path, *, label: str = "cleanroom-root") -> int:
    """Build an ext4 image of ``tree`` at ``out`` (no journal, ~30 % headroom); returns its size."""
    used, inodes = tree_usage(tree)
    mib = 1 << 20
    # 30 % headroom for the guest's own writes, plus a little for ext4 metadata.
    size = max(64 * mib, int(used * 1.3) + 4 * mib)
    size = -(-size // mib) * mib
    inode_count = max(8192, int(inodes * 1.5))
    with out.open("wb") as f:
        f.truncate(size)
    run_tool(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-b",
            "4096",
            "-I",
            "256",
            "-N",
            str(inode_count),
            "-L",
            label,
            "-E",
            "root_owner=0:0",
            "-d",
            tree,
            out,
        ]
    )
    return size
