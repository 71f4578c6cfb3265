"""A hostile "guest agent": speaks the protocol just well enough, then misbehaves.

Run as ``python hostile_agent.py MODE`` with the agent channel on stdin/stdout
(what :class:`HostileBackend` in ``test_hostile_agent`` hands it). It answers
HELLO, CONFIGURE, the workspace stream and BASELINE like the real agent unless
MODE says otherwise, and breaks the protocol in one way per MODE:

``hello_malformed``  HELLO payload is not JSON
``hello_nested``     HELLO payload is 10 KB of nested JSON arrays
``hello_oversized``  a frame header announcing 4 GiB
``hello_unknown``    a frame of an unknown type
``hello_endless``    a 1 MiB frame whose payload trickles and never ends
``out_of_order``     answers HELLO, then sends EXIT before any request
``exit_nested``      the EXIT of the command is deeply nested JSON
``exit_wrong_keys``  the EXIT carries an unknown key
``output_endless``   the command's stdout never ends, and no EXIT comes
``output_trickle``   a stdout frame that announces 64 KiB and never completes
"""

from __future__ import annotations

import json
import os
import sys
import time

from cleanroom.agent.protocol import (
    AGENT_VERSION,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameType,
    encode_frame,
)


def send(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def send_json(ftype: FrameType, obj: object) -> None:
    send(encode_frame(ftype, json.dumps(obj).encode()))


def frames(decoder: FrameDecoder):  # type: ignore[no-untyped-def]
    while True:
        while (frame := decoder.pop()) is None:
            data = os.read(0, 65536)
            if not data:
                return
            decoder.push(data)
        yield frame


def hello() -> None:
    send_json(
        FrameType.HELLO,
        {
            "agent_version": AGENT_VERSION,
            "protocol_version": PROTOCOL_VERSION,
            "kernel": "hostile",
            "python": "hostile",
        },
    )


def trickle_forever(header_len: int, ftype: int) -> None:
    send(header_len.to_bytes(4, "big") + bytes([ftype]))
    while True:
        send(b"[")
        time.sleep(0.05)


def on_exec(mode: str) -> None:
    if mode == "exit_nested":
        send(encode_frame(FrameType.EXIT, b"[" * 10_000 + b"]" * 10_000))
    elif mode == "exit_wrong_keys":
        send_json(FrameType.EXIT, {"exit_code": 0, "surprise": 1})
    elif mode == "output_endless":
        chunk = encode_frame(FrameType.STDOUT, b"y" * 65536)
        while True:
            send(chunk)
    elif mode == "output_trickle":
        trickle_forever(65536, FrameType.STDOUT)


def main() -> None:
    mode = sys.argv[1]
    decoder = FrameDecoder()
    stream = frames(decoder)
    next(stream)  # the host's HELLO
    if mode == "hello_malformed":
        send(encode_frame(FrameType.HELLO, b"{not json"))
    elif mode == "hello_nested":
        send(encode_frame(FrameType.HELLO, b"[" * 5_000 + b"]" * 5_000))
    elif mode == "hello_oversized":
        send((0xFFFFFFFF).to_bytes(4, "big") + bytes([FrameType.HELLO]) + b"x" * 1024)
    elif mode == "hello_unknown":
        send(encode_frame(FrameType.HELLO, b"{}")[:4] + b"\x99{}")
    elif mode == "hello_endless":
        trickle_forever(1 << 20, FrameType.HELLO)
    else:
        hello()
    if mode == "out_of_order":
        send_json(FrameType.EXIT, {"exit_code": 0})
    for frame in stream:
        if frame.type is FrameType.CONFIGURE:
            send_json(FrameType.CONFIGURED, {})
        elif frame.type in (FrameType.WORKSPACE_END, FrameType.BASELINE):
            send_json(FrameType.WORKSPACE_DONE, {"files": 0, "bytes": 0, "skipped": 0})
        elif frame.type is FrameType.EXEC:
            on_exec(mode)
        elif frame.type is FrameType.SHUTDOWN:
            send(encode_frame(FrameType.GOODBYE, b""))
            return
    time.sleep(3600)  # the host closed the channel: linger until killed


if __name__ == "__main__":
    main()
