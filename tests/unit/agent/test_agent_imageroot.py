"""The agent's user-image pieces in-process: accounts from the image's own passwd and
group, the command environment, the mount plan, settings, and a real command run
chrooted into a busybox-only tree as a non-root user (needs root; no VM)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from cleanroom.agent import sysops
from cleanroom.agent.account import Account, AccountError, resolve_account
from cleanroom.agent.command import RunningCommand
from cleanroom.agent.imageroot import (
    DEFAULT_PATH,
    ROOT_DIR,
    CommandRoot,
    ImageRootError,
    chown_tree,
    command_env,
    find_read_only_disk,
    image_mode_requested,
    mount_plan,
    parse_settings,
    read_in_root,
    replace_etc_file,
)
from cleanroom.agent.messages import ExecRequest, parse_exit
from cleanroom.agent.protocol import FrameDecoder, FrameType
from cleanroom.agent.workspace import extract_tar_stream
from cleanroom.images.userimage import ImageConfig

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
broken line
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App,,,:/home/app:/bin/sh
nohome:x:1001:1001:::/bin/sh
toobig:x:99999999999:1:::/bin/sh
"""
GROUP = """\
root:x:0:
app:x:1000:
docker:x:998:app,other
wheel:x:10:daemon,app
staff:x:50:
"""


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", Account(0, 0, (0,), "/root", "root")),
        ("root", Account(0, 0, (0,), "/root", "root")),
        ("app", Account(1000, 1000, (1000, 998, 10), "/home/app", "app")),
        ("1000", Account(1000, 1000, (1000, 998, 10), "/home/app", "app")),
        ("app:staff", Account(1000, 50, (50,), "/home/app", "app")),
        ("app:4242", Account(1000, 4242, (4242,), "/home/app", "app")),
        ("1000:0", Account(1000, 0, (0,), "/home/app", "app")),
        # A uid without an entry runs as gid 0 with HOME=/ (as container runtimes do).
        ("4000", Account(4000, 0, (0,), "/", None)),
        ("4000:staff", Account(4000, 50, (50,), "/", None)),
        ("nohome", Account(1001, 1001, (1001,), "/", "nohome")),
    ],
)
def test_resolve_account(user: str, expected: Account) -> None:
    assert resolve_account(user, PASSWD, GROUP) == expected


def test_root_without_any_passwd_file() -> None:
    assert resolve_account("", "", "") == Account(0, 0, (0,), "/root", None)


@pytest.mark.parametrize("user", ["ghost", "app:nogroup", "app:", ":staff", "toobig"])
def test_unresolvable_users(user: str) -> None:
    with pytest.raises(AccountError):
        resolve_account(user, PASSWD, GROUP)


def test_command_env_layers() -> None:
    # No PATH in the image: the default; HOME from the account.
    assert command_env((("A", "1"),), "/home/app", None) == {
        "PATH": DEFAULT_PATH,
        "A": "1",
        "HOME": "/home/app",
    }
    image = (("PATH", "/opt/node/bin:/bin"), ("HOME", "/srv"), ("NODE_ENV", "test"))
    env = command_env(image, "/home/app", {"NODE_ENV": "dev", "X": "y"})
    assert env == {"PATH": "/opt/node/bin:/bin", "HOME": "/srv", "NODE_ENV": "dev", "X": "y"}
    assert "LANG" not in env  # the runtime's defaults do not leak into the image


def test_settings_round_trip_the_host_contract() -> None:
    config = ImageConfig(env=(("PATH", "/bin"), ("A", "b=c")), user="app", working_dir="/src")
    settings = parse_settings(json.dumps(config.to_dict()).encode())
    assert (settings.env, settings.user, settings.working_dir) == (
        config.env,
        "app",
        "/src",
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"env": [], "user": ""}',
        b'{"env": [], "user": "", "working_dir": "", "entrypoint": []}',
        b'{"env": [["A"]], "user": "", "working_dir": ""}',
        b'{"env": [["A=B", "c"]], "user": "", "working_dir": ""}',
        b'{"env": [["", "c"]], "user": "", "working_dir": ""}',
        b'{"env": [], "user": 0, "working_dir": ""}',
    ],
)
def test_settings_are_parsed_strictly(payload: bytes) -> None:
    with pytest.raises(ImageRootError):
        parse_settings(payload)


def test_mount_plan() -> None:
    plan = mount_plan("/dev/vdd", "/dev/vdc", "/dev/vdb")
    targets = [(s.source, s.target, s.fstype) for s in plan]
    assert targets[:4] == [
        ("/dev/vdd", "/run/cleanroom/scratch", "ext4"),
        ("/dev/vdc", "/run/cleanroom/image", "ext4"),
        ("overlay", ROOT_DIR, "overlay"),
        ("/dev/vdb", f"{ROOT_DIR}/workspace", "ext4"),
    ]
    assert {t for _, t, _ in targets[4:]} == {
        f"{ROOT_DIR}/{d}" for d in ("proc", "sys", "dev", "dev/pts", "dev/shm", "tmp")
    }
    by_target = {s.target: s for s in plan}
    image = by_target["/run/cleanroom/image"]
    assert image.flags & sysops.MS_RDONLY
    assert "noload" in image.data  # a read-only disk never gets a journal replay
    assert by_target[ROOT_DIR].data == (
        "lowerdir=/run/cleanroom/image,upperdir=/run/cleanroom/scratch/upper,"
        "workdir=/run/cleanroom/scratch/work"
    )
    assert by_target[f"{ROOT_DIR}/tmp"].fstype == "tmpfs"
    # Mount points nest correctly: every target's parent is mounted first (or is /run).
    seen: set[str] = set()
    for step in plan:
        parent = step.target.rsplit("/", 1)[0]
        if parent.startswith(ROOT_DIR):
            assert parent in seen or parent == ROOT_DIR
        seen.add(step.target)
    assert [s.target for s in mount_plan("a", "b", None)][3] == f"{ROOT_DIR}/proc"


def test_image_mode_flag() -> None:
    assert image_mode_requested("quiet cleanroom.image=1 cleanroom.root=/dev/vda")
    assert not image_mode_requested("quiet cleanroom.image=10 xcleanroom.image=1")
    assert not image_mode_requested("")


def test_read_in_root_never_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("app:x:1:1::/:/bin/sh\n")
    assert read_in_root(str(root), "etc/passwd", 100) == b"app:x:1:1::/:/bin/sh\n"
    assert read_in_root(str(root), "etc/group", 100) is None
    secret = tmp_path / "secret"
    secret.write_text("runtime file\n")
    (root / "etc/group").symlink_to(secret)
    assert read_in_root(str(root), "etc/group", 100) is None
    other = tmp_path / "other"
    other.mkdir()
    (other / "shadow").write_text("x")
    (root / "lib").symlink_to(other)
    assert read_in_root(str(root), "lib/shadow", 100) is None
    with pytest.raises(ImageRootError):
        read_in_root(str(root), "etc/passwd", 5)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown/chroot need root")


@needs_root
def test_chown_tree(tmp_path: Path) -> None:
    top = tmp_path / "ws"
    (top / "a/b").mkdir(parents=True)
    (top / "a/b/f").write_text("x")
    (top / "link").symlink_to("/etc/passwd")
    before = Path("/etc/passwd").stat()
    assert chown_tree(str(top), 1000, 1001) == 5
    for path in (top, top / "a", top / "a/b", top / "a/b/f"):
        assert (path.stat().st_uid, path.stat().st_gid) == (1000, 1001)
    assert os.lstat(top / "link").st_uid == 1000
    assert Path("/etc/passwd").stat().st_uid == before.st_uid  # links are not followed
    assert chown_tree(str(top), 1000, 1001) == 0


@needs_root
def test_extraction_owned_by_the_image_user(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("src/deep/file.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("src/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "deep/file.txt"
        tf.addfile(link)
    buf.seek(0)
    dest = tmp_path / "ws"
    dest.mkdir()
    stats = extract_tar_stream(buf, str(dest), owner=(1000, 1000))
    assert stats.files == 1
    for rel in ("src", "src/deep", "src/deep/file.txt", "src/link"):
        assert os.lstat(dest / rel).st_uid == 1000, rel


def _busybox_tree(root: Path) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("needs a static busybox")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in ("sh", "id", "pwd", "touch", "ls", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "workspace").mkdir()
    os.chown(root / "workspace", 1000, 1000)


def _run(root: CommandRoot | None, req: ExecRequest, cwd: str) -> tuple[int, bytes, bytes]:
    frames: list[bytes] = []
    lock = threading.Lock()

    def send(data: bytes) -> None:
        with lock:
            frames.append(data)

    cmd = RunningCommand(req, send, lambda _m: None, cwd=cwd, root=root)
    cmd.start()
    assert cmd.done.wait(30)
    cmd.kill_and_wait()
    decoder = FrameDecoder()
    decoder.push(b"".join(frames))
    out, err, code = bytearray(), bytearray(), None
    while (frame := decoder.pop()) is not None:
        if frame.type is FrameType.STDOUT:
            out += frame.payload
        elif frame.type is FrameType.STDERR:
            err += frame.payload
        elif frame.type is FrameType.EXIT:
            code = parse_exit(frame.payload).exit_code
    assert code is not None
    return code, bytes(out), bytes(err)


@needs_root
def test_command_runs_chrooted_as_the_image_user(tmp_path: Path) -> None:
    tree = tmp_path / "image"
    _busybox_tree(tree)
    account = resolve_account("app", PASSWD, GROUP)
    root = CommandRoot(str(tree), account, (("PATH", "/bin"), ("GREETING", "hello")))
    script = 'id -u; id -g; id -G; echo "$PATH $HOME $GREETING $LANG"; pwd; touch mine; ls /'
    code, out, err = _run(root, ExecRequest(("sh", "-c", script)), "/workspace")
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[:2] == ["1000", "1000"]
    assert sorted(lines[2].split()) == ["10", "1000", "998"]
    assert lines[3:5] == ["/bin /home/app hello ", "/workspace"]
    assert sorted(lines[5:]) == ["bin", "etc", "workspace"]  # the image, not the host
    assert (tree / "workspace/mine").stat().st_uid == 1000

    # The request's env wins; a missing program is 127 as in a shell (looked up
    # along the image's PATH, inside the image).
    code, out, _ = _run(
        root, ExecRequest(("sh", "-c", "echo $GREETING"), env={"GREETING": "x"}), "/"
    )
    assert (code, out) == (0, b"x\n")
    code, _, err = _run(root, ExecRequest(("python3", "-c", "1")), "/")
    assert code == 127
    assert b"python3" in err
    code, _, err = _run(root, ExecRequest(("sh", "-c", "true")), "/nowhere")
    assert code == 127
    assert b"/nowhere" in err
    # The user's own permissions apply to its cwd.
    (tree / "locked").mkdir(mode=0o700)
    code, _, err = _run(root, ExecRequest(("sh", "-c", "true")), "/locked")
    assert code == 126
    assert b"Permission denied" in err


def test_etc_files_are_replaced_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "runtime-resolv.conf"
    outside.write_text("nameserver 192.0.2.1\n")
    (root / "etc/resolv.conf").symlink_to(outside)
    CommandRoot(str(root), Account(0, 0, (0,), "/root"), ()).write_resolv_conf("10.0.0.1")
    assert (root / "etc/resolv.conf").read_text() == "nameserver 10.0.0.1\n"
    assert not (root / "etc/resolv.conf").is_symlink()
    assert outside.read_text() == "nameserver 192.0.2.1\n"
    # No /etc at all (a bare image), or /etc a link: a real directory is made.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "etc").symlink_to(tmp_path)
    replace_etc_file(str(bare), "hosts", "127.0.0.1\tlocalhost\n")
    assert (bare / "etc").is_dir()
    assert not (bare / "etc").is_symlink()
    assert (bare / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n"
    assert not (tmp_path / "hosts").exists()
    (bare / "etc/hostname").mkdir()
    with pytest.raises(ImageRootError):
        replace_etc_file(str(bare), "hostname", "x\n")


def test_the_image_disk_is_the_one_read_only_disk(tmp_path: Path) -> None:
    sys_block = tmp_path / "sys"
    for name, ro in (("vda", "0"), ("vdb", "0"), ("vdc", "1"), ("vdd", "0"), ("loop0", "1")):
        (sys_block / name).mkdir(parents=True)
        (sys_block / name / "ro").write_text(ro + "\n")
    assert find_read_only_disk(str(sys_block), "/dev") == "/dev/vdc"
    (sys_block / "vdd/ro").write_text("1\n")
    with pytest.raises(ImageRootError, match="found 2"):
        find_read_only_disk(str(sys_block), "/dev")
    for name in ("vdc", "vdd"):
        (sys_block / name / "ro").write_text("0\n")
    with pytest.raises(ImageRootError, match="found 0"):
        find_read_only_disk(str(sys_block), "/dev")
