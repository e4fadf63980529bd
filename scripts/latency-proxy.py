#!/usr/bin/env python3
"""A network between the functions and the emulators, as AWS has one: TLS, and a round trip's
delay on everything that crosses it (`scripts/dev bench --network`, and the tests that check
that calls overlap or that connections are reused).

Each upstream (an emulator's plaintext port on loopback) gets a TLS port of its own on
127.0.0.1. The delay is applied to the encrypted bytes, in both directions, half a round trip
each way, so that every exchange costs what it costs on a real network:

- a new connection waits one round trip before its first bytes are read (the TCP handshake:
  on loopback `connect` returns at once, so the client's ClientHello waits here instead), and
  its TLS 1.3 handshake then costs one more, as the messages cross;
- each request then costs one round trip (request half, response half), however small.

Towards the client a connection stays open as AWS keeps it: an emulator that closes its
connection after each answer (moto says `Connection: close`) gets a new upstream connection for
the next request, and the header is taken out of the answer, so that the connections counted
are the client's choice, not the emulator's.

The proxy counts, per upstream, the connections accepted, the TLS handshakes completed, the
HTTP requests seen (request lines in the decrypted stream) and the answers sent back, so a
caller can check that a warm function reuses its connection. A control port on 127.0.0.1 answers:

    GET  /stats            {"dynamodb": {"connections": n, "handshakes": n, "requests": n, "answers": n}, ...}
    POST /reset            sets every count to zero
    POST /rtt?ms=N         sets the round-trip delay (0 to 500 ms)

usage: latency-proxy.py --cert PEM --key PEM --rtt-ms N NAME=PORT [NAME=PORT ...]

Prints one JSON line, {"control": port, "NAME": port, ...}, once every port listens; serves
until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import sys
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_RTT_MS = 500.0
# A request line in the decrypted client stream: how requests are counted.
# An emulator's refusal to keep the connection, taken out of its answers.
CONNECTION_CLOSE = re.compile(rb"\r\nConnection: close(?=\r\n)", re.IGNORECASE)
# A status line in an emulator's answers: how answers are counted.
STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ")
REQUEST_LINE = re.compile(rb"(?:^|\r\n)(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) \S+ HTTP/1\.[01]\r\n")


class Network:
    """The delay every connection shares, and the counts."""

    def __init__(self, rtt_ms: float, names: list[str]):
        self.rtt = 0.0
        self.set_rtt(rtt_ms)
        self.counts = {n: {"connections": 0, "handshakes": 0, "requests": 0, "answers": 0} for n in names}

    def set_rtt(self, ms: float) -> None:
        if not 0 <= ms <= MAX_RTT_MS:
            raise ValueError(f"the round trip must be 0 to {MAX_RTT_MS:.0f} ms")
        self.rtt = ms / 1000

    def reset(self) -> None:
        for c in self.counts.values():
            for k in c:
                c[k] = 0


class DelayedWriter:
    """Writes chunks to a stream each `delay` after it was handed over, in order."""

    def __init__(self, writer: asyncio.StreamWriter, not_before: float = 0.0):
        self.writer = writer
        self.queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self.not_before = not_before
        self.task = asyncio.create_task(self._run())

    def send(self, data: bytes | None, delay: float) -> None:
        self.queue.put_nowait((max(time.monotonic() + delay, self.not_before), data))

    async def _run(self) -> None:
        try:
            while True:
                due, data = await self.queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                self.writer.close()
            except (ConnectionError, OSError, RuntimeError):
                pass


async def serve_connection(net: Network, name: str, upstream_port: int, ctx: ssl.SSLContext,
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    counts = net.counts[name]
    counts["connections"] += 1
    accepted = time.monotonic()
    handshake_rtt = net.rtt  # a change of the delay applies to what is sent after it
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
    to_client = DelayedWriter(writer)
    # The upstream connection, opened for the first request and again after the emulator closed
    # it (moto answers every request with `Connection: close`; AWS keeps connections open, and
    # so does this proxy towards the client, so what is counted is the client's behaviour).
    upstream: dict[str, Any] = {"writer": None, "pump": None, "closing": False}
    handshaken = False

    def flush_tls() -> None:
        data = outgoing.read()
        if data:
            to_client.send(data, net.rtt / 2)

    async def from_upstream(up_reader: asyncio.StreamReader) -> None:
        try:
            while data := await up_reader.read(65536):
                counts["answers"] += len(STATUS_LINE.findall(data))
                if CONNECTION_CLOSE.search(data):
                    upstream["closing"] = True
                    data = CONNECTION_CLOSE.sub(b"", data)
                tls.write(data)
                flush_tls()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        upstream["closing"] = True

    async def to_upstream(plain: bytes) -> None:
        if upstream["writer"] is None or upstream["closing"]:
            close_upstream()
            up_reader, upstream["writer"] = await asyncio.open_connection("127.0.0.1", upstream_port)
            upstream["closing"] = False
            upstream["pump"] = asyncio.create_task(from_upstream(up_reader))
        upstream["writer"].write(plain)
        await upstream["writer"].drain()

    def close_upstream() -> None:
        if upstream["writer"] is not None:
            try:
                upstream["writer"].close()
            except (ConnectionError, OSError, RuntimeError):
                pass
            upstream["writer"] = None

    try:
        # The client's bytes arrive half a round trip after they were sent, and none before the
        # TCP handshake's round trip is over.
        inbound: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_client() -> None:
            try:
                while data := await reader.read(65536):
                    inbound.put_nowait((max(time.monotonic() + net.rtt / 2, accepted + 1.5 * handshake_rtt), data))
            except (ConnectionError, OSError):
                pass
            inbound.put_nowait((time.monotonic() + net.rtt / 2, b""))

        reading = asyncio.create_task(read_client())
        try:
            while True:
                due, data = await inbound.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                incoming.write(data)
                if not handshaken:
                    try:
                        tls.do_handshake()
                        handshaken = True
                        counts["handshakes"] += 1
                    except ssl.SSLWantReadError:
                        pass
                    flush_tls()
                    if not handshaken:
                        continue
                plain = bytearray()
                while True:
                    try:
                        chunk = tls.read(65536)
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        break
                    if not chunk:
                        break
                    plain += chunk
                flush_tls()
                if plain:
                    counts["requests"] += len(REQUEST_LINE.findall(bytes(plain)))
                    await to_upstream(bytes(plain))
        finally:
            reading.cancel()
    except (ConnectionError, OSError, ssl.SSLError):
        pass  # a client that does not trust the certificate, or one that went away
    finally:
        close_upstream()
        if upstream["pump"] is not None:
            try:
                await asyncio.wait_for(upstream["pump"], timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        to_client.send(None, net.rtt / 2)
        try:
            await asyncio.wait_for(to_client.task, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass


async def control(net: Network, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny HTTP/1.0 endpoint: one request per connection."""
    try:
        line = (await reader.readline()).decode("latin-1").split()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        method, target = (line + ["", ""])[:2]
        url = urlsplit(target)
        status, body = 200, {}
        if method == "GET" and url.path == "/stats":
            body = {**net.counts, "rtt_ms": net.rtt * 1000}
        elif method == "POST" and url.path == "/reset":
            net.reset()
        elif method == "POST" and url.path == "/rtt":
            try:
                net.set_rtt(float(parse_qs(url.query)["ms"][0]))
                body = {"rtt_ms": net.rtt * 1000}
            except (KeyError, ValueError) as e:
                status, body = 400, {"error": str(e)}
        else:
            status, body = 404, {"error": "not found"}
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.0 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                     .encode() + data)
        await writer.drain()
    finally:
        writer.close()


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--rtt-ms", type=float, default=0.0)
    parser.add_argument("upstreams", nargs="+", metavar="NAME=PORT")
    args = parser.parse_args(argv)
    upstreams = {}
    for spec in args.upstreams:
        name, _, port = spec.partition("=")
        upstreams[name] = int(port)
    net = Network(args.rtt_ms, list(upstreams))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    ports = {}
    servers = []
    for name, port in upstreams.items():
        server = await asyncio.start_server(
            lambda r, w, name=name, port=port: serve_connection(net, name, port, ctx, r, w), "127.0.0.1", 0)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    ctl = await asyncio.start_server(lambda r, w: control(net, r, w), "127.0.0.1", 0)
    servers.append(ctl)
    print(json.dumps({"control": ctl.sockets[0].getsockname()[1], **ports}), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
