"""The real guest agent configures eth0 and resolv.conf in a private network namespace (root)."""

from __future__ import annotations

import os
import shutil

import pytest
from agent_harness import AgentFactory, Output

from cleanroom.agent import (
    GuestNetwork,
)


@pytest.mark.network
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
async def test_network_configuration_in_private_namespace(
    agents: AgentFactory,
) -> None:
    # A private mount+network namespace with a veth pair standing in for the VM's eth0
    # and a private /etc/resolv.conf; everything vanishes with the agent process.
    setup = (
        "ip link add eth0 type veth peer name peer0 && ip link set peer0 up"
        ' && resolv=$(mktemp) && mount --bind "$resolv" /etc/resolv.conf && rm "$resolv"'
        ' && exec "$@"'
    )
    prefix = ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", setup, "sh"]
    agent = await agents.start(prefix=prefix)
    net = GuestNetwork("10.99.0.2", 24, "10.99.0.1", "10.99.0.53", "02:00:00:aa:bb:cc")
    await agent.client.configure(network=net)
    out = Output()
    script = (
        "ip -4 -o addr show dev eth0; ip route show default; ip -o link show dev eth0;"
        " cat /etc/resolv.conf"
    )
    status = await agent.client.exec(["sh", "-c", script], cwd="/", on_output=out)
    assert status.exit_code == 0, bytes(out.stderr)
    text = bytes(out.stdout).decode()
    assert "inet 10.99.0.2/24" in text
    assert "default via 10.99.0.1 dev eth0" in text
    assert "02:00:00:aa:bb:cc" in text
    assert "nameserver 10.99.0.53" in text
    status_code, stderr = await agent.finish()
    assert status_code == 0
    assert "Traceback" not in stderr
