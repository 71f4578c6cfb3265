"""The guest's command line and kernel command line parsing."""

from __future__ import annotations

import pytest

from cleanroom.agent.channel import channel_spec_from_cmdline, open_channel
from cleanroom.agent.errors import AgentError
from cleanroom.agent.guest import _parse_args


def test_channel_from_kernel_cmdline() -> None:
    line = "console=hvc0 quiet cleanroom.channel=virtio-serial:org.cleanroom.agent panic=-1\n"
    assert channel_spec_from_cmdline(line) == "virtio-serial:org.cleanroom.agent"
    assert channel_spec_from_cmdline("console=hvc0 quiet") is None


def test_arguments() -> None:
    args = _parse_args(["--channel", "stdio", "--workspace=/tmp/ws"])
    assert (args.channel, args.workspace) == ("stdio", "/tmp/ws")
    default = _parse_args([])
    assert (default.channel, default.workspace) == (None, "/workspace")


@pytest.mark.parametrize("argv", [["--bogus"], ["--channel"], ["stdio"]])
def test_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 -- the message is for humans
        _parse_args(argv)


@pytest.mark.parametrize(
    "spec", ["tcp:1234", "virtio-serial:", "virtio-serial:../etc/passwd", "vsock:x", "stdio:1"]
)
def test_invalid_channel_specs(spec: str) -> None:
    with pytest.raises(AgentError, match="invalid channel spec"):
        open_channel(spec)
