"""The warm pool: guests booted ahead of time, each used by exactly one run.

A pooled guest is an ordinary guest of its backend (own fresh copy-on-write
rootfs) that has already answered the agent hello. Without a network layer
it has no NIC at all; with one (:class:`~cleanroom.service.network.RunNetworks`),
it boots on a reserved network slot: its TAP exists from boot (microVMs cannot hot-plug a
NIC) but the slot's table drops everything, so there is no network path out
until a run claims the guest and activates the slot with its policy. A run
takes one, sends its workspace and command, and destroys it afterwards
exactly as it would a cold guest, so every run still gets a fresh guest and a
fresh rootfs. Taking never waits: an empty pool is a miss and the
run boots cold. Each take starts a refill in the background. A refill
restores the guest from the backend's snapshot when one fits (a fraction of a
boot), else boots it, exactly as a run's guest starts.

A pool belongs to one backend instance (whose runtime image, vCPUs and memory
are fixed for the server's lifetime) and one user image (or the built-in
image): that pair is the pool's key, and only runs of that image at the
backend's default machine size take its guests.
A guest's slot is released with the guest (by the run's cleanup or by the pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import shutil
import tarfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from cleanroom.agent import AgentClient
from cleanroom.backends.base import Backend, Guest, GuestSpec
from cleanroom.config_limits import DEFAULT_CONSOLE_LOG_BYTES
from cleanroom.errors import CleanroomError
from cleanroom.images.userimage import UserImage
from cleanroom.service.boots import BootGate
from cleanroom.service.greet import Greeted, boot_and_greet, restore_and_greet
from cleanroom.service.ids import new_run_id
from cleanroom.service.network import RunNetworks, Slot

__all__ = ["CLAIM_SECONDS", "POLISHED_PASSES", "REFILL_GRACE", "Polish", "WarmGuest", "WarmPool"]

log = structlog.get_logger("cleanroom.pool")

_RETRY_SECONDS = 5.0

SELF_TEST_ROUNDS = 3
"""Passes of the self-test of a booted guest: the guest's Python specializes its
hot code only after a few executions, and under TCG the second pass is still
~2x the third."""

RESTORED_SELF_TEST_ROUNDS = 0
"""Whole passes before a guest restored from a snapshot counts as ready: none. Its
readiness check is a configure and a command (it serves runs, and it has paid
the restore's one-off costs: the workspace disk's mount, the emulator's first
translation of the configure and command paths); the workspace transfer's first
pass (~150 ms under TCG) and every later pass are polish."""

POLISHED_PASSES = 5
"""Passes a guest gets in all: those it lacks when it becomes ready run while it
waits in the pool, stopped between two steps when a run claims it. Measured on
a restored guest (TCG, 2 cores): a run's configure, two-file transfer, ``true``
and changes cost 8, 20, 21 and 12 ms after two passes, 2, 10, 11 and 3 ms
after five."""

CLAIM_SECONDS = 10.0
"""How long a run waits for a pooled guest's polish to end its request under way
(one request takes milliseconds; a guest that takes this long is stuck, and the
run starts another guest instead)."""

REFILL_GRACE = 1.0
"""Seconds after a hit before the refill starts, unless the run ends sooner."""


@dataclass(frozen=True)
class WarmGuest:
    """A booted guest whose agent has answered, waiting for a run."""

    guest: Guest
    client: AgentClient
    guest_dir: Path
    boot_ms: float
    """Launch to agent hello, spent in the background."""
    ready_at: float
    """``time.monotonic()`` when it became ready."""
    agent_version: str
    kernel: str
    slot: Slot | None = None
    """The reserved network slot the guest's NIC is on (None: no NIC)."""
    restored: bool = False
    """Restored from the backend's snapshot (else booted)."""
    fallback: str | None = None
    """For a booted guest: why it was not restored."""
    polish: Polish | None = None
    """The warm-up passes it gets while it waits (None: none)."""

    async def claim(self, timeout: float = CLAIM_SECONDS) -> int | None:
        """Stop the guest's polish and wait until its agent is idle; returns the
        number of self-test passes it had, or None if the guest is not fit for a
        run after all: its polish failed, or did not stop within ``timeout``
        seconds (a run calls this before its first request, and gives a guest it
        gets None for back with :meth:`WarmPool.discard`)."""
        if self.polish is None:
            return 0
        try:
            passes = await self.polish.stop(timeout)
        except TimeoutError:
            self.polish.cancel()
            return None
        return None if self.polish.failed is not None else passes

    def discard_dir(self) -> None:
        """Remove the guest's private directory (call after ``guest.destroy()``)."""
        shutil.rmtree(self.guest_dir, ignore_errors=True)


class WarmPool:
    """Keeps up to ``size`` ready guests of ``backend``. Use from one asyncio loop."""

    def __init__(
        self,
        backend: Backend,
        *,
        size: int,
        root: Path,
        launch_seconds: float,
        network: RunNetworks | None = None,
        boots: BootGate | None = None,
        console_log_bytes: int = DEFAULT_CONSOLE_LOG_BYTES,
        image: UserImage | None = None,
    ) -> None:
        """``image``: the user image every pooled guest attaches (None: the built-in one)."""
        self._backend = backend
        self._console_log_bytes = console_log_bytes
        self._image = image
        self._boots = boots
        self._network = network
        self._size = size
        self._root = root
        self._launch_seconds = launch_seconds
        self._ready: list[WarmGuest] = []
        self._booting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._changed = asyncio.Event()
        self.hits = 0
        self.misses = 0

    @property
    def size(self) -> int:
        """The configured number of warm guests."""
        return self._size

    @property
    def image(self) -> UserImage | None:
        """The user image of the pooled guests (None: the built-in image)."""
        return self._image

    @property
    def network(self) -> RunNetworks | None:
        """The provider pooled guests' network slots come from (None: guests have no NIC)."""
        return self._network

    @property
    def ready(self) -> int:
        """How many guests are ready right now."""
        return len(self._ready)

    def start(self) -> None:
        """Begin filling the pool in the background."""
        self._refill()

    def take(self) -> WarmGuest | None:
        """A ready guest (removed from the pool), or None on a miss. Never waits.

        The refill a hit causes starts when the claiming run calls
        :meth:`released`, or :data:`REFILL_GRACE` seconds after the take if
        that comes first: a boot is CPU-bound, and starting one at once would
        slow down the very run that emptied the pool.
        """
        while self._ready:
            warm = self._ready.pop(0)
            broken = warm.polish is not None and warm.polish.failed is not None
            if warm.guest.exited() is None and not broken:
                self.hits += 1
                asyncio.get_running_loop().call_later(REFILL_GRACE, self._refill)
                return warm
            log.warning("warm guest died or broke while idle", guest_dir=str(warm.guest_dir))
            self._spawn(self._discard(warm))
        self.misses += 1
        self._refill()
        return None

    def released(self) -> None:
        """A run that took a guest has finished with it: start refilling now."""
        self._refill()

    def discard(self, warm: WarmGuest) -> None:
        """Take back a guest :meth:`take` gave out that turned out unfit (see
        :meth:`WarmGuest.claim`): it is destroyed, and the take counts as a miss."""
        log.warning("warm guest unfit when claimed", guest_dir=str(warm.guest_dir))
        self.hits -= 1
        self.misses += 1
        self._spawn(self._discard(warm))
        self._refill()

    async def wait_ready(self, count: int | None = None, timeout: float = 120.0) -> None:
        """Wait until ``count`` (default: ``size``) guests are ready (for tests, benchmarks)."""
        want = self._size if count is None else count
        async with asyncio.timeout(timeout):
            while len(self._ready) < want:
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        """Stop refilling and destroy every pooled guest. Idempotent."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        ready, self._ready = self._ready, []
        await asyncio.gather(*(self._discard(w) for w in ready), return_exceptions=True)

    # -- internals ---------------------------------------------------------------------

    def _refill(self) -> None:
        if self._closed:
            return
        # One boot at a time: boots are CPU-bound and must not starve the runs.
        if self._booting == 0 and len(self._ready) < self._size:
            self._booting += 1
            self._spawn(self._fill())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self) -> None:
        try:
            while not self._closed and len(self._ready) < self._size:
                try:
                    if self._boots is not None:
                        async with self._boots.turn():
                            warm = await self._boot()
                    else:
                        warm = await self._boot()
                except CleanroomError as exc:
                    log.warning("warm guest failed to boot", code=exc.code, error=exc.message)
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                if self._closed:
                    await self._discard(warm)
                    return
                self._ready.append(warm)
                self._changed.set()
        finally:
            self._booting -= 1

    async def _boot(self) -> WarmGuest:
        guest_id = "pool-" + new_run_id().removeprefix("run-")
        guest_dir = self._root / guest_id
        guest_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            # Everything made so far is released unless the guest becomes ready.
            stack.callback(shutil.rmtree, guest_dir, ignore_errors=True)
            try:
                slot = None
                if self._network is not None:
                    slot = await self._network.reserve(guest_id)
                    stack.push_async_callback(_shielded, slot.release)
                spec = GuestSpec(
                    run_id=guest_id,
                    run_dir=guest_dir,
                    launch_seconds=self._launch_seconds,
                    network=slot.attachment if slot is not None else None,
                    console_log_bytes=self._console_log_bytes,
                    image=self._image,
                )

                def launched(guest: Guest) -> None:
                    stack.push_async_callback(_shielded, guest.destroy)

                # Restored from the backend's snapshot when one fits, else booted.
                restored = await restore_and_greet(self._backend, spec, launched)
                greeted = (
                    restored
                    if isinstance(restored, Greeted)
                    else await boot_and_greet(self._backend, spec, launched)
                )
                if isinstance(restored, str):
                    log.info("warm guest booted", reason=restored)
                in_user_image = self._image is not None
                if greeted is restored:
                    # Ready once it configures and runs a command; the rest is polish.
                    await _self_test(
                        greeted.client, in_user_image=in_user_image, rounds=1, transfer=False
                    )
                    rounds = RESTORED_SELF_TEST_ROUNDS
                else:
                    await _self_test(greeted.client, in_user_image=in_user_image)
                    rounds = SELF_TEST_ROUNDS
            except Exception as exc:
                if isinstance(exc, CleanroomError):
                    raise
                raise CleanroomError(f"warm guest failed: {exc}") from exc
            stack.pop_all()
        ready_at = time.monotonic()
        polish = None
        if rounds < POLISHED_PASSES:
            polish = Polish(
                greeted.client,
                in_user_image=in_user_image,
                rounds=POLISHED_PASSES - rounds,
                done_before=rounds,
            )
        return WarmGuest(
            guest=greeted.guest,
            client=greeted.client,
            guest_dir=guest_dir,
            boot_ms=(ready_at - started) * 1000,
            ready_at=ready_at,
            agent_version=greeted.info.agent_version,
            kernel=greeted.info.kernel,
            slot=slot,
            restored=greeted is restored,
            fallback=restored if isinstance(restored, str) else None,
            polish=polish,
        )

    async def _discard(self, warm: WarmGuest) -> None:
        if warm.polish is not None:
            warm.polish.cancel()
        with contextlib.suppress(Exception):
            await warm.client.close()
        await warm.guest.destroy()
        if warm.slot is not None:
            await warm.slot.release()
        warm.discard_dir()


async def _shielded(release: Callable[[], Awaitable[object]]) -> None:
    """Run ``release`` to the end even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(release())
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    task.result()


_ABSENT_COMMAND = "/.cleanroom-warmup-absent"
"""What the self-test runs in a user image: a user image need not have ``true``
(or anything at all), so the test asks for a path no image has, and expects
the agent's own "cannot start" answer (exit 127), having chrooted into the
image and switched to its user just as for a run's command."""


async def _self_test(
    client: AgentClient,
    *,
    in_user_image: bool = False,
    rounds: int = SELF_TEST_ROUNDS,
    transfer: bool = True,
) -> None:
    """Exercise the paths a run will use (configure, a workspace unless not
    ``transfer``, a command) ``rounds`` times.

    This proves the guest can serve a run before it counts as ready, and warms
    the emulator's translated-code cache for those paths: under TCG the first
    pass through them costs several times the later ones (a two-file
    workspace ~70 ms instead of ~23 ms, ``true`` ~240 ms instead of ~30 ms).
    Nothing of the user's runs here: the workspace archive is extracted into a
    scratch directory the agent removes again, so the guest's workspace is as
    empty as a cold one's.
    """

    for _ in range(rounds):
        for step in _self_test_steps(client, in_user_image=in_user_image, transfer=transfer):
            await step


def _self_test_steps(
    client: AgentClient, *, in_user_image: bool, transfer: bool = True
) -> Iterator[Coroutine[Any, Any, object]]:
    """One pass of the self-test as its steps (each one agent request), so a polish
    can stop between two of them."""
    argv, expected = ([_ABSENT_COMMAND], 127) if in_user_image else (["true"], 0)

    async def discard(stream: str, data: bytes) -> None:
        return None

    async def run() -> None:
        # In the workspace, as runs do; without a transfer it may not exist yet.
        cwd = None if transfer else "/"
        status = await client.exec(argv, cwd=cwd, on_output=discard)
        if status.exit_code != expected:
            raise CleanroomError(f"warm guest self-test failed (exit {status.exit_code})")

    yield client.configure(entropy_seed=os.urandom(64), network=None)
    if transfer:
        yield client.send_workspace([_warmup_archive()], read_only=False, scratch=True)
    yield run()


class Polish:
    """Self-test passes run on a ready guest while it waits in the pool.

    They only make the guest faster for the run that claims it (see
    :data:`POLISHED_PASSES`): a failure ends the polish quietly (``failed``), and
    :meth:`stop` ends it between two agent requests, so the claiming run waits
    for at most one of them.
    """

    def __init__(
        self, client: AgentClient, *, in_user_image: bool, rounds: int, done_before: int
    ) -> None:
        self._client = client
        self._in_user_image = in_user_image
        self._stopping = False
        self.passes = done_before
        """Whole self-test passes the guest has had so far."""
        self.failed: BaseException | None = None
        self._task = asyncio.ensure_future(self._run(rounds))

    async def _run(self, rounds: int) -> None:
        try:
            for _ in range(rounds):
                for step in _self_test_steps(self._client, in_user_image=self._in_user_image):
                    if self._stopping:
                        step.close()
                        return
                    await step
                self.passes += 1
        except Exception as exc:  # noqa: BLE001 - any failure: the pool discards the guest
            self.failed = exc
            log.warning("warm guest polish failed", error=str(exc))

    async def stop(self, timeout: float) -> int:
        """End the polish after the request under way; returns :attr:`passes`.
        Raises ``TimeoutError`` if that request has not ended within ``timeout``."""
        self._stopping = True
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.passes

    def cancel(self) -> None:
        """Abandon the polish (the guest is being destroyed)."""
        self._stopping = True
        self._task.cancel()


@functools.cache
def _warmup_archive() -> bytes:
    """A small tar archive shaped like a repository: directories, files, a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("src", "src/pkg"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(info)
        for name, size in (("README.md", 200), ("src/pkg/main.py", 3000), ("data.bin", 70000)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o644
            tf.addfile(info, io.BytesIO(bytes(size)))
        link = tarfile.TarInfo("src/link")
        link.type, link.linkname = tarfile.SYMTYPE, "pkg/main.py"
        tf.addfile(link)
    return buf.getvalue()
