"""apt's candidates for the guest image inputs, resolved once per test session.

Resolving runs ``apt-cache`` (seconds on a busy machine). The product keeps the
answer in the image cache, so a test with a private ``$XDG_CACHE_HOME`` seeds
it with :func:`seed_candidates`, as a user's cache already holds it.
"""

from __future__ import annotations

import pytest

from cleanroom.images import image_digest
from cleanroom.images.cache import _CANDIDATES_CACHE
from cleanroom.paths import images_dir

__all__ = ["apt_candidates", "seed_candidates"]


@pytest.fixture(scope="session")
def apt_candidates(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The image cache's candidates file, resolved in a cache of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("apt-cache")))
        image_digest()
        return (images_dir() / _CANDIDATES_CACHE).read_bytes()


def seed_candidates(candidates: bytes) -> None:
    """Put ``candidates`` into the current (private) image cache."""
    images_dir().mkdir(parents=True, exist_ok=True)
    (images_dir() / _CANDIDATES_CACHE).write_bytes(candidates)
