"""CLI start-up: wall time of short ``cleanroom`` processes, and of importing the exec path.

Usage: ``python bench/cli_startup.py [-n N] [--bytecode-cache] [--host URL -c DIR] [--json]``

Every sample is one new process, timed from spawn to exit:

- ``python -c pass``: the interpreter's own floor;
- ``import exec path``: ``import cleanroom.cli.app, cleanroom.client`` (what
  ``cleanroom exec`` loads before its first request);
- ``cleanroom --version`` and ``cleanroom --help``;
- ``exec, no server``: ``cleanroom exec --host unix:///nonexistent -- true``,
  which fails fast (exit 69) after parsing, importing the client and checking
  the socket: start-up without a guest;
- with ``--host URL -c DIR``: ``cleanroom exec`` of ``true`` against that
  running server (start-up plus a warm run).

``--bytecode-cache`` runs the processes with a private ``PYTHONPYCACHEPREFIX``
(warmed by a discarded first run), as an installed package would; without it
the environment is used as is (with ``PYTHONDONTWRITEBYTECODE`` set, the
project's modules are compiled from source in every process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import CLI, emit_json, host_facts, print_table, summarize


def _time_ms(argv: Sequence[str], env: dict[str, str], expect: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != expect:
        raise SystemExit(
            f"{' '.join(argv)} exited {done.returncode}, expected {expect}: "
            f"{done.stderr.decode(errors='replace')[-500:]}"
        )
    return elapsed


def _cases(host: str | None, cwd: Path | None) -> list[tuple[str, list[str], int]]:
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"], 0),
        (
            "import exec path",
            [sys.executable, "-c", "import cleanroom.cli.app, cleanroom.client"],
            0,
        ),
        ("cleanroom --version", [CLI, "--version"], 0),
        ("cleanroom --help", [CLI, "--help"], 0),
        ("exec, no server", [CLI, "exec", "--host", "unix:///nonexistent", "--", "true"], 69),
    ]
    if host is not None:
        cases.append(
            (
                "exec true (warm server)",
                [CLI, "exec", "--host", host, "-c", str(cwd), "--", "true"],
                0,
            )
        )
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="Samples per case (default 20).")
    ap.add_argument("--bytecode-cache", action="store_true", help="Use a private bytecode cache.")
    ap.add_argument("--host", help="A running server to time a real `exec -- true` against.")
    ap.add_argument("-c", "--cwd", type=Path, help="Directory with the policy (with --host).")
    ap.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = ap.parse_args()
    if args.host is not None and args.cwd is None:
        ap.error("--host needs -c DIR (a directory holding cleanroom.yaml)")

    env = {k: v for k, v in os.environ.items() if k != "CLEANROOM_HOST"}
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as cache:
        if args.bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
        results: dict[str, dict[str, float]] = {}
        for name, argv, expect in _cases(args.host, args.cwd):
            _time_ms(argv, env, expect)  # warms the page cache (and the bytecode cache)
            results[name] = summarize([_time_ms(argv, env, expect) for _ in range(args.n)])

    if args.json:
        emit_json(
            {
                "benchmark": "cli_startup",
                "samples": args.n,
                "bytecode_cache": args.bytecode_cache,
                "host": host_facts(),
                "results_ms": results,
            }
        )
    else:
        cache_note = "private bytecode cache" if args.bytecode_cache else "environment as is"
        print_table(f"CLI start-up, {args.n} processes each ({cache_note})", list(results.items()))


if __name__ == "__main__":
    main()
