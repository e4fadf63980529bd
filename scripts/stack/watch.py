"""`cargo lambda watch` behind scripts/local_api.py: started, waited for (the fallback's first
answer), and every function warmed with one request."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .common import ROOT, StackError
from .services import free_port
from .supervisor import Child, Supervisor
from .router import write_router
from .template import LOCAL_PAGE_PORT, load_template, local_cors_configuration, routes


def start_watch(sup: Supervisor, port: int, env: dict[str, str], *, log: Path | None,
                ignore_changes: bool, concurrency: int, page_port: int = LOCAL_PAGE_PORT) -> Child:
    # `port` is served by scripts/local_api.py, which hands every request to cargo lambda watch
    # on a port of its own, with a body that is not UTF-8 as API Gateway delivers it, and which
    # does the HTTP API's CORS as API Gateway does (see there).
    watch_port = free_port()
    while watch_port == port:
        watch_port = free_port()
    template = load_template()
    # The routes, from template.yaml, as cargo lambda watch's global configuration.
    router = write_router(template)
    # cargo lambda watch's own CORS layer is off: the front applies the template's
    # CorsConfiguration, with the local CorsAllowOrigins (the account page on `page_port`).
    argv = ["cargo", "lambda", "watch", "--global", str(router), "--invoke-address", "127.0.0.1",
            "--invoke-port", str(watch_port), "--concurrency", str(concurrency), "--disable-cors"]
    if ignore_changes:
        argv.append("--ignore-changes")
    # RUST_LOG is for the functions: cargo lambda reads it too and would log every event.
    env = dict(env)
    if "RUST_LOG" in env:
        argv += ["--env-var", f"RUST_LOG={env.pop('RUST_LOG')}"]
    cors = local_cors_configuration(template, page_port)
    front = ["--cors", json.dumps(cors)] if cors is not None else []
    argv = [sys.executable, str(ROOT / "scripts" / "local_api.py"), "--port", str(port),
            "--watch-port", str(watch_port), *front, "--", *argv]
    # cargo lambda watch stops its function processes on SIGINT, as on Ctrl-C (the front passes
    # the signal on and exits with cargo lambda watch's code).
    return sup.start("cargo lambda watch", argv, env=env, log=log, graceful_signal=signal.SIGINT)


def request(url: str, method: str = "GET", timeout: float = 600.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def is_error_envelope(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"type", "code", "detail"} <= set(doc)


def wait_watch(watch: Child, url: str, timeout: float) -> None:
    """Waits until the fallback function answers GET / (the first request may compile it)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not watch.running():
            raise StackError(f"cargo lambda watch exited with code {watch.popen.returncode}\n{watch.log_tail()}")
        try:
            status, body = request(url + "/", timeout=max(5.0, deadline - time.monotonic()))
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
            time.sleep(0.5)
            continue
        if is_error_envelope(body):
            return
        last = f"HTTP {status}: {body[:300]!r}"
        time.sleep(1)
    raise StackError(f"the fallback function did not answer GET {url}/ within {timeout:.0f} s ({last})\n{watch.log_tail()}")


def warm_functions(template: dict[str, Any], url: str, timeout: float) -> list[str]:
    """Sends one unauthenticated request to a route of every function, so each is compiled and
    started before the tests; returns the problems (a function that did not answer with the
    error envelope)."""
    problems = []
    seen = set()
    for r in routes(template):
        if r.function in seen or r.path == "$default":
            continue
        seen.add(r.function)
        path = r.path.replace("{uuid}", "@me")
        try:
            status, body = request(url + path, r.method, timeout=timeout)
        except (urllib.error.URLError, OSError) as e:
            problems.append(f"{r.function}: {r.method} {path}: {e}")
            continue
        if not is_error_envelope(body):
            problems.append(f"{r.function}: {r.method} {path}: HTTP {status} {body[:200]!r}")
    return problems
