#!/usr/bin/env python3
"""The local API's front: listens on the API's port and hands every request to `cargo lambda
watch` (on a port of its own, started by this script as its child), changing nothing but a
request body that `cargo lambda watch` cannot carry the way API Gateway does, and doing the
HTTP API's CORS as API Gateway does (see CORS below).

Why. `cargo lambda watch` (1.9.2, crates/cargo-lambda-watch/src/trigger_router.rs,
`furls_handler`) builds the API Gateway v2 event itself: a body whose Content-Type is absent or
starts with `text/` or `application/json` goes into the event as text, through
`String::from_utf8(..).map_err(ServerError::StringBody)?`; anything else is base64-encoded
(`isBase64Encoded: true`). A text-typed body that is not UTF-8 therefore ends in its own 500
(`{"type":"https://httpstatuses.com/500","status":500,"title":"Internal Server Error"}`,
error.rs `IntoResponse for ServerError`) and the function is never invoked. API Gateway does
invoke the function. An HTTP API decides `isBase64Encoded` from the request's Content-Type
alone, not from the bytes (AWS Compute Blog, "Handling binary data using Amazon API Gateway
HTTP APIs": "The HTTP API Lambda integration automatically infers the need for encoding based
on the content-type header passed with the request"). The developer guide does not list the
types. The split measured against real HTTP APIs (ministackorg/ministack#766,
floci-io/floci#2172 and #2203) is: text (`isBase64Encoded: false`) for `text/*`,
`application/json`, `application/xml` and `application/javascript` with no charset or a UTF-8
one. Base64 for everything else, including no Content-Type, a non-UTF-8 charset and
`application/x-www-form-urlencoded`. A text body has to be a string in the event's JSON, so
bytes that are not UTF-8 arrive as their UTF-8 reading: each invalid sequence becomes U+FFFD.
That is API Gateway's "payloads are handled as UTF-8 encoded JSON strings" for text, and what
the emulators built from those measurements do.

What. A body that is not valid UTF-8 and that API Gateway or `cargo lambda watch` reads as
text is replaced by its UTF-8 reading (U+FFFD for each invalid sequence, as Python's and Rust's
lossy decoders do), and its Content-Length follows. Every other request (method, target,
headers in order, body) and every answer pass through unchanged, CORS aside. Bodies that are UTF-8, and
binary-typed bodies (base64-encoded by `cargo lambda watch` exactly as API Gateway does), are
never touched. One difference from API Gateway remains. A body that is not UTF-8 and has no
Content-Type, or a text type with a non-UTF-8 charset, is base64-encoded by API Gateway
(the function gets the raw bytes). Here it arrives as its UTF-8 reading, because
`cargo lambda watch` can only carry it as text, and the only other way is to build the event
here.

CORS. With `--cors`, the HTTP API's CorsConfiguration from template.yaml, resolved with the
local parameters (scripts/stack/template.py `local_cors_configuration`; scripts/stack/watch.py
passes it), this front does what API Gateway does with it, and `cargo lambda watch` runs with
`--disable-cors` (its own CORS layer, tower-http's `CorsLayer::very_permissive()`, would answer
every OPTIONS itself and allow every origin). Source: the API Gateway Developer Guide,
"Configure CORS for HTTP APIs in API Gateway"
(https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-cors.html):
- a preflight is answered by API Gateway itself, whether or not an OPTIONS route exists: the
  function is never invoked. A preflight is an OPTIONS request with an `Origin` and an
  `Access-Control-Request-Method` header (the guide: the OPTIONS method returns CORS headers
  only with both). An OPTIONS request without them is routed like any other request (here to
  the fallback function, as the $default route takes it on AWS). The guide's caveat about the
  $default route (it catches OPTIONS, so an authorizer on it would refuse preflights) does not
  apply: no route of this API has an authorizer.
- to every other request that has an `Origin`, the configured CORS headers are added to the
  function's response; without an `Origin`, none, and none to an OPTIONS request that is not
  a preflight. CORS headers the function returns itself are ignored (removed here).
- allowOrigins: an exact origin, `*` (any origin), or `https://*` / `http://*` (any origin
  with that scheme). Origins are compared without regard to case (scheme and host are
  case-insensitive, RFC 6454 4).
What the guide leaves unsaid, done here the way API Gateway is reported to behave and the
Fetch standard (https://fetch.spec.whatwg.org/#http-responses) expects:
- the answer to a preflight is `204 No Content`, with no body. It allows the request when the
  origin is allowed, the requested method is in allowMethods (or allowMethods has `*`), and
  every header in `Access-Control-Request-Headers` is in allowHeaders (or allowHeaders has `*`),
  compared without regard to case. Then it carries `Access-Control-Allow-Origin`,
  `-Allow-Methods` and `-Allow-Headers` (the configured lists, comma-separated),
  `-Max-Age` (maxAge) and `-Allow-Credentials: true` (allowCredentials). Otherwise it is still
  the gateway's `204`, but with no `Access-Control-*` header at all: the browser refuses the
  request, and the function never hears of it.
- `Access-Control-Allow-Origin` is `*` when the origin matched `*` (API Gateway refuses a
  configuration with `*` and allowCredentials: "allow-credentials is not supported if
  'allow-origin' is *", aws/aws-cdk#9076), else the request's own origin.
- `Access-Control-Expose-Headers` (exposeHeaders) goes on the responses to actual requests
  only: the Fetch standard reads it there, never on a preflight's answer.
- no `Vary` header is added (the guide names none; the API's answers are not cached).
Without `--cors` (an API with no CorsConfiguration) the front neither answers preflights nor
touches CORS headers.

Nothing is logged per request: never a body or a header.

usage: local_api.py --port PORT --watch-port WATCH_PORT [--cors JSON] -- cargo lambda watch ...
         --invoke-port WATCH_PORT --disable-cors
Exits with `cargo lambda watch`'s exit code; SIGINT, SIGTERM and SIGHUP are passed on to it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Media types API Gateway hands to Lambda as text besides text/* (see the docstring).
GATEWAY_TEXT_MEDIA = ("application/json", "application/xml", "application/javascript")

# Hop-by-hop headers (RFC 9110 7.6.1), and what this front re-frames itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "expect", "content-length"}


def gateway_reads_as_text(content_type: str | None) -> bool:
    """Whether an HTTP API puts a body of this Content-Type into the event as text."""
    if content_type is None:
        return False
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return media.startswith("text/") or media in GATEWAY_TEXT_MEDIA


def watch_reads_as_text(content_type: str | None) -> bool:
    """Whether `cargo lambda watch` 1.9.2 puts it into the event as text (trigger_router.rs:
    no header, or one whose value, when it is visible ASCII, starts with `text/` or
    `application/json`)."""
    if content_type is None:
        return True
    if not all(c == "\t" or 32 <= ord(c) < 127 for c in content_type):
        return False  # HeaderValue::to_str fails, unwrap_or_default gives ""
    return content_type.startswith("text/") or content_type.startswith("application/json")


def as_delivered(body: bytes, content_type: str | None) -> bytes:
    """The body as the function gets it behind API Gateway (see the docstring)."""
    if not body:
        return body
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        pass
    if gateway_reads_as_text(content_type) or watch_reads_as_text(content_type):
        return body.decode("utf-8", errors="replace").encode("utf-8")
    return body


class Cors:
    """An HTTP API's CorsConfiguration (CloudFormation's property names), applied as API Gateway
    applies it (see the docstring)."""

    def __init__(self, config: dict):
        def names(key: str) -> list[str]:
            value = config.get(key) or []
            if isinstance(value, str):
                value = value.split(",")
            return [str(v).strip() for v in value if str(v).strip()]

        self.allow_origins = names("AllowOrigins")
        self.allow_methods = names("AllowMethods")
        self.allow_headers = names("AllowHeaders")
        self.expose_headers = names("ExposeHeaders")
        self.max_age = config.get("MaxAge")
        self.allow_credentials = str(config.get("AllowCredentials", False)).lower() == "true"
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow-credentials is not supported if 'allow-origin' is * (API Gateway refuses it)")

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if not origin:
            return None
        lowered = origin.lower()
        for allowed in self.allow_origins:
            if allowed == "*":
                return "*"
            allowed = allowed.lower()
            if allowed in ("https://*", "http://*"):
                if lowered.startswith(allowed[:-1]) and len(lowered) > len(allowed) - 1:
                    return origin
            elif lowered == allowed:
                return origin
        return None

    def preflight(self, origin: str, method: str, request_headers: str) -> list[tuple[str, str]]:
        """The headers of the answer to a preflight: none when it is refused."""
        allow_origin = self.allow_origin(origin)
        if allow_origin is None:
            return []
        methods = {m.upper() for m in self.allow_methods}
        if "*" not in methods and method.strip().upper() not in methods:
            return []
        allowed = {h.lower() for h in self.allow_headers}
        asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        if "*" not in allowed and any(h not in allowed for h in asked):
            return []
        out = [("Access-Control-Allow-Origin", allow_origin)]
        if self.allow_credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        if self.allow_methods:
            out.append(("Access-Control-Allow-Methods", ",".join(self.allow_methods)))
        if self.allow_headers:
            out.append(("Access-Control-Allow-Headers", ",".join(self.allow_headers)))
        if self.max_age is not None:
            out.append(("Access-Control-Max-Age", str(self.max_age)))
        return out

    def actual(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers added to the response to an actual (not preflight) request."""
        allow_origin = self.allow_origin(origin)
        if allow_origin is None:
            return []
        out = [("Access-Control-Allow-Origin", allow_origin)]
        if self.allow_credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        if self.expose_headers:
            out.append(("Access-Control-Expose-Headers", ",".join(self.expose_headers)))
        return out


class Upstream:
    """Keep-alive connections to `cargo lambda watch`, one per request in flight."""

    def __init__(self, port: int):
        self.port = port
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.idle.append(conn)

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
             ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        for attempt in range(2):
            conn, reused = self.take()
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders(body)
                resp = conn.getresponse()
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                    http.client.RemoteDisconnected):
                conn.close()
                # An idle connection the server had closed: nothing was answered, so the
                # request is sent once more on a fresh one.
                if reused and attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            try:
                data = resp.read()
            except BaseException:
                conn.close()
                raise
            if resp.will_close or method == "HEAD":
                conn.close()  # (after HEAD: a server that sent a body anyway cannot spoil the next)
            else:
                self.give_back(conn)
            return resp.status, resp.reason, resp.getheaders(), data
        raise AssertionError("unreachable")


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: Upstream  # set on the class by main()
    cors: Cors | None = None  # set by main() with --cors

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # no request is logged: never a body or a header

    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self.forward
        raise AttributeError(name)

    def actual_cors(self, origin: str | None) -> list[tuple[str, str]]:
        """The CORS headers for the answer to a request that is not a preflight: none for an
        OPTIONS request (API Gateway's need both Origin and Access-Control-Request-Method)."""
        if self.cors is None or self.command == "OPTIONS":
            return []
        return self.cors.actual(origin)

    def read_body(self) -> bytes | None:
        """The request's body, or None when it has no framing (no body)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("content-length")
        if length is None:
            return None
        return self.rfile.read(int(length))

    def forward(self) -> None:
        try:
            body = self.read_body()
        except ValueError:
            self.answer(400, "Bad Request", [("content-type", "text/plain")], b"bad request framing\n")
            self.close_connection = True
            return
        origin = self.headers.get("origin")
        if self.cors is not None and self.command == "OPTIONS" and origin \
                and self.headers.get("access-control-request-method") is not None:
            # A preflight: API Gateway answers it; the function never sees it.
            headers = self.cors.preflight(origin, self.headers.get("access-control-request-method", ""),
                                          ", ".join(self.headers.get_all("access-control-request-headers") or []))
            self.answer(204, "No Content", headers, b"", None)
            return
        listed = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        headers = [(k, v) for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in listed]
        if body is not None:
            body = as_delivered(body, self.headers.get("content-type"))
            headers.append(("Content-Length", str(len(body))))
        try:
            status, reason, resp_headers, data = self.upstream.send(self.command, self.path, headers, body)
        except (OSError, http.client.HTTPException) as e:
            if not isinstance(e, ConnectionRefusedError):  # (refused: still starting)
                print(f"local API: cargo lambda watch did not answer {self.command}: {type(e).__name__}",
                      file=sys.stderr, flush=True)
            self.answer(502, "Bad Gateway", [("content-type", "application/json"),
                                             *self.actual_cors(origin)],
                        b'{"message":"cargo lambda watch is not answering (local API)"}')
            return
        out = [(k, v) for k, v in resp_headers if k.lower() not in HOP_BY_HOP]
        if self.cors is not None:
            # The function's own CORS headers are ignored; the configured ones are added.
            out = [(k, v) for k, v in out if not k.lower().startswith("access-control-")]
            out += self.actual_cors(origin)
        if self.command == "HEAD":
            out += [(k, v) for k, v in resp_headers if k.lower() == "content-length"]
            data_len = None
        else:
            data_len = len(data)
        self.answer(status, reason, out, data, data_len)

    def answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes,
               length: int | None = -1) -> None:
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if length is not None:
            lines.append(f"Content-Length: {len(data) if length == -1 else length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(head + (b"" if self.command == "HEAD" else data))
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="local_api.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the API's port (127.0.0.1)")
    parser.add_argument("--watch-port", type=int, required=True,
                        help="the port cargo lambda watch serves on (its --invoke-port)")
    parser.add_argument("--cors", default=None, metavar="JSON",
                        help="the HTTP API's CorsConfiguration, resolved (CloudFormation's property names)")
    parser.add_argument("watch", nargs=argparse.REMAINDER, help="-- the cargo lambda watch command")
    args = parser.parse_args(argv)
    command = args.watch[1:] if args.watch[:1] == ["--"] else args.watch
    if not command:
        parser.error("the cargo lambda watch command is missing (after --)")
    if args.cors is not None:
        try:
            config = json.loads(args.cors)
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
            Front.cors = Cors(config)
        except ValueError as e:
            parser.error(f"--cors: {e}")

    Front.upstream = Upstream(args.watch_port)
    try:
        server = Server(("127.0.0.1", args.port), Front)
    except OSError as e:
        print(f"local API: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr, flush=True)
        return 1
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)

    def pass_on(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, pass_on)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = child.wait()
    server.server_close()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
