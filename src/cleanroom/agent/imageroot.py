"""The command root of a user image: what the agent builds so commands run inside
the user's image while the agent itself keeps running from cleanroom's runtime.

Stdlib only: this module runs inside the guest. The agent never executes
anything from the image except the user's commands, so an image without
Python, with musl, or with only busybox's ``/bin/sh`` works.

Image mode is asked for on the kernel command line (``cleanroom.image=1``) and
set up once at boot by the VM's init:

* the **image disk** is the one virtio disk the VMM attached read-only
  (``/sys/block/vdX/ro``); it is mounted read-only and never written;
* the **scratch disk** is the host-made ext4 labelled :data:`SCRATCH_LABEL`;
  its root holds :data:`SETTINGS_NAME` (the image's ``Env``/``User``/
  ``WorkingDir``, written by the host) and gets ``upper``/``work``
  directories, the overlay's writable layer;
* the overlay of both is the command root (:data:`ROOT_DIR`); the workspace
  disk is mounted at its ``/workspace``, and proc, sys, dev, devpts, a
  ``/dev/shm`` and a ``/tmp`` tmpfs inside it (:func:`mount_plan`); its
  ``/etc/hosts`` and ``/etc/hostname`` (and, once the network is configured,
  ``/etc/resolv.conf``) are the guest's own, as with any container runtime.

Each command is then started chrooted into that root, as the image's ``User``
(:mod:`cleanroom.agent.account`), with the image's environment
(:func:`command_env`). A command that is root in the image can leave a chroot;
that only reaches the agent's runtime inside the same VM, which is the
isolation boundary anyway.
"""

# raw mounts and fd-relative file handling inside the guest
# ruff: noqa: PTH101, PTH102, PTH103, PTH116, PTH118, PTH123, PTH208
from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass

from cleanroom.agent import sysops
from cleanroom.agent.account import Account, AccountError, resolve_account
from cleanroom.agent.rootfiles import (
    ImageRootError,
    chown_tree,
    read_in_root,
    real_dir,
    replace_etc_file,
)

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "DEFAULT_PATH",
    "IMAGE_CMDLINE_FLAG",
    "ROOT_DIR",
    "SCRATCH_LABEL",
    "SETTINGS_NAME",
    "CommandRoot",
    "ImageRootError",
    "ImageSettings",
    "MountStep",
    "chown_tree",
    "command_env",
    "find_read_only_disk",
    "image_mode_requested",
    "mount_plan",
    "parse_settings",
    "read_in_root",
    "replace_etc_file",
    "setup_command_root",
]

IMAGE_CMDLINE_FLAG = "cleanroom.image=1"
SCRATCH_LABEL = b"cleanroom-upper"
"""Volume label of the per-run scratch disk (see ``cleanroom.backends.workspace_disk``)."""
SETTINGS_NAME = "image.json"
MAX_SETTINGS = 1 << 20
MAX_ACCOUNT_FILE = 4 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` for an image whose ``Env`` has none (as docker does)."""

_BASE = "/run/cleanroom"
SCRATCH_DIR = f"{_BASE}/scratch"
IMAGE_DIR = f"{_BASE}/image"
ROOT_DIR = f"{_BASE}/root"


@dataclass(frozen=True)
class ImageSettings:
    """The image config the host wrote to the scratch disk (``ImageConfig.to_dict()``)."""

    env: tuple[tuple[str, str], ...] = ()
    user: str = ""
    working_dir: str = ""


def parse_settings(data: bytes) -> ImageSettings:
    """Parse :data:`SETTINGS_NAME` strictly: exactly ``env``, ``user``, ``working_dir``."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageRootError("image settings are not JSON") from exc
    if not isinstance(obj, dict) or set(obj) != {"env", "user", "working_dir"}:
        raise ImageRootError("image settings must have exactly env, user, working_dir")
    env, user, working_dir = obj["env"], obj["user"], obj["working_dir"]
    if not isinstance(env, list) or not isinstance(user, str) or not isinstance(working_dir, str):
        raise ImageRootError("image settings have a wrong type")
    pairs: list[tuple[str, str]] = []
    for item in env:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) and "\0" not in x for x in item)
            or not item[0]
            or "=" in item[0]
        ):
            raise ImageRootError("image settings: env entries must be [name, value]")
        pairs.append((item[0], item[1]))
    return ImageSettings(env=tuple(pairs), user=user, working_dir=working_dir)


def command_env(
    image_env: tuple[tuple[str, str], ...], home: str, request_env: Mapping[str, str] | None
) -> dict[str, str]:
    """A command's environment: a default ``PATH``, the image's ``Env`` over it,
    ``HOME`` from the user's account unless the image sets it, and the exec
    request's own variables over all of that (like ``docker run -e``)."""
    env = {"PATH": DEFAULT_PATH}
    env.update(image_env)
    env.setdefault("HOME", home)
    if request_env is not None:
        env.update(request_env)
    return env


@dataclass(frozen=True)
class MountStep:
    """One mount(2): ``target`` is absolute in the agent's root."""

    source: str
    target: str
    fstype: str
    flags: int
    data: str = ""


def mount_plan(
    scratch: str, image: str, workspace_device: str | None, workspace: str = "/workspace"
) -> list[MountStep]:
    """The mounts building the command root, in order (devices are /dev paths).

    ``workspace_device`` None: no workspace disk was attached (``workspace`` is
    then a plain directory of the overlay).
    """
    nosuid_nodev = sysops.MS_NOSUID | sysops.MS_NODEV
    layers = f"lowerdir={IMAGE_DIR},upperdir={SCRATCH_DIR}/upper,workdir={SCRATCH_DIR}/work"
    steps = [
        # The scratch disk is a fresh sparse file: nothing needs its inode tables zeroed.
        MountStep(scratch, SCRATCH_DIR, "ext4", 0, "noinit_itable"),
        # noload: never replay a journal on a disk that must not be written.
        MountStep(image, IMAGE_DIR, "ext4", sysops.MS_RDONLY, "noload"),
        MountStep("overlay", ROOT_DIR, "overlay", 0, layers),
    ]
    if workspace_device is not None:
        steps.append(
            MountStep(workspace_device, ROOT_DIR + workspace, "ext4", nosuid_nodev, "noinit_itable")
        )
    r = ROOT_DIR
    steps += [
        MountStep("proc", f"{r}/proc", "proc", nosuid_nodev | sysops.MS_NOEXEC),
        MountStep("sysfs", f"{r}/sys", "sysfs", nosuid_nodev | sysops.MS_NOEXEC | sysops.MS_RDONLY),
        MountStep("devtmpfs", f"{r}/dev", "devtmpfs", sysops.MS_NOSUID, "mode=0755"),
        MountStep(
            "devpts",
            f"{r}/dev/pts",
            "devpts",
            sysops.MS_NOSUID | sysops.MS_NOEXEC,
            "newinstance,gid=5,mode=620,ptmxmode=666",
        ),
        MountStep("tmpfs", f"{r}/dev/shm", "tmpfs", nosuid_nodev, "mode=1777"),  # noqa: S108
        MountStep("tmpfs", f"{r}/tmp", "tmpfs", nosuid_nodev, "mode=1777"),  # noqa: S108
    ]
    return steps


def image_mode_requested(cmdline: str) -> bool:
    """Whether the kernel command line asks for a user image."""
    return IMAGE_CMDLINE_FLAG in cmdline.split()


def _ensure_mount_point(target: str) -> None:
    if target.startswith(ROOT_DIR + "/"):
        cur = ROOT_DIR
        for part in target[len(ROOT_DIR) + 1 :].split("/"):
            cur = f"{cur}/{part}"
            real_dir(cur)
    else:
        os.makedirs(target, exist_ok=True)


@dataclass(frozen=True)
class CommandRoot:
    """A built command root: where it is, who runs in it, and its environment."""

    path: str
    account: Account
    image_env: tuple[tuple[str, str], ...]
    workspace: str = "/workspace"
    """The workspace as commands see it (also their default cwd)."""

    @property
    def workspace_path(self) -> str:
        """The workspace as the agent sees it."""
        return self.path + self.workspace

    def env_for(self, request_env: Mapping[str, str] | None) -> dict[str, str]:
        return command_env(self.image_env, self.account.home, request_env)

    def preexec(self, cwd: str) -> Callable[[], None]:
        """A ``preexec_fn``: chroot, drop to the account, chdir to ``cwd``.

        Runs in the forked child before exec. A failure is reported like a shell
        would (a message on the command's stderr, exit 127 for a missing
        directory, else 126) rather than as an agent error.
        """
        root, acct = self.path, self.account

        def enter() -> None:
            try:
                os.chroot(root)
                os.chdir("/")
                os.setgroups(list(acct.groups))
                os.setgid(acct.gid)
                os.setuid(acct.uid)
                os.chdir(cwd)  # as the user: its permissions apply
            except OSError as exc:
                code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
                msg = f"cleanroom-agent: cannot enter {cwd!r}: {exc.strerror or exc}\n"
                os.write(2, msg.encode(errors="replace"))
                os._exit(code)

        return enter

    def mount_workspace(self) -> None:
        """Mount the run's workspace disk (dropping every disk's cached blocks first)
        at the workspace and give it to the image's user, as a boot without a
        snapshot does (a guest restored from a snapshot, at its first configure).
        Raises OSError."""
        sysops.mount_workspace_disk(self.workspace_path, fresh=True)
        chown_tree(self.workspace_path, self.account.uid, self.account.gid)

    def write_resolv_conf(self, nameserver: str) -> None:
        """Replace the image's ``/etc/resolv.conf`` (in the writable layer)."""
        replace_etc_file(self.path, "resolv.conf", f"nameserver {nameserver}\n")


_ETC_HOSTS = "127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def find_read_only_disk(sys_block: str = "/sys/block", dev: str = "/dev") -> str:
    """The /dev path of the one virtio disk the VMM attached read-only."""
    found: list[str] = []
    try:
        names = sorted(n for n in os.listdir(sys_block) if n.startswith("vd"))
    except OSError as exc:
        raise ImageRootError(f"cannot list {sys_block}: {exc}") from exc
    for name in names:
        try:
            with open(os.path.join(sys_block, name, "ro"), encoding="ascii") as fh:
                if fh.read().strip() == "1":
                    found.append(os.path.join(dev, name))
        except OSError:
            continue
    if len(found) != 1:
        raise ImageRootError(f"expected one read-only image disk, found {len(found)}")
    return found[0]


def setup_command_root(
    workspace: str = "/workspace", hostname: str = "cleanroom", *, mount_workspace: bool = True
) -> CommandRoot:
    """Build the command root at boot (see the module docstring); raises ImageRootError.

    The workspace disk (if attached) is mounted at ``ROOT_DIR + workspace`` and
    owned by the image's user. ``mount_workspace`` False (a guest booted to be
    snapshotted): the disk attached now is a placeholder, left alone; the agent
    mounts the run's own after the restore (:meth:`CommandRoot.mount_workspace`).
    """
    scratch = sysops.find_labelled_disk(SCRATCH_LABEL)
    if scratch is None:
        raise ImageRootError("no scratch disk (label cleanroom-upper)")
    image = find_read_only_disk()
    ws_device = sysops.find_labelled_disk(sysops.WORKSPACE_LABEL) if mount_workspace else None
    steps = mount_plan(scratch, image, ws_device, workspace)
    try:
        for step in steps[:2]:
            _mount(step)
        raw = read_in_root(SCRATCH_DIR, SETTINGS_NAME, MAX_SETTINGS)
        if raw is None:
            raise ImageRootError(f"the scratch disk has no {SETTINGS_NAME}")
        settings = parse_settings(raw)
        lower = os.stat(IMAGE_DIR)
        for name in ("upper", "work"):
            path = f"{SCRATCH_DIR}/{name}"
            os.mkdir(path, 0o755)
        # The overlay's root directory takes its owner and mode from the upper one.
        os.chown(f"{SCRATCH_DIR}/upper", lower.st_uid, lower.st_gid)
        os.chmod(f"{SCRATCH_DIR}/upper", stat.S_IMODE(lower.st_mode))
        for step in steps[2:]:
            _mount(step)
        account = resolve_account(
            settings.user,
            _account_text(ROOT_DIR, "etc/passwd"),
            _account_text(ROOT_DIR, "etc/group"),
        )
        replace_etc_file(ROOT_DIR, "hostname", f"{hostname}\n")
        replace_etc_file(ROOT_DIR, "hosts", _ETC_HOSTS.format(name=hostname))
        ws = ROOT_DIR + workspace
        real_dir(ws)
        chown_tree(ws, account.uid, account.gid)
    except AccountError as exc:
        raise ImageRootError(str(exc)) from exc
    except OSError as exc:
        raise ImageRootError(f"building the command root: {exc}") from exc
    return CommandRoot(ROOT_DIR, account, settings.env, workspace)


def _mount(step: MountStep) -> None:
    _ensure_mount_point(step.target)
    sysops.mount(step.source, step.target, step.fstype, step.flags, step.data)


def _account_text(root: str, rel: str) -> str:
    data = read_in_root(root, rel, MAX_ACCOUNT_FILE)
    return "" if data is None else data.decode("utf-8", errors="replace")
