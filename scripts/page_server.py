#!/usr/bin/env python3
"""The account-security page's server (standard library only): serves web/ and passes the
API and the user-pool sign-in on, so that the page, the API and the sign-in are one origin
(WebAuthn binds a passkey to the page's origin, and the API's functions are told that origin
in WEBAUTHN_ORIGINS).

  GET /                  web/index.html
  GET /<file>            a file directly in web/ (.html, .js, .css, .svg)
  GET /vendor/qrcode.mjs the QR code encoder, web/node_modules/qrcode-generator (web/package-lock.json)
  GET /config.json       what the page needs to sign in to the user pool: {"userPool": {"clientId",
                         "endpoint"}} or {"userPool": null}
  /api/...               any method, passed to the API (--api-url) as it came, the answer back as
                         it came
  POST /cognito/         Cognito's InitiateAuth, and nothing else of Cognito, passed to moto
                         (--cognito-url): the page signs in with USER_PASSWORD_AUTH

Every answer carries `Cache-Control: no-store` and a Content-Security-Policy that allows this
origin only (no inline script or style, no form submissions, no framing). Requests naming a
host other than localhost or 127.0.0.1 on this port are refused (a DNS-rebound name cannot use
it). Nothing is logged per request: never a header or a body.

usage: page_server.py --port PORT --api-url URL [--cognito-url URL --cognito-client-id ID]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_DIR = ROOT / "web"
# Files served from web/node_modules, by the path the page asks for (nothing else there is).
VENDOR = {
    "/vendor/qrcode.mjs": Path("node_modules") / "qrcode-generator" / "dist" / "qrcode.mjs",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
STATIC_NAME = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*\.(?:html|js|css|svg))$")

COGNITO_PATH = "/cognito/"
# The one Cognito operation the page may call through this server.
COGNITO_TARGETS = {"AWSCognitoIdentityProviderService.InitiateAuth"}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "publickey-credentials-create=(self), publickey-credentials-get=(self), "
                           "camera=(), microphone=(), geolocation=()"),
]
# Hop-by-hop headers (RFC 9110 7.6.1), what this server frames itself, and what it sets itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "expect", "content-length", "host"}
OWN_HEADERS = {name.lower() for name, _ in SECURITY_HEADERS} | {"server", "date"}
MAX_BODY = 1 << 20  # the API refuses more than 64 KiB itself; this only bounds what is read here


def error_body(code: str, detail: str, kind: str = "invalid_request") -> bytes:
    """An error in the API's envelope, so the page shows its `detail` as it does the API's."""
    return json.dumps({"type": kind, "code": code, "detail": detail, "attr": None}).encode()


class Upstream:
    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.base_path = parts.path.rstrip("/")

    def send(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
             ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            conn.putrequest(method, self.base_path + target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self.netloc)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


class PageServer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self) -> str:
        return "page-server"
    # Set on the class by main().
    web_dir: Path = WEB_DIR
    api: Upstream
    cognito: Upstream | None = None
    cognito_client_id: str | None = None
    allowed_hosts: set[str] = set()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # no request is logged: never a header or a body

    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    # --- answering ---------------------------------------------------------------------------

    def answer(self, status: int, body: bytes, content_type: str | None,
               headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        for name, value in headers or []:
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        if status not in (204, 304):  # (RFC 9110 8.6: no Content-Length on a 204)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            try:
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    def fail(self, status: int, code: str, detail: str) -> None:
        kind = "server_error" if status >= 500 else "invalid_request"
        self.answer(status, error_body(code, detail, kind), "application/json")

    # --- routing -----------------------------------------------------------------------------

    def handle_any(self) -> None:
        host = (self.headers.get("Host") or "").lower()
        if host not in self.allowed_hosts:
            self.close_connection = True
            self.fail(421, "misdirected_request", "This server answers only to localhost and 127.0.0.1.")
            return
        path = urllib.parse.urlsplit(self.path).path
        if path == "/api" or path.startswith("/api/"):
            self.proxy_api()
        elif path in (COGNITO_PATH, COGNITO_PATH.rstrip("/")):
            self.proxy_cognito()
        elif self.command not in ("GET", "HEAD"):
            self.discard_body()
            self.answer(405, b"method not allowed\n", "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])
        elif path == "/config.json":
            self.answer(200, json.dumps(self.page_config()).encode(), "application/json")
        else:
            self.serve_static(path)

    def page_config(self) -> dict[str, object]:
        pool = None
        if self.cognito is not None and self.cognito_client_id:
            pool = {"clientId": self.cognito_client_id, "endpoint": COGNITO_PATH}
        return {"userPool": pool}

    def serve_static(self, path: str) -> None:
        if path in ("/", "/index.html"):
            file = self.web_dir / "index.html"
        elif path in VENDOR:
            file = self.web_dir / VENDOR[path]
        elif (m := STATIC_NAME.match(path)) is not None:
            file = self.web_dir / m.group(1)  # a name directly in web/: no path can leave it
        else:
            file = None
        if file is None or not file.is_file():
            hint = " (run scripts/dev, which installs web/node_modules)" if path in VENDOR else ""
            self.answer(404, f"not found{hint}\n".encode(), "text/plain; charset=utf-8")
            return
        self.answer(200, file.read_bytes(), MEDIA_TYPES.get(file.suffix, "application/octet-stream"))

    # --- passing on --------------------------------------------------------------------------

    def read_body(self) -> bytes | None:
        """The request's body; None when it has none. Raises ValueError on framing this server
        does not take (chunked, or too large)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ValueError("length required")
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        n = int(length)
        if n < 0 or n > MAX_BODY:
            raise ValueError("too large")
        return self.rfile.read(n)

    def discard_body(self) -> None:
        try:
            self.read_body()
        except ValueError:
            self.close_connection = True

    def forward(self, upstream: Upstream, target: str, headers: list[tuple[str, str]], body: bytes | None,
                what: str) -> None:
        try:
            status, _reason, resp_headers, data = upstream.send(self.command, target, headers, body)
        except (OSError, http.client.HTTPException):
            # (not logged: the page shows this answer, and nothing is logged per request)
            self.fail(502, "bad_gateway", f"The {what} did not answer (page server).")
            return
        out = [(k, v) for k, v in resp_headers
               if k.lower() not in HOP_BY_HOP and k.lower() not in OWN_HEADERS and k.lower() != "content-type"]
        content_type = next((v for k, v in resp_headers if k.lower() == "content-type"), None)
        self.answer(status, data if self.command != "HEAD" else b"", content_type, out)

    def request_body_or_fail(self) -> tuple[bool, bytes | None]:
        try:
            return True, self.read_body()
        except ValueError as e:
            self.close_connection = True
            if str(e) == "too large":
                self.fail(413, "request_too_large", "Request body is too large (page server).")
            else:
                self.fail(411, "length_required", "A request body needs a Content-Length (page server).")
            return False, None

    def proxy_api(self) -> None:
        ok, body = self.request_body_or_fail()
        if not ok:
            return
        listed = {t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        headers = [(k, v) for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in listed and k.lower() != "cookie"]
        self.forward(self.api, self.path, headers, body, "local API")

    def proxy_cognito(self) -> None:
        ok, body = self.request_body_or_fail()
        if not ok:
            return
        if self.cognito is None:
            self.fail(404, "not_found", "The page server knows no user pool.")
            return
        target = self.headers.get("X-Amz-Target", "")
        if self.command != "POST" or target not in COGNITO_TARGETS:
            self.fail(403, "forbidden", "Only Cognito's InitiateAuth passes through the page server.")
            return
        headers = [("Content-Type", self.headers.get("Content-Type", "application/x-amz-json-1.1")),
                   ("X-Amz-Target", target)]
        self.forward(self.cognito, "/", headers, body or b"", "user pool (moto's Cognito)")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="page_server.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the page's port (on 127.0.0.1)")
    parser.add_argument("--api-url", required=True, help="the local API, e.g. http://127.0.0.1:3000")
    parser.add_argument("--cognito-url", default=None, help="moto, whose Cognito has the user pool")
    parser.add_argument("--cognito-client-id", default=None, help="the user pool's app client id")
    parser.add_argument("--web-dir", default=str(WEB_DIR), help="the page's files (default: web/)")
    args = parser.parse_args(argv)

    PageServer.web_dir = Path(args.web_dir).resolve()
    try:
        PageServer.api = Upstream(args.api_url)
        PageServer.cognito = Upstream(args.cognito_url) if args.cognito_url else None
    except ValueError as e:
        parser.error(str(e))
    PageServer.cognito_client_id = args.cognito_client_id
    PageServer.allowed_hosts = {f"localhost:{args.port}", f"127.0.0.1:{args.port}"}
    try:
        server = Server(("127.0.0.1", args.port), PageServer)
    except OSError as e:
        print(f"page server: cannot listen on 127.0.0.1:{args.port}: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"page server: http://localhost:{args.port}/ (web/; /api/ -> {args.api_url})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
