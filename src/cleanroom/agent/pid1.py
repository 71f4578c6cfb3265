"""The VM's init (PID 1): prepare the system, start the agent, reap orphans, power off.

Stdlib only: this module runs inside the guest. ``run_init`` mounts the pseudo
filesystems, then either mounts the workspace disk at the workspace or, with
``cleanroom.image=1`` on the kernel command line, builds the user image's
command root (:mod:`cleanroom.agent.imageroot`), sets the hostname and forks:
the child serves the session, the parent stays init -- it reaps every orphan
(so the agent's own ``waitpid`` on its commands never loses a status to a
global reaper) and, when the agent child exits for any reason, syncs and
powers the VM off.
"""

from __future__ import annotations

import os
import sys

from cleanroom.agent import imageroot, sysops

# The guest imports no `typing` (a quarter second of a cold start under emulation).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Serve = Callable[[imageroot.CommandRoot | None, str | None], int]

__all__ = ["EXIT_NO_POWER_OFF", "run_init"]

EXIT_NO_POWER_OFF = 4
"""Returned only if the kernel refused to power off."""


def run_init(workspace: str, serve: Serve, log: Callable[[str], None]) -> int:
    """Be PID 1. ``serve(root, root_problem)`` runs the agent session in the child:
    ``root`` the user image's command root, ``root_problem`` why it could not be
    built (a user image was asked for); both None without a user image."""
    sysops.console_stdio()
    for problem in sysops.init_mounts():
        log(f"mount {problem}")
    root: imageroot.CommandRoot | None = None
    root_problem: str | None = None
    snapshot = sysops.snapshot_mode_requested(sysops.read_cmdline())
    if imageroot.image_mode_requested(sysops.read_cmdline()):
        try:
            # In snapshot mode the workspace disk is mounted after the restore.
            root = imageroot.setup_command_root(workspace, mount_workspace=not snapshot)
        except imageroot.ImageRootError as exc:
            root_problem = str(exc)
            log(f"user image: {root_problem}")
    elif not snapshot:
        # In snapshot mode the disk now attached is a placeholder: the agent
        # mounts the run's own disk at its first configure, after the restore.
        try:
            sysops.mount_workspace_disk(workspace)
        except OSError as exc:
            log(f"workspace disk: {exc}")
    try:
        sysops.set_hostname("cleanroom")
    except OSError as exc:
        log(f"hostname: {exc}")
    agent = os.fork()
    if agent == 0:
        status = 70
        try:
            status = serve(root, root_problem)
        except BaseException:  # noqa: BLE001 -- the child must reach os._exit
            sys.excepthook(*sys.exc_info())
        finally:
            os._exit(status)
    while True:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        if pid == agent:
            break
    log("agent finished; powering off")
    sysops.power_off()
    return EXIT_NO_POWER_OFF
