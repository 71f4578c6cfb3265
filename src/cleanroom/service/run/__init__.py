"""The run path, one job per module.

:func:`execute_run` (``run``) drives one run: :func:`obtain_guest`
(``obtain``: warm from the pool or cold-booted through
``cleanroom.service.greet``, with the run's network), then
``transfer`` (configure, workspace) and ``execute`` (the command). Everything
the run holds is owned by ``resources`` and released on every exit path.
"""

from __future__ import annotations

from cleanroom.service.run.obtain import WARM_STREAM_LIMIT, Obtained, obtain_guest
from cleanroom.service.run.plan import Defer, RunPlan
from cleanroom.service.run.resources import NetworkHold, RunResources
from cleanroom.service.run.run import execute_run

__all__ = [
    "WARM_STREAM_LIMIT",
    "Defer",
    "NetworkHold",
    "Obtained",
    "RunPlan",
    "RunResources",
    "execute_run",
    "obtain_guest",
]
