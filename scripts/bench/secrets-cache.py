"""Secrets Manager answered from memory, for `scripts/dev bench --secrets-from-memory`.

A caching proxy in front of moto: the first answer to each request body (operation and
input) comes from moto and is kept; later ones are written back from memory by a minimal
asyncio HTTP/1.1 server. moto spends 2-3 ms of Python CPU on a GetSecretValue (and a thread
per connection); on a two-core machine that competes with the function being measured, the
Runtime API and DynamoDB Local. With this proxy the benchmark shows what is left of a key
function's cold start once the secret costs about what it costs anywhere else: one loopback
round trip. Only for the benchmark, whose secret does not change during a run; the tests and
`scripts/dev run` talk to moto itself.

    python secrets-cache.py PORT UPSTREAM_URL
"""
import asyncio
import sys
import urllib.error
import urllib.request

UPSTREAM = sys.argv[2].rstrip("/")
cache: dict[tuple[bytes, bytes], bytes] = {}


def ask_upstream(headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(
        UPSTREAM + "/", data=body, method="POST",
        headers={k.decode(): v.decode() for k, v in headers.items()
                 if k not in (b"host", b"content-length", b"connection")})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, sep, value = line.partition(b":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
            key = (headers.get(b"x-amz-target", b""), body)
            status, out = (200, cache[key]) if key in cache else await asyncio.to_thread(ask_upstream, headers, body)
            if status == 200:
                cache[key] = out  # errors are passed on, never kept
            writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.1\r\n"
                         b"Content-Length: %d\r\n\r\n" % (status, b"OK" if status == 200 else b"Error", len(out)) + out)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
