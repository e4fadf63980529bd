"""The account-security page (web/), served by scripts/page_server.py on http://localhost:<port>:
the page's files, the API passed on under /api/ and the user pool's sign-in under /cognito/,
all one origin, the origin the functions accept passkey ceremonies from (WEBAUTHN_ORIGINS,
template.py's local_parameters)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .cognito import LocalPool
from .common import ROOT, StackError
from .supervisor import Child, Supervisor

PAGE_SERVER = ROOT / "scripts" / "page_server.py"
WEB_DIR = ROOT / "web"
QR_ENCODER = WEB_DIR / "node_modules" / "qrcode-generator" / "dist" / "qrcode.mjs"


def page_url(port: int) -> str:
    """The page's address: `localhost`, never 127.0.0.1 (an IP address cannot be a WebAuthn
    RP id, and the functions accept http://localhost:<port>)."""
    return f"http://localhost:{port}"


def start_page_server(sup: Supervisor, port: int, api_url: str, pool: LocalPool | None, *,
                      log: Path | None) -> Child:
    if not QR_ENCODER.exists():
        raise StackError(f"{QR_ENCODER.relative_to(ROOT)} is missing: run scripts/dev, which installs "
                         "web/node_modules (npm ci in web/)")
    argv = [sys.executable, str(PAGE_SERVER), "--port", str(port), "--api-url", api_url]
    if pool is not None:
        argv += ["--cognito-url", pool.moto_url, "--cognito-client-id", pool.client_id]
    return sup.start("page server", argv, log=log)


def wait_page(child: Child, port: int, timeout: float = 30) -> None:
    """Waits until the page server answers /config.json (asked at 127.0.0.1, which it also
    answers to, so that this does not depend on how `localhost` resolves here)."""
    url = f"http://127.0.0.1:{port}/config.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running():
            raise StackError(f"the page server exited with code {child.popen.returncode}\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                json.load(resp)
                return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.2)
    raise StackError(f"the page server did not answer {url} within {timeout:.0f} s\n{child.log_tail()}")
