"""The README's promises: the two set-up commands exist, and its curl example runs verbatim."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLI = str(Path(sys.executable).with_name("cleanroom"))


def test_quick_start_names_exactly_the_two_scripts() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert [c.strip() for c in commands] == ["./scripts/quickstart", "./scripts/test"]
    for script in ("quickstart", "test"):
        assert os.access(ROOT / "scripts" / script, os.X_OK)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in ci
