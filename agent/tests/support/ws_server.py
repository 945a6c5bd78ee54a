"""A WebSocket server written with the Python `websockets` package (nobody here wrote
it), speaking the rooms protocol of `murmur demo-server websocket` so that the same
journeys run against both:

  {"join": ROOM}         every member (the joiner too) gets {"joined": ROOM, "members": N}
  {"room": ROOM, ...}    the message goes to every other member of ROOM
  anything else          echoed back

Usage: python3 ws_server.py [--cert CERT.pem --key KEY.pem] [--close-after N]
Prints "listening on HOST:PORT" once it accepts connections (port chosen by the system).
--close-after N closes each connection after it has received N messages (a server
that goes away mid-journey).
"""

import argparse
import asyncio
import json
import ssl
import sys

import websockets

rooms = {}


async def session(ws, close_after):
    joined = set()
    received = 0
    try:
        async for message in ws:
            received += 1
            if close_after and received >= close_after:
                await ws.close()
                return
            try:
                data = json.loads(message)
            except (ValueError, TypeError):
                data = None
            if isinstance(data, dict) and isinstance(data.get("join"), str):
                room = data["join"]
                members = rooms.setdefault(room, set())
                members.add(ws)
                joined.add(room)
                note = json.dumps({"joined": room, "members": len(members)})
                websockets.broadcast(members, note)
            elif isinstance(data, dict) and isinstance(data.get("room"), str):
                members = rooms.get(data["room"], set())
                websockets.broadcast([m for m in members if m is not ws], message)
            else:
                await ws.send(message)
    except websockets.ConnectionClosed:
        pass
    finally:
        for room in joined:
            members = rooms.get(room, set())
            members.discard(ws)
            if not members:
                rooms.pop(room, None)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--close-after", type=int, default=0)
    a = p.parse_args()
    tls = None
    if a.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(a.cert, a.key)
    async with websockets.serve(
        lambda ws: session(ws, a.close_after), "127.0.0.1", 0, ssl=tls, backlog=4096
    ) as server:
        host, port = list(server.sockets)[0].getsockname()[:2]
        print(f"listening on {host}:{port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
