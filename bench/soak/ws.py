#!/usr/bin/env python3
"""WebSocket pieces of bench/soak.sh, with nothing beyond the standard library.

    ws.py upstream PORT                      an echo server (answers the handshake, echoes frames)
    ws.py client HOST PORT PATH STATUS_FILE  opens one connection through the gateway and sends a
                                             message every 2 s, checking each echo; writes its
                                             state to STATUS_FILE ("open N" after N echoes, or
                                             "FAILED why") and exits 1 on the first failure.

The client holds its single connection for as long as it runs: the soak fails if the gateway
closes it (a reload must leave upgraded connections alone).
"""
import asyncio
import base64
import hashlib
import os
import signal
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def encode(opcode: int, data: bytes, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    n = len(data)
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        head += key
    return head + data


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, data


def parse_head(head: bytes):
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def serve(reader, writer):
    try:
        start, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        key = headers.get("sec-websocket-key", "")
        if not key or headers.get("upgrade", "").lower() != "websocket":
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.encode()) + b"\r\n\r\n"
        )
        await writer.drain()
        while True:
            op, data = await read_frame(reader)
            if op == 8:  # close: answer it and stop
                writer.write(encode(8, data[:2], False))
                await writer.drain()
                return
            if op == 9:  # ping
                writer.write(encode(10, data, False))
            elif op in (1, 2):
                writer.write(encode(op, data, False))
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def upstream(port: int):
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def write_status(path: str, text: str):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


async def client(host: str, port: int, path: str, status: str):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n".encode()
        + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    await writer.drain()
    start, headers = parse_head(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
    if " 101 " not in start + " ":
        raise RuntimeError(f"handshake answered {start!r}")
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise RuntimeError("handshake: wrong Sec-WebSocket-Accept")
    echoes = 0
    write_status(status, f"open {echoes}")
    while not stop.is_set():
        message = f"soak {echoes + 1} {time.time():.3f}".encode()
        writer.write(encode(1, message, True))
        await writer.drain()
        op, data = await asyncio.wait_for(read_frame(reader), 10)
        if op != 1 or data != message:
            raise RuntimeError(f"echo {echoes + 1}: got opcode {op} {data[:60]!r}")
        echoes += 1
        write_status(status, f"open {echoes}")
        try:
            await asyncio.wait_for(stop.wait(), 2)
        except asyncio.TimeoutError:
            pass
    # Still open at the end: say goodbye properly.
    writer.write(encode(8, struct.pack("!H", 1000), True))
    await writer.drain()
    write_status(status, f"closed-by-client {echoes}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "upstream":
        asyncio.run(upstream(int(sys.argv[2])))
    elif len(sys.argv) == 6 and sys.argv[1] == "client":
        status = sys.argv[5]
        try:
            asyncio.run(client(sys.argv[2], int(sys.argv[3]), sys.argv[4], status))
        except Exception as e:  # noqa: BLE001 - any failure ends the soak's connection
            write_status(status, f"FAILED {type(e).__name__}: {e}")
            sys.exit(1)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
