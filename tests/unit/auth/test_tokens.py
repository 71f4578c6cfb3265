"""The token store: hashed at rest, atomic 0600 file, revocation seen without a reload call."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from cleanroom.errors import ConfigInvalid, InvalidRequest, NotFound
from cleanroom.tokens import TOKEN_PREFIX, TokenStore, default_token_file, token_digest


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "state" / "tokens.json")


def test_default_file_is_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_token_file() == tmp_path / "cleanroom" / "tokens.json"
    assert TokenStore().path == default_token_file()


def test_create_stores_only_the_digest(store: TokenStore) -> None:
    token = store.create("ci")
    assert token.startswith(TOKEN_PREFIX)
    assert len(token) >= len(TOKEN_PREFIX) + 43  # 32 random bytes, base64url
    text = store.path.read_text()
    assert token not in text
    assert token[len(TOKEN_PREFIX) :] not in text
    doc = json.loads(text)
    assert doc["version"] == 1
    assert [t["name"] for t in doc["tokens"]] == ["ci"]
    assert doc["tokens"][0]["sha256"] == token_digest(token)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert [p.name for p in store.path.parent.iterdir() if p.name.startswith(".tokens-")] == []


def test_verify_names_the_token(store: TokenStore) -> None:
    assert store.verify("cr_anything") is None  # no file: nothing is accepted
    one, two = store.create("one"), store.create("two")
    assert one != two
    assert store.verify(one) == "one"
    assert store.verify(two) == "two"
    assert store.verify(one + "x") is None
    assert store.verify("") is None
    assert store.verify("x" * 10_000) is None
    assert [r.name for r in store.records()] == ["one", "two"]


def test_revocation_is_seen_by_another_store_without_reload(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    server, cli = TokenStore(path), TokenStore(path)
    token = cli.create("ci")
    assert server.verify(token) == "ci"
    cli.revoke("ci")
    assert server.verify(token) is None
    again = cli.create("ci")  # the name is free again, with a new secret
    assert server.verify(again) == "ci"
    assert server.verify(token) is None


def test_names_are_checked(store: TokenStore) -> None:
    store.create("ci")
    with pytest.raises(InvalidRequest, match="exists"):
        store.create("ci")
    for bad in ("", "-x", "a b", "x" * 65, "a/b", "é"):
        with pytest.raises(InvalidRequest):
            store.create(bad)
    with pytest.raises(NotFound):
        store.revoke("nobody")


def test_concurrent_creates_lose_nothing(store: TokenStore) -> None:
    tokens: dict[str, str] = {}

    def make(name: str) -> None:
        tokens[name] = TokenStore(store.path).create(name)

    threads = [threading.Thread(target=make, args=(f"t{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.name for r in store.records()) == sorted(tokens)
    assert all(store.verify(token) == name for name, token in tokens.items())


def test_an_untrusted_file_fails_closed(store: TokenStore) -> None:
    token = store.create("ci")
    store.path.chmod(0o644)
    with pytest.raises(ConfigInvalid, match="0600"):
        store.verify(token)
    store.path.chmod(0o600)
    assert store.verify(token) == "ci"


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"version": 2, "tokens": []}',
        '{"version": 1, "tokens": [], "extra": 1}',
        '{"version": 1, "tokens": [{"name": "a", "sha256": "zz", "created_at": "t"}]}',
        '{"version": 1, "tokens": [{"name": "a", "sha256": "' + "0" * 64 + '"}]}',
    ],
)
def test_a_broken_file_fails_closed(store: TokenStore, content: str) -> None:
    store.create("ci")
    fd = os.open(store.path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, content.encode())
    os.close(fd)
    with pytest.raises(ConfigInvalid):
        store.verify("cr_x")
    with pytest.raises(ConfigInvalid):
        store.create("other")


def test_a_symlinked_file_is_refused(store: TokenStore, tmp_path: Path) -> None:
    elsewhere = TokenStore(tmp_path / "real.json")
    elsewhere.create("ci")
    store.path.parent.mkdir(parents=True)
    store.path.symlink_to(elsewhere.path)
    with pytest.raises(ConfigInvalid):
        store.records()
