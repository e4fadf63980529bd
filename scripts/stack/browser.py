"""The browser test of the account page (tests/browser/account-page.test.mjs): the page
server on the port the functions were told (WEBAUTHN_ORIGINS), started with the stack; then,
as a step after the Rust tests, Debian's Chromium (installed with apt-get when missing), the
test's npm packages (npm ci, from tests/browser/package-lock.json), a fresh user with a key
and the same person in the local user pool, and the test, whose screenshots go to
.local/browser/."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cognito import LocalPool, create_demo_user
from .common import LOCAL_DIR, LOG_DIR, ROOT, StackError, cargo_target_dir, process_env, require_tool
from .page import page_url, start_page_server, wait_page
from .services import free_port, users_admin
from .supervisor import Child, Supervisor

BROWSER_TEST_DIR = ROOT / "tests" / "browser"
BROWSER_TEST = BROWSER_TEST_DIR / "account-page.test.mjs"
SCREENSHOT_DIR = LOCAL_DIR / "browser"
# Debian's package; `playwright install` (a browser build of its own) is never used.
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def shown(path: Path) -> str:
    """A path as the user reads it: relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _run_logged(sup: Supervisor, name: str, argv: list[str], log: Path, *, cwd: Path = ROOT,
                env: dict[str, str] | None = None, timeout: float = 900) -> int:
    """Runs a command to completion with its output in `log` (shown when it fails)."""
    child = sup.start(name, argv, cwd=cwd, env=env, log=log)
    code = sup.finish(child, timeout)
    if code != 0:
        print(f"  {name} failed ({code}); {shown(log)}:\n{child.log_tail(30)}", file=sys.stderr)
    return code


def ensure_chromium(sup: Supervisor) -> None:
    """Debian's chromium at /usr/bin/chromium (or $CHROMIUM): installed with apt-get when
    missing (as root; apt-get update first when the package lists do not have it)."""
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(f"{CHROMIUM} is missing: install Debian's chromium (sudo apt-get install -y chromium), "
                         "or set CHROMIUM to a Chromium binary")
    env = process_env({"DEBIAN_FRONTEND": "noninteractive"})
    log = LOG_DIR / "test-apt-chromium.log"
    print(f"stack: installing Debian's chromium (apt-get install -y chromium; log {shown(log)})",
          flush=True)
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if _run_logged(sup, "apt-get install chromium", install, log, env=env) != 0:
        if _run_logged(sup, "apt-get update", ["apt-get", "update", "-q"], LOG_DIR / "test-apt-update.log", env=env) != 0 \
                or _run_logged(sup, "apt-get install chromium", install, log, env=env) != 0:
            raise StackError("could not install chromium with apt-get")
    if not CHROMIUM.exists():
        raise StackError(f"apt-get installed chromium, but {CHROMIUM} is not there")


def install_test_packages(sup: Supervisor) -> None:
    """The test's npm packages, exactly as tests/browser/package-lock.json pins them (npm ci,
    every run: it installs no browser; playwright-core drives the system's Chromium)."""
    npm = require_tool("npm", "install Node 20+ with npm")
    log = LOG_DIR / "test-browser-npm.log"
    argv = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    if _run_logged(sup, "npm ci (tests/browser)", argv, log, cwd=BROWSER_TEST_DIR, env=process_env({})) != 0:
        raise StackError("npm ci in tests/browser failed")


def make_test_user(env: dict[str, str], pool: LocalPool) -> tuple[str, str, str]:
    """A fresh user of the API with a `*` key, and the same person in the local user pool,
    linked by an operator as `scripts/dev run` links its demo user. Returns (email, password,
    key)."""
    target = cargo_target_dir()
    email = f"browser-{secrets.token_hex(6)}@example.com"
    password = f"Browser-{secrets.token_hex(8)}-1"
    user = users_admin(target, env, "create-user", "--email", email, "--first-name", "Browser", "--last-name", "Test")
    key = users_admin(target, env, "create-key", "--user", user["uuid"], "--scopes", "*",
                      "--label", "browser test")["api_key"]
    claims = create_demo_user(pool, email, password)
    users_admin(target, env, "link-identity", "--user", user["uuid"], "--subject", claims["sub"])
    return email, password, key


@dataclass
class TestPage:
    """The page server of a test run: its port, and the server, or why it is not there."""
    port: int
    child: Child | None
    problem: str | None


def start_test_page(sup: Supervisor, api_url: str, pool: LocalPool, *, avoid: set[int]) -> TestPage:
    """The page server on a free port (none of `avoid`), in front of the API at `api_url`
    (which need not answer yet). A failure here fails the browser step only."""
    problem = ""
    port = 0
    for _attempt in range(3):  # (a free port may be taken before the server binds it)
        port = free_port()
        while port in avoid:
            port = free_port()
        try:
            child = start_page_server(sup, port, api_url, pool, log=LOG_DIR / "test-page.log")
        except StackError as e:
            problem = str(e)
            break
        try:
            wait_page(child, port)
            return TestPage(port, child, None)
        except StackError as e:
            problem = str(e)
            sup.stop(child)
    print(f"stack: the page server did not start; the browser test will fail: {problem}", file=sys.stderr, flush=True)
    return TestPage(port, None, problem)


def run_browser_test(sup: Supervisor, env: dict[str, str], page: TestPage, pool: LocalPool, *,
                     timeout: float) -> bool:
    """The browser test against the running stack, through the page server (on the port whose
    origin the functions accept). True when every step passed."""
    started = time.monotonic()
    try:
        if page.child is None or not page.child.running():
            raise StackError(page.problem or f"the page server has exited\n{page.child.log_tail() if page.child else ''}")
        ensure_chromium(sup)
        install_test_packages(sup)
        email, password, key = make_test_user(env, pool)
    except StackError as e:
        print(f"  {e}", file=sys.stderr)
        return False
    except Exception as e:  # noqa: BLE001 (a Cognito call's error: the step fails, not the command)
        print(f"  could not make the browser test's user: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    shutil.rmtree(SCREENSHOT_DIR, ignore_errors=True)
    SCREENSHOT_DIR.mkdir(parents=True)
    node = require_tool("node", "install Node 20+")
    address = page_url(page.port)
    test_env = process_env({
        "PAGE_URL": address,
        "BROWSER_TEST_API_KEY": key,
        "BROWSER_TEST_EMAIL": email,
        "BROWSER_TEST_PASSWORD": password,
        "SCREENSHOT_DIR": str(SCREENSHOT_DIR),
        "CHROMIUM": str(CHROMIUM),
    })
    print(f"stack: browser test: {address} in headless Chromium as {email}; screenshots in "
          f"{shown(SCREENSHOT_DIR)}/", flush=True)
    child = sup.start("browser test", [node, str(BROWSER_TEST)], cwd=BROWSER_TEST_DIR, env=test_env,
                      graceful_signal=signal.SIGTERM)
    code = sup.finish(child, timeout)
    print(f"stack: browser test screenshots: {shown(SCREENSHOT_DIR)}/ "
          f"({time.monotonic() - started:.0f} s)", flush=True)
    return code == 0
