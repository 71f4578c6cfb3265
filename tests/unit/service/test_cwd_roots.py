"""Which server directories a caller may name: any on the unix socket, over TCP
only those under ``workspace.roots`` (symlinks resolved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cleanroom.errors import InvalidRequest
from cleanroom.server.origin import over_unix_socket
from cleanroom.service.checks import check_cwd


def test_local_callers_may_name_any_directory(tmp_path: Path) -> None:
    check_cwd(tmp_path, (), local=True)


def test_remote_callers_only_under_roots(tmp_path: Path) -> None:
    root = tmp_path / "repos"
    (root / "a").mkdir(parents=True)
    (tmp_path / "repos2").mkdir()
    (tmp_path / "secret").mkdir()
    (root / "sneaky").symlink_to(tmp_path / "secret")
    check_cwd(root, (root,), local=False)
    check_cwd(root / "a", (root,), local=False)
    for outside in (tmp_path / "repos2", tmp_path / "secret", root / "sneaky", root / ".."):
        with pytest.raises(InvalidRequest) as caught:
            check_cwd(outside, (root,), local=False)
        assert caught.value.details["roots"] == [str(root)]
    with pytest.raises(InvalidRequest, match="upload the workspace"):
        check_cwd(root / "a", (), local=False)


@pytest.mark.parametrize(
    ("server", "local"),
    [
        (("/run/cleanroom.sock", None), True),
        (("127.0.0.1", 8765), False),
        (("::1", 8765), False),
        (None, False),
    ],
)
def test_origin_of_a_connection(server: object, local: bool) -> None:
    assert over_unix_socket({"type": "http", "server": server}) is local
