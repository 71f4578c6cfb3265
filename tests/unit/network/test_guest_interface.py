"""The network layer's guest settings carry exactly what the agent's configure message needs.

The network layer does not import the agent (it describes eth0 with
``cleanroom.netspec.GuestInterface``); the service turns that into the agent's
``GuestNetwork``. These tests keep the two in step.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, cast

from cleanroom.agent.messages import ConfigureRequest, GuestNetwork
from cleanroom.netspec import GuestInterface

IFACE = GuestInterface("10.99.0.2", 24, "10.99.0.1", "10.99.0.1", "02:00:00:aa:bb:cc")


def test_same_fields_as_the_agent_message() -> None:
    assert [(f.name, f.type, f.default) for f in fields(GuestInterface)] == [
        (f.name, f.type, f.default) for f in fields(GuestNetwork)
    ]
    assert asdict(GuestNetwork(**asdict(IFACE))) == asdict(IFACE)


def test_configure_frame_is_the_same_either_way() -> None:
    # The run path still hands RunNetwork.guest straight to the agent client.
    direct = ConfigureRequest(network=cast(Any, IFACE)).to_frame()
    assert direct == ConfigureRequest(network=GuestNetwork(**asdict(IFACE))).to_frame()
