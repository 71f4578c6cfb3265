"""The service's warm pools, one per backend and image (``pool: {size, images}``).

The built-in image's pool starts with the server and is also made on first
use, as it always was. A user image listed in ``pool.images`` is made ready
(pulled or built if the cache lacks it) in the background after start, then
pooled; a run whose image has no pool, or whose machine is not the backend's
default size (pooled guests are), boots cold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from cleanroom import paths
from cleanroom.backends import Backend
from cleanroom.config import BUILTIN_IMAGE, ImagesConfig, PoolConfig
from cleanroom.config_limits import DEFAULT_CONSOLE_LOG_BYTES
from cleanroom.errors import CleanroomError
from cleanroom.images import UserImage, ensure_user_image
from cleanroom.policy.image import OciImage, require_image_ref
from cleanroom.service.boots import BootGate
from cleanroom.service.network import RunNetworks
from cleanroom.service.pool import WarmPool

__all__ = ["PoolKey", "Pools", "pool_check_name", "resolve_pool_image"]

log = structlog.get_logger("cleanroom.pool")

PoolKey = tuple[str, str | None]
"""(backend name, user image key or None for the built-in image)."""


def pool_check_name(key: PoolKey) -> str:
    """The doctor check's name: ``pool.<backend>`` or ``pool.<backend>.<key prefix>``."""
    backend, image = key
    return f"pool.{backend}" if image is None else f"pool.{backend}.{image[7:19]}"


class Pools:
    """Warm pools by (backend, image). Use from one asyncio loop."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        launch_seconds: Callable[[str], float],
        network: Callable[[], RunNetworks | None],
        boots: BootGate,
        console_log_bytes: int = DEFAULT_CONSOLE_LOG_BYTES,
    ) -> None:
        """``launch_seconds(backend)`` and ``network()`` are read when a pool is made;
        every pooled guest's console log is capped at ``console_log_bytes``."""
        self._config = config
        self._console_log_bytes = console_log_bytes
        self._launch_seconds = launch_seconds
        self._network = network
        self._boots = boots
        self._pools: dict[PoolKey, WarmPool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether any guests are kept warm."""
        return self._config.size > 0 and not self._closed

    def get(self, backend: str, image: str | None = None) -> WarmPool | None:
        """The pool of ``backend`` and image key ``image`` (None: the built-in image)."""
        return self._pools.get((backend, image))

    def items(self) -> list[tuple[PoolKey, WarmPool]]:
        """Every pool started so far."""
        return list(self._pools.items())

    def start(self, name: str, backend: Backend, resolve: Callable[[str], UserImage]) -> None:
        """Start the configured pools of ``backend``; user images resolve in the background.

        ``resolve`` turns a ``pool.images`` entry into its image (blocking: it may
        pull or build); a failure is logged and that image is simply not pooled.
        """
        if not self.enabled:
            return
        for entry in self._config.images:
            if entry == BUILTIN_IMAGE:
                self.for_run(name, backend, None)
            else:
                task = asyncio.create_task(self._start_image(name, backend, entry, resolve))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _start_image(
        self, name: str, backend: Backend, entry: str, resolve: Callable[[str], UserImage]
    ) -> None:
        try:
            image = await asyncio.to_thread(resolve, entry)
        except CleanroomError as exc:
            log.warning(
                "warm pool image unavailable", image=entry, code=exc.code, error=exc.message
            )
            return
        self._make(name, backend, image)

    def for_run(self, name: str, backend: Backend, image: UserImage | None) -> WarmPool | None:
        """The pool a run of ``image`` on ``name`` may take a guest from (None: boot cold).

        The built-in image's pool is made on first use; a user image's only if
        ``pool.images`` lists it (then it was made at start).
        """
        if not self.enabled:
            return None
        if image is not None:
            return self._pools.get((name, image.key))
        if BUILTIN_IMAGE not in self._config.images:
            return None
        return self._pools.get((name, None)) or self._make(name, backend, None)

    def _make(self, name: str, backend: Backend, image: UserImage | None) -> WarmPool | None:
        if not self.enabled:
            return None
        key: PoolKey = (name, None if image is None else image.key)
        pool = self._pools.get(key)
        if pool is None:
            directory = name if image is None else f"{name}-{image.key[7:19]}"
            pool = WarmPool(
                backend,
                size=self._config.size,
                root=paths.state_dir() / "pool" / directory,
                launch_seconds=self._launch_seconds(name),
                # Pooled guests boot on reserved (drop-all) network slots when the
                # network layer can reserve them, so networked runs can be served warm.
                network=self._network(),
                boots=self._boots,
                image=image,
                console_log_bytes=self._console_log_bytes,
            )
            self._pools[key] = pool
            pool.start()
        return pool

    async def close(self) -> None:
        """Stop starting pools and destroy every pooled guest. Idempotent."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in self._pools.values():
            await pool.close()


def resolve_pool_image(entry: str, images: ImagesConfig) -> UserImage:
    """A ``pool.images`` ref (validated by the config) as a ready image (blocking).

    Raises ImageUnavailable."""
    return ensure_user_image(OciImage(require_image_ref(entry, "pool.images")), images=images)
