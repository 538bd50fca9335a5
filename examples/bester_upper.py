#!/usr/bin/env python3
"""Example Bester message handler for homehub: upper-cases text and sends it on.

The hub connects to this handler's Unix socket once per message, sends the message's
`payload.data` as one frame ([4-byte little-endian length][JSON]) and waits for one reply
frame. This handler expects data like

    {"text": "hello", "to": ["bob"]}                      -> sendClients to bob: {"text": "HELLO"}
    {"text": "hello", "to": ["bob"], "servers": ["h:p"]}  -> sendServers to h:p (the rest of the data)
    {"text": "hello", "to": ["bob"], "chain": ["x", "y"]} -> sendHandler to x (with chain ["y"])

and answers anything else with a failure status. Replies use the seed's shape:
{"header": {"status", "command", "commandData"}, "payload": {"type", "data"}}.

Usage: bester_upper.py [SOCKET_PATH]   (default: $BESTER_SOCKET, set by the hub when it
starts the handler itself). Standard library only.
"""

import json
import os
import socketserver
import struct
import sys

HANDLER_TYPE = os.environ.get("BESTER_TYPE", "upper")
MAX_FRAME = 1 << 20


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock):
    prefix = read_exact(sock, 4)
    if prefix is None:
        return None
    (length,) = struct.unpack("<I", prefix)
    if length > MAX_FRAME:
        return None
    return read_exact(sock, length)


def write_frame(sock, message):
    body = json.dumps(message).encode("utf-8")
    sock.sendall(struct.pack("<I", len(body)) + body)


def reply(command, command_data, data):
    return {
        "header": {"status": "ok", "command": command, "commandData": command_data},
        "payload": {"type": HANDLER_TYPE, "data": data},
    }


def failure(reason):
    return {"header": {"status": "1"}, "payload": {"type": HANDLER_TYPE, "data": {"error": reason}}}


def handle(data):
    if not isinstance(data, dict) or not isinstance(data.get("text", ""), str):
        return failure('expected {"text": string, "to": [usernames]}')
    chain = data.get("chain") or []
    if chain:
        return reply("sendHandler", chain[0], dict(data, chain=chain[1:]))
    servers = data.get("servers") or []
    if servers:
        rest = {k: v for k, v in data.items() if k != "servers"}
        return reply("sendServers", servers, rest)
    return reply("sendClients", data.get("to", []), {"text": data.get("text", "").upper()})


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        frame = read_frame(self.request)
        if frame is None:  # a probe, or a frame over our limit: nothing to answer
            return
        try:
            data = json.loads(frame.decode("utf-8"))
        except ValueError:
            write_frame(self.request, failure("data is not JSON"))
            return
        write_frame(self.request, handle(data))


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BESTER_SOCKET")
    if not path:
        sys.exit("usage: bester_upper.py SOCKET_PATH (or set BESTER_SOCKET)")
    if os.path.exists(path):
        os.unlink(path)  # a stale socket from an earlier run
    with socketserver.ThreadingUnixStreamServer(path, Handler) as server:
        server.daemon_threads = True
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
