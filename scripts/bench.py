#!/usr/bin/env python3
"""`scripts/dev bench`: measures every function against the performance budgets (README,
"Performance") and writes BENCHMARKS.md (tables) and BENCHMARKS.json (every figure) at the
repository root.

It starts its own DynamoDB Local and moto on free ports (scripts/stack: tables, secret
and SES sender from template.yaml, the functions' local environment), builds the workspace
with the release profile, and then, in one run:

- cold start: each function binary is spawned against a minimal Lambda Runtime API served
  here on 127.0.0.1 (the invocation is already queued), and the time from spawn to its first
  response is taken; then a few warm requests on the same process give the cold-start
  penalty (first response minus the median warm one). Every run also does this for an empty
  `lambda_runtime` function (scripts/bench/empty-function, same profile) and for a Python peer
  of each function on `awslambdaric` + boto3 (scripts/bench/python-function): get-user's is
  written out in Python (handler.py); every other one replays, with boto3, the AWS calls the
  Rust function made for the same request (replay.py). Runs are interleaved across functions
  and repeated; medians are reported. Each function runs with its own deployed environment
  (the template's Globals and its own variables), not the local stack's union of them.
- DynamoDB calls per request: the representative request runs in process (bench-calls,
  scripts/bench/calls) with the tests' SDK interceptor (tests/src/calls.rs), which counts the
  calls and how many ran one after another. bench-calls also sets each request up (users,
  codes) and is the browser of the passkey requests: the tests' software authenticator, one
  for the whole run, answers the options the API returned, outside any measurement.
- some functions have a second kind of request measured beside their own, under the
  function's name and a suffix: `+token` (a sign-in token instead of a key) and, for
  two-factor-verify, `+passkey` (the sign-in check by passkey instead of a backup code).
- warm latency: p50/p99 over N requests through the Runtime API (event written to the
  function -> response received), against the same AWS calls replayed directly with the SDK
  by bench-calls (same inputs, same grouping, same DynamoDB Local).
- stripped binary size (x86_64; arm64 with cargo lambda + zig when available), and peak RSS
  (VmHWM) after the warm requests and under load.
- requests per second at concurrency 1, 8 and 32 for a read route (get-user) and a write
  route (scene-personalisation): that many function processes behind one Runtime API, as
  Lambda runs that many execution environments, each client with its own user; errors are
  non-2xx answers, function errors and time-outs.

- under network latency (`--network 0,2,10`, the default): every AWS endpoint the functions call
  (DynamoDB, Secrets Manager, SES, Cognito, the issuer's keys) behind TLS and a round-trip delay
  (scripts/latency-proxy.py, on loopback), at each round-trip time: cold starts with the event
  queued (on demand), first requests after an idle init (Lambda's init ahead of the event) and
  warm requests, and from the growth of each with the delay the round trips it waits for; then
  the TLS connections each function opens on its cold request and over 100 warm ones.

BENCH_WRAP="cmd args --" runs every Rust function process under a command (a profiler; `{name}`
in it is the function) and stops it with SIGINT first, so the command can write its output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import queue
import re
import select
import shutil
import socket
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The local stack (scripts/stack): services, tables, environment.
from stack.common import (  # noqa: E402
    ACCOUNT_ID, LOCAL_DIR, LOG_DIR, REGION, ROOT, VENV_BIN, StackError, cargo_target_dir, process_env, require_tool,
)
from stack.services import (  # noqa: E402
    free_port, port_is_free, setup_services, stack_env, start_services, wait_services, wait_until,
)
from stack.cognito import LocalPool, create_demo_user, sign_in  # noqa: E402
from stack.network import Network, start_network  # noqa: E402
from stack.supervisor import Supervisor, supervised  # noqa: E402
from stack.template import functions, load_template  # noqa: E402

BENCH_DIR = ROOT / "scripts" / "bench"
PY_FUNCTION_DIR = BENCH_DIR / "python-function"
PY_VENV = LOCAL_DIR / "bench-python"
OUT_MD = ROOT / "BENCHMARKS.md"
OUT_JSON = ROOT / "BENCHMARKS.json"

EMPTY = "empty-function"
PYTHON = "python-get-user"
READ_ROUTE = "get-user"
WRITE_ROUTE = "scene-personalisation"

# Other kinds of request to a function, measured beside the function's own scenario (see
# VARIANT_SCENARIOS): named after the function and a suffix saying what kind of request it is
# ("get-user+token"), each runs the function's own binary and is compared with its Python peer.
TOKEN = "+token"  # with a sign-in token instead of a key
PASSKEY = "+passkey"  # the sign-in check by passkey instead of by a code
VARIANT_SUFFIXES = (TOKEN, PASSKEY)

# Passkeys a user may hold, verified or not (shared::passkeys::MAX_PASSKEYS).
MAX_PASSKEYS = 10

# Budgets (README, "Performance").
MAX_PENALTY_VS_EMPTY = 2.0
MIN_PYTHON_COLD_RATIO = 20.0
MAX_SEQUENTIAL = 3
MAX_LATENCY_RATIO = 1.3
MAX_BINARY_BYTES = 8 * 1024 * 1024
MAX_RSS_BYTES = 32 * 1024 * 1024

NEXT_PATH = "/2018-06-01/runtime/invocation/next"
RESULT_PATH = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")
INIT_ERROR_PATH = "/2018-06-01/runtime/init/error"


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# A minimal Lambda Runtime API
# ---------------------------------------------------------------------------------------------


class Invocation:
    def __init__(self, event: bytes, function_name: str):
        self.id = str(uuid.uuid4())
        self.event = event
        self.function_name = function_name
        self.done = threading.Event()
        self.queued = 0.0  # when the invocation became available
        self.sent = 0.0  # when its event had been written to the function
        self.finished = 0.0  # when the function's answer had been read
        self.outcome = ""  # "response" or "error"
        self.body = b""

    @property
    def latency(self) -> float:
        """Event delivered -> answer received (what Lambda bills as duration)."""
        return self.finished - self.sent

    @property
    def turnaround(self) -> float:
        """Invocation available -> answer received."""
        return self.finished - self.queued

    def response(self) -> tuple[int, dict[str, Any]]:
        """(statusCode, the API Gateway response) or (0, {}) for a function error."""
        if self.outcome != "response":
            return 0, {}
        try:
            doc = json.loads(self.body)
        except ValueError:
            return 0, {}
        return int(doc.get("statusCode", 0)), doc


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A function process stopped while it long-polled: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):
            super().handle_error(request, client_address)


class RuntimeApi:
    """The Runtime API of one or more function processes: `next` hands out queued
    invocations (long-polling), `response` and `error` complete them. HTTP/1.1 keep-alive,
    one thread per connection, answers written in one piece."""

    def __init__(self, function_name: str):
        self.function_name = function_name
        self.queue: queue.Queue[Invocation] = queue.Queue()
        self.pending: dict[str, Invocation] = {}
        self.lock = threading.Lock()
        self.init_errors: list[bytes] = []
        self.closing = False
        # How many times a process asked for an event: one more after a response means the
        # process has finished what it does after responding (shared::run: queued mail, the note of
        # the key's use).
        self.nexts = 0
        self.asked = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                # As the base class, but noting when the request's first line arrived: a
                # function's answer counts from then, not after Python has parsed it.
                self.raw_requestline = self.rfile.readline(65537)
                self.arrived = time.perf_counter()
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                handler = getattr(self, "do_" + self.command, None)
                if handler is None:
                    self.reply(501, b'{"errorMessage":"unsupported method"}')
                    return
                handler()
                self.wfile.flush()

            def reply(self, code: int, body: bytes, extra: list[tuple[str, str]] = ()) -> None:
                head = [f"HTTP/1.1 {code} {'OK' if code < 300 else 'Error'}",
                        "Content-Type: application/json", f"Content-Length: {len(body)}"]
                head += [f"{k}: {v}" for k, v in extra]
                self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                self.wfile.flush()

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def peer_alive(self) -> bool:
                try:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
                except OSError:
                    return False

            def do_GET(self) -> None:  # noqa: N802
                if self.path != NEXT_PATH:
                    self.reply(404, b'{"errorMessage":"not found"}')
                    return
                with api.asked:
                    api.nexts += 1
                    api.asked.notify_all()
                # A handler left waiting by a process that was stopped must not take the next
                # invocation: check the connection while waiting and before answering.
                while True:
                    try:
                        inv = api.queue.get(timeout=0.2)
                    except queue.Empty:
                        if api.closing or not self.peer_alive():
                            self.close_connection = True
                            return
                        continue
                    if not self.peer_alive():
                        api.queue.put(inv)
                        self.close_connection = True
                        return
                    break
                deadline = int(time.time() * 1000) + 30_000
                self.reply(200, inv.event, [
                    ("Lambda-Runtime-Aws-Request-Id", inv.id),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{api.function_name}"),
                    ("Lambda-Runtime-Trace-Id",
                     f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=0"),
                ])
                inv.sent = time.perf_counter()

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                now = self.arrived
                m = RESULT_PATH.match(self.path)
                if m:
                    with api.lock:
                        inv = api.pending.pop(m.group(1), None)
                    if inv is None:
                        self.reply(400, b'{"errorMessage":"unknown request id"}')
                        return
                    inv.finished, inv.outcome, inv.body = now, m.group(2), body
                    self.reply(202, b'{"status":"OK"}')
                    inv.done.set()
                elif self.path == INIT_ERROR_PATH:
                    api.init_errors.append(body)
                    self.reply(202, b'{"status":"OK"}')
                else:
                    self.reply(404, b'{"errorMessage":"not found"}')

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_asked(self, nexts: int, proc: subprocess.Popen, timeout: float = 30) -> None:
        """Until processes have asked for an event `nexts` times in all."""
        deadline = time.perf_counter() + timeout
        with self.asked:
            while self.nexts < nexts:
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise StackError(f"{self.function_name} did not ask for its next event")
                self.asked.wait(0.05)

    def submit(self, event: dict[str, Any]) -> Invocation:
        inv = Invocation(json.dumps(event).encode(), self.function_name)
        with self.lock:
            self.pending[inv.id] = inv
        inv.queued = time.perf_counter()
        self.queue.put(inv)
        return inv

    def close(self) -> None:
        self.closing = True
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    key: str | None
    body: str | None = None
    expect: int = 200
    # For a Python replay peer: the AWS calls to make and the answer to give.
    replay: dict[str, Any] | None = None


def api_event(req: Request) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as API Gateway sends it to a function."""
    headers = {"host": "127.0.0.1", "user-agent": "bench", "accept": "*/*"}
    if req.key:
        headers["authorization"] = f"Bearer {req.key}"
    if req.body is not None:
        headers["content-type"] = "application/json"
        headers["content-length"] = str(len(req.body.encode()))
    now = time.time()
    request_id = uuid.uuid4().hex[:16]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": req.path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "bench",
            "domainName": "127.0.0.1",
            "domainPrefix": "bench",
            "http": {"method": req.method, "path": req.path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "bench"},
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if req.body is not None:
        event["body"] = req.body
    if req.replay is not None:
        event["benchReplay"] = req.replay
    return event


class Driver:
    """bench-calls: requests straight into the handlers, users, and the direct replay."""

    def __init__(self, exe: Path, env: dict[str, str], log_path: Path):
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([str(exe)], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        first = self._read()
        if not first.get("ready"):
            raise StackError(f"bench-calls did not start: {first}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise StackError(f"bench-calls exited ({self.proc.poll()}); see {self.log.name}")
        return json.loads(line)

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def user(self) -> dict[str, Any]:
        return self.call({"op": "user", "scopes": ["*"]})

    def passkey_register(self, options: dict[str, Any]) -> dict[str, Any]:
        """The credential a browser with the driver's authenticator sends for these creation
        options (as `register/begin/` returned them): the body of `register/complete/`."""
        return self._passkey("passkey_register", options)["credential"]

    def passkey_assert(self, options: dict[str, Any]) -> dict[str, Any]:
        """The assertion the driver's authenticator makes for these request options (as
        `credentials/{id}/verify/` or `two_factor_passkey_begin/` returned them)."""
        return self._passkey("passkey_assert", options)["assertion"]

    def _passkey(self, op: str, options: dict[str, Any]) -> dict[str, Any]:
        out = self.call({"op": op, "options": options})
        if "error" in out:
            raise StackError(f"bench-calls {op}: {out['error']}")
        return out

    def invoke(self, req: Request, measured: bool = False) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {req.key}"} if req.key else {}
        out = self.call({"op": "invoke", "method": req.method, "path": req.path, "headers": headers,
                         "body": req.body, "measured": measured})
        if out["status"] != req.expect:
            raise StackError(f"{req.method} {req.path} answered {out['status']} in process, "
                                   f"expected {req.expect}: {out['body'][:300]}")
        return out

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


def totp_now(secret: str) -> str:
    import pyotp  # the tests' independent TOTP implementation (requirements.txt)

    return pyotp.TOTP(secret).now()


class Scenario:
    """A function's representative request: `prepare(i)` sets up what the i-th request needs
    (through bench-calls, outside any measurement) and returns it."""

    name = ""
    case = ""

    def __init__(self, driver: Driver):
        self.d = driver

    def setup(self) -> None:
        self.user = self.d.user()

    @property
    def key(self) -> str:
        return self.user["key"]

    def prepare(self, i: int) -> Request:
        raise NotImplementedError

    def mailing_key(self) -> str:
        """The key of a user who may still be mailed an email-change code this hour (at most
        5 a user: docs/API.md §5): a fresh user every 5 requests."""
        self.mails = getattr(self, "mails", 0) + 1
        if self.mails > 5:
            self.user, self.mails = self.d.user(), 1
        return self.key

    # Helpers shared by the 2FA scenarios.
    def enable_2fa(self, user: dict[str, Any]) -> None:
        r = self.d.invoke(Request("GET", "/api/users/@me/two_factor_start_setup/", user["key"]))
        secret = json.loads(r["body"])["secret"]
        self.d.invoke(Request("POST", "/api/users/@me/two_factor_validate/", user["key"],
                              json.dumps({"token": totp_now(secret)})))

    def backup_codes(self, user: dict[str, Any]) -> list[str]:
        r = self.d.invoke(Request("POST", "/api/users/@me/two_factor_backup_codes/", user["key"]))
        return list(json.loads(r["body"])["backup_codes"])

    # Helpers shared by the passkey scenarios: the browser's side is bench-calls' software
    # authenticator (Driver.passkey_register, Driver.passkey_assert).
    def registering_key(self) -> str:
        """The key of a user who may still register a passkey (at most MAX_PASSKEYS a user,
        verified or not): a fresh user every MAX_PASSKEYS requests. Only for scenarios whose
        user holds no passkey of its set-up."""
        self.registered = getattr(self, "registered", 0) + 1
        if self.registered > MAX_PASSKEYS:
            self.user, self.registered = self.d.user(), 1
        return self.key

    def registration(self, key: str, label: str = "Passkey") -> str:
        """Begins a registration and answers it as the browser: the body of
        `register/complete/`."""
        r = self.d.invoke(Request("POST", PASSKEY_REGISTER_BEGIN, key))
        return json.dumps({**self.d.passkey_register(json.loads(r["body"])), "label": label})

    def add_passkey(self, key: str) -> str:
        """Registers a passkey (unverified): its id."""
        r = self.d.invoke(Request("POST", PASSKEY_REGISTER_COMPLETE, key, self.registration(key)))
        return json.loads(r["body"])["credential_id"]

    def verification(self, key: str, passkey: str) -> str:
        """Begins the verification of a passkey and answers it as the browser: the body of
        `verify_complete/`."""
        r = self.d.invoke(Request("POST", f"{PASSKEY_CREDENTIALS}{passkey}/verify/", key))
        return json.dumps(self.d.passkey_assert(json.loads(r["body"])))

    def add_verified_passkey(self, key: str) -> str:
        """Registers a passkey and verifies it: its id."""
        passkey = self.add_passkey(key)
        self.d.invoke(Request("POST", f"{PASSKEY_CREDENTIALS}{passkey}/verify_complete/", key,
                              self.verification(key, passkey)))
        return passkey

    def enable_passkey_2fa(self, user: dict[str, Any]) -> None:
        """A verified passkey, and passkeys on as the second factor."""
        self.add_verified_passkey(user["key"])
        self.d.invoke(Request("PATCH", "/api/users/@me/", user["key"],
                              json.dumps({"passkeys_enabled_for_2fa": True})))


class GetUser(Scenario):
    name = "get-user"
    case = "GET /api/users/@me/ → 200 user object"

    def prepare(self, i: int) -> Request:
        return Request("GET", "/api/users/@me/", self.key)


class UpdateUser(Scenario):
    name = "update-user"
    case = "PATCH /api/users/@me/ first_name + theme_mode → 200 (no email change)"

    def prepare(self, i: int) -> Request:
        return Request("PATCH", "/api/users/@me/", self.key,
                       json.dumps({"first_name": f"Ada{i % 10}", "theme_mode": "dark"}))


class ScenePersonalisation(Scenario):
    name = "scene-personalisation"
    case = "POST scene_personalisation/ {scene, dashboard} → 200 user object"

    def prepare(self, i: int) -> Request:
        return Request("POST", "/api/users/@me/scene_personalisation/", self.key,
                       json.dumps({"scene": "ProductAnalytics", "dashboard": i % 1000 + 1}))


class PushTokensRegister(Scenario):
    name = "push-tokens-register"
    case = "POST push_tokens/ with a fresh token each time → 200 (past 20 tokens each one evicts the oldest)"

    def prepare(self, i: int) -> Request:
        return Request("POST", "/api/users/@me/push_tokens/", self.key,
                       json.dumps({"token": f"fcm-{uuid.uuid4().hex}", "platform": "android"}))


class PushTokensUnregister(Scenario):
    name = "push-tokens-unregister"
    case = "POST push_tokens/unregister/ of a token registered just before → 204"

    def prepare(self, i: int) -> Request:
        token = f"fcm-{uuid.uuid4().hex}"
        self.d.invoke(Request("POST", "/api/users/@me/push_tokens/", self.key,
                              json.dumps({"token": token, "platform": "ios"})))
        return Request("POST", "/api/users/@me/push_tokens/unregister/", self.key,
                       json.dumps({"token": token}), expect=204)


class TwoFactorStartSetup(Scenario):
    name = "two-factor-start-setup"
    case = "GET two_factor_start_setup/ → 200 secret + otpauth URI"

    def prepare(self, i: int) -> Request:
        return Request("GET", "/api/users/@me/two_factor_start_setup/", self.key)


class TwoFactorValidate(Scenario):
    name = "two-factor-validate"
    case = "POST two_factor_validate/ with a pyotp code after a fresh setup → 200 (mails a notice after the response)"

    def prepare(self, i: int) -> Request:
        r = self.d.invoke(Request("GET", "/api/users/@me/two_factor_start_setup/", self.key))
        secret = json.loads(r["body"])["secret"]
        return Request("POST", "/api/users/@me/two_factor_validate/", self.key,
                       json.dumps({"token": totp_now(secret)}))


class TwoFactorStatus(Scenario):
    name = "two-factor-status"
    case = "GET two_factor_status/ with 2FA on and 10 backup codes → 200 (decrypts the codes)"

    def setup(self) -> None:
        super().setup()
        self.enable_2fa(self.user)
        self.backup_codes(self.user)

    def prepare(self, i: int) -> Request:
        return Request("GET", "/api/users/@me/two_factor_status/", self.key)


class TwoFactorBackupCodes(Scenario):
    name = "two-factor-backup-codes"
    case = "POST two_factor_backup_codes/ with 2FA on → 200, 10 new codes"

    def setup(self) -> None:
        super().setup()
        self.enable_2fa(self.user)

    def prepare(self, i: int) -> Request:
        return Request("POST", "/api/users/@me/two_factor_backup_codes/", self.key)


class TwoFactorVerify(Scenario):
    name = "two-factor-verify"
    case = "POST two_factor_verify/ with an unused backup code → 200 method backup_code (mails a notice after the response)"

    def setup(self) -> None:
        super().setup()
        self.enable_2fa(self.user)
        self.codes: list[str] = []

    def prepare(self, i: int) -> Request:
        if not self.codes:
            self.codes = self.backup_codes(self.user)
        return Request("POST", "/api/users/@me/two_factor_verify/", self.key,
                       json.dumps({"token": self.codes.pop()}))


class TwoFactorDisable(Scenario):
    name = "two-factor-disable"
    case = "POST two_factor_disable/ with 2FA on (enabled just before) → 200 (mails a notice after the response)"

    def prepare(self, i: int) -> Request:
        self.enable_2fa(self.user)
        return Request("POST", "/api/users/@me/two_factor_disable/", self.key)


class CancelEmailChange(Scenario):
    name = "cancel-email-change-request"
    case = "PATCH cancel_email_change_request/ after a PATCH of the email → 200 user object"

    def prepare(self, i: int) -> Request:
        self.d.invoke(Request("PATCH", "/api/users/@me/", self.mailing_key(),
                              json.dumps({"email": f"new-{uuid.uuid4().hex[:12]}@example.com"})))
        return Request("PATCH", "/api/users/cancel_email_change_request/", self.key)


class VerifyEmail(Scenario):
    name = "verify-email"
    case = "POST verify_email/ with the mailed code after a PATCH of the email → 200"

    def prepare(self, i: int) -> Request:
        r = self.d.invoke(Request("PATCH", "/api/users/@me/", self.mailing_key(),
                                  json.dumps({"email": f"moved-{uuid.uuid4().hex[:12]}@example.com"})))
        codes = [c for m in r["mail"] for c in re.findall(r"(?<!\d)\d{6}(?!\d)", m["text"])]
        if len(codes) != 1:
            raise StackError(f"verify-email: expected one mailed code, got {r['mail']}")
        return Request("POST", "/api/users/verify_email/", self.key,
                       json.dumps({"uuid": "@me", "code": codes[0]}))


class Fallback(Scenario):
    name = "fallback"
    case = "GET /api/users/@me/nope (unknown path) → 404 envelope"

    def setup(self) -> None:
        self.user = {"key": None}

    def prepare(self, i: int) -> Request:
        return Request("GET", "/api/users/@me/nope", None, expect=404)


PASSKEY_REGISTER_BEGIN = "/api/webauthn/register/begin/"
PASSKEY_REGISTER_COMPLETE = "/api/webauthn/register/complete/"
PASSKEY_CREDENTIALS = "/api/webauthn/credentials/"
PASSKEY_SIGN_IN_BEGIN = "/api/users/@me/two_factor_passkey_begin/"


class WebauthnRegisterBegin(Scenario):
    name = "webauthn-register-begin"
    case = "POST webauthn/register/begin/ → 200 creation options (the ceremony kept)"

    def prepare(self, i: int) -> Request:
        return Request("POST", PASSKEY_REGISTER_BEGIN, self.key)


class WebauthnRegisterComplete(Scenario):
    name = "webauthn-register-complete"
    case = ("POST webauthn/register/complete/ with a label and the software authenticator's credential "
            "for options begun just before → 200 (stored unverified; a fresh user every 10 passkeys)")

    def prepare(self, i: int) -> Request:
        key = self.registering_key()
        return Request("POST", PASSKEY_REGISTER_COMPLETE, key, self.registration(key, f"Key {i % 100}"))


class WebauthnCredentials(Scenario):
    name = "webauthn-credentials"
    case = "GET webauthn/credentials/ with 2 verified passkeys → 200 list"

    def setup(self) -> None:
        super().setup()
        for _ in range(2):
            self.add_verified_passkey(self.key)

    def prepare(self, i: int) -> Request:
        return Request("GET", PASSKEY_CREDENTIALS, self.key)


class WebauthnCredentialUpdate(Scenario):
    name = "webauthn-credential-update"
    case = "PATCH webauthn/credentials/{id}/ {label} of a verified passkey → 200 passkey"

    def setup(self) -> None:
        super().setup()
        self.passkey = self.add_verified_passkey(self.key)

    def prepare(self, i: int) -> Request:
        return Request("PATCH", f"{PASSKEY_CREDENTIALS}{self.passkey}/", self.key,
                       json.dumps({"label": f"Laptop {i % 10}"}))


class WebauthnCredentialDelete(Scenario):
    name = "webauthn-credential-delete"
    case = ("DELETE webauthn/credentials/{id}/ of a passkey registered just before (unverified) → 204 "
            "(mails a notice after the response)")

    def prepare(self, i: int) -> Request:
        # Each request deletes the one passkey its set-up added: the user never holds more.
        passkey = self.add_passkey(self.key)
        return Request("DELETE", f"{PASSKEY_CREDENTIALS}{passkey}/", self.key, expect=204)


class WebauthnVerifyBegin(Scenario):
    name = "webauthn-verify-begin"
    case = ("POST webauthn/credentials/{id}/verify/ of a passkey registered just before → 200 request "
            "options (the ceremony kept; a fresh user every 10 passkeys)")

    def prepare(self, i: int) -> Request:
        key = self.registering_key()
        passkey = self.add_passkey(key)
        return Request("POST", f"{PASSKEY_CREDENTIALS}{passkey}/verify/", key)


class WebauthnVerifyComplete(Scenario):
    name = "webauthn-verify-complete"
    case = ("POST webauthn/credentials/{id}/verify_complete/ with the software authenticator's assertion "
            "for a verification begun just before → 200 (mails a notice after the response; a fresh user "
            "every 10 passkeys)")

    def prepare(self, i: int) -> Request:
        key = self.registering_key()
        passkey = self.add_passkey(key)
        return Request("POST", f"{PASSKEY_CREDENTIALS}{passkey}/verify_complete/", key,
                       self.verification(key, passkey))


class TwoFactorPasskeyBegin(Scenario):
    name = "two-factor-passkey-begin"
    case = "POST two_factor_passkey_begin/ with a verified passkey and passkey 2FA on → 200 request options"

    def setup(self) -> None:
        super().setup()
        self.enable_passkey_2fa(self.user)

    def prepare(self, i: int) -> Request:
        return Request("POST", PASSKEY_SIGN_IN_BEGIN, self.key)


class TwoFactorVerifyByPasskey(TwoFactorPasskeyBegin):
    """two-factor-verify's other kind of request, measured beside its backup-code one."""

    name = "two-factor-verify" + PASSKEY
    case = ("POST two_factor_verify/ {credential_id, response} with the software authenticator's assertion "
            "for a passkey challenge begun just before → 200 method passkey")

    def prepare(self, i: int) -> Request:
        r = self.d.invoke(Request("POST", PASSKEY_SIGN_IN_BEGIN, self.key))
        assertion = self.d.passkey_assert(json.loads(r["body"]))
        return Request("POST", "/api/users/@me/two_factor_verify/", self.key,
                       json.dumps({"credential_id": assertion["id"], "response": assertion["response"]}))


class SecurityEvents(Scenario):
    name = "security-events"
    case = "GET users/@me/security_events/ with 12 records (2FA on, backup codes regenerated 11 times) → 200 first page of 20"

    def setup(self) -> None:
        super().setup()
        self.enable_2fa(self.user)
        for _ in range(11):
            self.backup_codes(self.user)

    def prepare(self, i: int) -> Request:
        return Request("GET", "/api/users/@me/security_events/", self.key)


class Empty(GetUser):
    name = EMPTY
    case = "any event → fixed 200 (baseline: lambda_runtime, no clients)"


class PythonGetUser(GetUser):
    name = PYTHON
    case = "GET /api/users/@me/ → 200 (awslambdaric + boto3: GetItem, BatchGetItem)"


def function_of(name: str) -> str:
    """The function whose binary a measurement runs: a variant's (VARIANT_SUFFIXES) is its
    function's."""
    for suffix in VARIANT_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def peer_name(function: str) -> str:
    function = function_of(function)  # a variant's peer is its function's
    return PYTHON if function == READ_ROUTE else f"python-{function}"


def is_peer(name: str) -> bool:
    return name.startswith("python-")


COMPARED = "@compared"


def compared(name: str) -> str:
    """The name of a function's binary from the --compare folder."""
    return name + COMPARED


def print_comparison(results: dict[str, "Result"], folder: str) -> None:
    """--compare: each function's cold start and penalty, ×empty against the empty function of
    the same build, for this build and the other one side by side."""
    med = statistics.median
    ms = lambda xs: f"{med(xs) * 1000:6.2f}"
    print(f"{'function':30} {'cold ms':>8} {'penalty':>8} {'×empty':>7}   | {folder}: cold, penalty, ×empty")
    for n in results:
        if n.endswith(COMPARED) or n == EMPTY:
            continue
        rows = []
        for name, empty in ((n, EMPTY), (compared(n), compared(EMPTY))):
            x = results[name]
            rows.append(f"{ms(x.cold)} {ms(x.penalty)} {med(x.penalty) / med(results[empty].penalty):7.2f}")
        print(f"{n:30} {rows[0]}   | {rows[1]}")
    e, ce = results[EMPTY], results[compared(EMPTY)]
    print(f"{EMPTY:30} {ms(e.cold)} {ms(e.penalty)}           | {ms(ce.cold)} {ms(ce.penalty)}")


class WithToken(Scenario):
    """A function's request with a sign-in token instead of the key: the local pool's access
    token of a user with the same verified address, linked on its first use (made here, outside
    the measurement), so each measured request is a linked token's."""

    inner: type[Scenario] = Scenario
    pool: LocalPool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.inner.name + TOKEN
        cls.case = cls.inner.case + ", with a Cognito access token (its identity already linked)"

    def __init__(self, driver: Driver):
        super().__init__(driver)
        self.scenario = self.inner(driver)

    def setup(self) -> None:
        assert self.pool is not None, "the local user pool is made before the scenarios"
        self.scenario.setup()
        email = self.scenario.user["email"]
        create_demo_user(self.pool, email)
        self.token = sign_in(self.pool, email)
        self.d.invoke(Request("GET", "/api/users/@me/", self.token))  # the first use links it

    def prepare(self, i: int) -> Request:
        req = self.scenario.prepare(i)
        return Request(req.method, req.path, self.token, req.body, req.expect, req.replay)


class GetUserWithToken(WithToken):
    inner = GetUser


class PushTokensRegisterWithToken(WithToken):
    inner = PushTokensRegister


class Replay(Scenario):
    """The Python replay peer of a function: each request is first run in process (bench-calls)
    with its calls recorded; the peer then gets the same event plus those calls to make."""

    def __init__(self, driver: Driver, inner: Scenario):
        super().__init__(driver)
        self.inner = inner
        self.name = peer_name(inner.name)
        self.case = f"the AWS calls of {inner.name}'s request, replayed with boto3"

    def setup(self) -> None:
        self.inner.setup()

    def prepare(self, i: int) -> Request:
        req = self.inner.prepare(50_000 + i)
        out = self.d.invoke(req)
        calls = [{k: c[k] for k in ("service", "operation", "input", "after_response")} for c in out["replay"]]
        return Request(req.method, req.path, req.key, req.body, req.expect,
                       {"calls": calls, "status": out["status"], "body": out["body"]})


# Requests with a sign-in token, beside the same functions' key requests: the suffix names the
# measurement, which runs the function's own binary.
TOKEN_SCENARIOS: list[type[WithToken]] = [GetUserWithToken, PushTokensRegisterWithToken]
# Every variant (VARIANT_SUFFIXES): the token requests, and two-factor-verify's sign-in check by
# passkey beside its backup-code one. A variant gets no Python peer of its own: its cold start
# is compared with its function's peer's (peer_name).
VARIANT_SCENARIOS: list[type[Scenario]] = [*TOKEN_SCENARIOS, TwoFactorVerifyByPasskey]

# One representative request per function (each also gets a Python replay peer).
SCENARIOS: list[type[Scenario]] = [
    PushTokensUnregister, PushTokensRegister, ScenePersonalisation, TwoFactorStartSetup,
    TwoFactorValidate, TwoFactorVerify, TwoFactorStatus, TwoFactorBackupCodes, TwoFactorDisable,
    CancelEmailChange, VerifyEmail, GetUser, UpdateUser, Fallback,
    WebauthnRegisterBegin, WebauthnRegisterComplete, WebauthnCredentials, WebauthnCredentialUpdate,
    WebauthnCredentialDelete, WebauthnVerifyBegin, WebauthnVerifyComplete, TwoFactorPasskeyBegin,
    SecurityEvents,
]


# ---------------------------------------------------------------------------------------------
# Function processes
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """How to start one function as a Lambda process."""

    name: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    binary: Path | None


class Processes:
    """Function processes started by the benchmark; all of them are stopped at the end."""

    def __init__(self, log_dir: Path):
        self.live: list[subprocess.Popen] = []
        self.log_dir = log_dir

    def spawn(self, target: Target, api: RuntimeApi) -> subprocess.Popen:
        env = dict(target.env)
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.port}",
            "AWS_LAMBDA_FUNCTION_NAME": target.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{target.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{dt.date.today():%Y/%m/%d}/[$LATEST]{uuid.uuid4().hex}",
        })
        out = open(self.log_dir / f"bench-{target.name}.log", "ab")
        try:
            wrap = os.environ.get("BENCH_WRAP", "").split() if target.binary is not None else []
            argv = [a.replace("{name}", target.name) for a in wrap] + target.argv
            proc = subprocess.Popen(argv, cwd=target.cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None and os.environ.get("BENCH_WRAP"):
            # A wrapper (a profiler) gets the chance to write its output.
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.live):
            self.stop(proc)


def peak_rss(pid: int) -> int | None:
    """VmHWM of a process, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wait_for(inv: Invocation, proc: subprocess.Popen | None, api: RuntimeApi, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while not inv.done.wait(0.05):
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{api.function_name} exited with code {proc.returncode} before answering "
                                   f"(init errors: {[e[:300] for e in api.init_errors]}); see .local/logs/bench-{api.function_name}.log")
        if time.perf_counter() > deadline:
            raise StackError(f"{api.function_name} did not answer within {timeout:.0f} s")


def check_answer(inv: Invocation, req: Request) -> None:
    status, doc = inv.response()
    if status != req.expect:
        raise StackError(f"{inv.function_name}: {req.method} {req.path} answered "
                               f"{status or inv.outcome} (expected {req.expect}): {inv.body[:300]!r}")


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass
class Result:
    name: str
    case: str
    cold: list[float] = field(default_factory=list)
    to_event: list[float] = field(default_factory=list)  # spawn -> first event delivered
    first_request: list[float] = field(default_factory=list)  # first event delivered -> response
    warm: list[float] = field(default_factory=list)  # medians of the warm turnarounds per cold run
    penalty: list[float] = field(default_factory=list)
    cpu_cold: list[float] = field(default_factory=list)  # CPU time to the first response
    cpu_penalty: list[float] = field(default_factory=list)  # that minus a warm request's
    latency: list[float] = field(default_factory=list)
    rss_after_warm: int | None = None
    calls: dict[str, Any] | None = None  # the in-process run with the most sequential calls
    call_counts: set[tuple[int, int]] = field(default_factory=set)  # (calls, sequential) seen
    direct: list[float] = field(default_factory=list)
    direct_sources: set[str] = field(default_factory=set)  # how bench-calls timed the calls
    size_x86_64: int | None = None
    size_arm64: int | None = None

    def observe_calls(self, out: dict[str, Any]) -> None:
        if out["dynamodb_calls"] != out["captured_dynamodb_calls"]:
            raise StackError(f"{self.name}: the tests' recorder and the capture disagree: {out}")
        self.call_counts.add((out["dynamodb_calls"], out["sequential"]))
        if self.calls is None or (out["sequential"], out["dynamodb_calls"]) > (
                self.calls["sequential"], self.calls["dynamodb_calls"]):
            self.calls = out


def cpu_time(pid: int) -> float:
    """Seconds the process has run on a CPU (/proc/<pid>/schedstat, nanoseconds)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return float("nan")


def cold_run(procs: Processes, target: Target, scenario: Scenario, api: RuntimeApi, i: int,
             warm_requests: int) -> tuple[float, float, float, float, float]:
    """One cold start: spawn with the invocation queued, then `warm_requests` warm ones;
    returns (cold, the part of it up to the event's delivery, median warm turnaround, CPU time
    to the first response, median CPU time of a warm request)."""
    req = scenario.prepare(i)
    inv = api.submit(api_event(req))
    asked = api.nexts
    t0 = time.perf_counter()
    proc = procs.spawn(target, api)
    try:
        wait_for(inv, proc, api, 60)
        cold = inv.finished - t0
        cpu_cold = cpu_time(proc.pid)
        check_answer(inv, req)
        # Each request starts once the process is done with the last (the mail it sends after
        # its response), as Lambda sends the next event only then.
        asked += 2
        api.wait_asked(asked, proc)
        warm, cpu_warm = [], []
        for n in range(warm_requests):
            req = scenario.prepare(i * 100 + n + 1)
            c0 = cpu_time(proc.pid)
            w = api.submit(api_event(req))
            wait_for(w, proc, api, 30)
            cpu_warm.append(cpu_time(proc.pid) - c0)
            check_answer(w, req)
            warm.append(w.turnaround)
            asked += 1
            api.wait_asked(asked, proc)
        return cold, inv.sent - t0, statistics.median(warm), cpu_cold, statistics.median(cpu_warm)
    finally:
        procs.stop(proc)


def warm_loop(procs: Processes, target: Target, scenario: Scenario, driver: Driver | None, n: int,
              res: Result) -> None:
    """n warm requests through the Runtime API, each paired with the same request run in process
    (bench-calls), whose AWS calls give the direct baseline; the two alternate, so both see the
    same machine and the same state of DynamoDB Local. Both requests of a pair are set up first
    (the in-process one for a user of its own), then run back to back, in turns first, the first
    one's set-up last: each side runs as often right after its own set-up's writes (which leave
    DynamoDB Local busy) as after the other side's request, and neither always right after its
    own set-up (which warms its caches)."""
    api = RuntimeApi(target.name)
    direct_scenario = None
    if driver is not None:
        direct_scenario = type(scenario)(driver)
        direct_scenario.setup()
    try:
        proc = procs.spawn(target, api)
        warmup = 20  # the first ones open connections and fill caches on both sides
        for i in range(n + warmup):
            # The process is done with the last request (and what it sends after the response).
            api.wait_asked(i + 1, proc)
            # Which side goes first alternates, and its set-up is the later one: in every round
            # the first request meets DynamoDB Local right after its own set-up's writes, the
            # second after the other side's set-up and request, whichever side it is.
            function_first = direct_scenario is None or i % 2 == 0
            direct_req = None
            if direct_scenario is not None and function_first:
                direct_req = direct_scenario.prepare(20_000 + i)
            req = scenario.prepare(10_000 + i)
            if direct_scenario is not None and not function_first:
                direct_req = direct_scenario.prepare(20_000 + i)

            def through_function() -> None:
                inv = api.submit(api_event(req))
                wait_for(inv, proc, api, 30)
                check_answer(inv, req)
                api.wait_asked(i + 2, proc)
                if i >= warmup:
                    res.latency.append(inv.latency)

            def in_process() -> None:
                out = driver.invoke(direct_req, measured=True)
                if i >= warmup:
                    res.direct.append(out["aws_us"] / 1e6)
                    res.direct_sources.add(out["direct_source"])
                res.observe_calls(out)

            order = [through_function] if direct_req is None else (
                [through_function, in_process] if function_first else [in_process, through_function])
            for run in order:
                run()
        res.rss_after_warm = peak_rss(proc.pid)
        procs.stop(proc)
    finally:
        api.close()


# ---------------------------------------------------------------------------------------------
# Under network latency (--network)
# ---------------------------------------------------------------------------------------------

# How long a process started ahead of its event waits, idle, before the event comes: Lambda's
# init ahead of the first invocation (provisioned concurrency, proactive initialisation).
IDLE_BEFORE_EVENT = 0.2
# Warm requests over which connections are counted.
REUSE_REQUESTS = 100


@dataclass
class NetResult:
    """A function's figures under the latency model, by round-trip time (ms)."""

    cold: dict[float, list[float]] = field(default_factory=dict)  # spawn -> first response
    first_request: dict[float, list[float]] = field(default_factory=dict)  # its event -> its response
    warm: dict[float, list[float]] = field(default_factory=dict)  # medians of the warm turnarounds
    after_init: dict[float, list[float]] = field(default_factory=dict)  # first request, event after init
    reuse: dict[str, Any] | None = None


def after_init_run(procs: Processes, target: Target, scenario: Scenario, api: RuntimeApi, i: int) -> float:
    """A process that has finished starting up and waited IDLE_BEFORE_EVENT for its first event:
    that first request's time (event delivered -> response)."""
    req = scenario.prepare(i)
    asked = api.nexts
    proc = procs.spawn(target, api)
    try:
        api.wait_asked(asked + 1, proc)
        time.sleep(IDLE_BEFORE_EVENT)
        inv = api.submit(api_event(req))
        wait_for(inv, proc, api, 60)
        check_answer(inv, req)
        return inv.finished - inv.sent
    finally:
        procs.stop(proc)


def connection_reuse(procs: Processes, target: Target, scenario: Scenario, api: RuntimeApi,
                     net: Network, i: int) -> dict[str, Any]:
    """The proxy's counts for one process: the connections its cold request opened, and those
    opened over REUSE_REQUESTS warm requests after it (none, if every connection is reused)."""
    net.reset()
    req = scenario.prepare(i)
    inv = api.submit(api_event(req))
    asked = api.nexts
    proc = procs.spawn(target, api)
    try:
        wait_for(inv, proc, api, 60)
        check_answer(inv, req)
        asked += 2
        api.wait_asked(asked, proc)
        cold = net.stats()
        for n in range(REUSE_REQUESTS):
            req = scenario.prepare(i * 1000 + n + 1)
            w = api.submit(api_event(req))
            wait_for(w, proc, api, 30)
            check_answer(w, req)
            asked += 1
            api.wait_asked(asked, proc)
        after = net.stats()
    finally:
        procs.stop(proc)
    used = [s for s in after if after[s]["requests"]]
    return {
        "warm_requests": REUSE_REQUESTS,
        "cold_handshakes": {s: cold[s]["handshakes"] for s in used if cold[s]["handshakes"]},
        "warm_handshakes": {s: after[s]["handshakes"] - cold[s]["handshakes"] for s in used},
        "warm_calls": {s: after[s]["requests"] - cold[s]["requests"] for s in used},
    }


def network_phase(procs: Processes, targets: dict[str, Target], scenario_of: dict[str, Scenario],
                  names: list[str], net: Network, rtts: list[float], runs: int,
                  warm_per_cold: int) -> dict[str, NetResult]:
    """Cold starts, warm requests and a first request after init at each round-trip time,
    interleaved across functions as the plain cold starts are; then connection reuse."""
    out = {n: NetResult() for n in names}
    apis = {n: RuntimeApi(n) for n in names}
    try:
        for rtt in rtts:
            net.set_rtt(rtt)
            log(f"network at {rtt:g} ms round trips: {len(names)} functions × {runs} (+1 unmeasured)")
            for rep in range(runs + 1):
                for n in (names if rep % 2 == 0 else names[::-1]):
                    i = 700 + int(rtt) * 10 + rep
                    cold, to_event, warm, _, _ = cold_run(procs, targets[n], scenario_of[n], apis[n], i,
                                                          warm_per_cold)
                    first = after_init_run(procs, targets[n], scenario_of[n], apis[n], 40_000 + i)
                    if rep > 0:
                        r = out[n]
                        r.cold.setdefault(rtt, []).append(cold)
                        r.first_request.setdefault(rtt, []).append(cold - to_event)
                        r.warm.setdefault(rtt, []).append(warm)
                        r.after_init.setdefault(rtt, []).append(first)
        net.set_rtt(0)
        log(f"network: connections over {REUSE_REQUESTS} warm requests, function by function")
        for n in names:
            out[n].reuse = connection_reuse(procs, targets[n], scenario_of[n], apis[n], net, 60_000)
    finally:
        for a in apis.values():
            a.close()
    return out


def summarize_network(net_results: dict[str, NetResult], rtts: list[float],
                      key_functions: set[str]) -> dict[str, Any]:
    """Medians by round-trip time, and the round trips a request waits for: the growth of its
    time from the lowest to the highest round-trip time, divided by the difference."""
    lo, hi = min(rtts), max(rtts)
    med = statistics.median
    functions = {}
    for n, r in net_results.items():
        entry: dict[str, Any] = {
            f"{kind}_ms": {f"{rtt:g}": ms(med(getattr(r, kind)[rtt])) for rtt in rtts}
            for kind in ("cold", "first_request", "warm", "after_init")
        }
        if hi > lo:
            span = (hi - lo) / 1000
            for kind in ("cold", "first_request", "warm", "after_init"):
                runs = getattr(r, kind)
                entry[f"{kind}_round_trips"] = round((med(runs[hi]) - med(runs[lo])) / span, 1)
        entry["holds_keys"] = function_of(n) in key_functions
        entry["connections"] = r.reuse
        functions[n] = entry
    budgets = []
    if hi > lo and READ_ROUTE in functions:
        # What the cold start adds to the request (cold − warm, at the highest round-trip time):
        # a function with the keys against get-user, so that a function whose request itself
        # makes one more round trip (a write after its read) is not counted against its start.
        at = f"{hi:g}"
        base = functions[READ_ROUTE]
        base_added = base["cold_ms"][at] - base["warm_ms"][at]
        keyed = [(n, e["cold_ms"][at] - e["warm_ms"][at], e) for n, e in functions.items() if e["holds_keys"]]
        if keyed:
            n, added, e = max(keyed, key=lambda x: x[1])
            budgets.append({
                "budget": f"cold start of a function with the keys vs get-user's, at {hi:g} ms round trips "
                          "(what the cold start adds to the request: cold − warm)",
                "limit": f"≤ one round trip ({hi:g} ms) more", "worst_function": n,
                "worst": round(added - base_added, 1),
                "shown": f"+{added - base_added:.1f} ms ({n}: {added:.1f} ms vs {base_added:.1f} ms; cold "
                         f"{e['cold_ms'][at]:.1f} vs {base['cold_ms'][at]:.1f} ms, of which its warm request's "
                         f"{e['warm_ms'][at] - base['warm_ms'][at]:+.1f} ms)",
                "pass": added - base_added <= hi})
    reused = [(n, sum(e["connections"]["warm_handshakes"].values())) for n, e in functions.items()
              if e.get("connections")]
    if reused:
        worst = max(reused, key=lambda kv: kv[1])
        budgets.append({
            "budget": f"new TLS connections over {REUSE_REQUESTS} warm requests", "limit": "0",
            "worst_function": worst[0], "worst": worst[1], "shown": f"{worst[1]} ({worst[0]})",
            "pass": worst[1] == 0})
    return {"rtts_ms": rtts, "idle_before_event_s": IDLE_BEFORE_EVENT, "functions": functions,
            "budgets": budgets}


def render_network(doc: dict[str, Any]) -> list[str]:
    rtts = [f"{x:g}" for x in doc["rtts_ms"]]
    at = " / ".join(rtts)
    lines = [
        "## Under network latency",
        "",
        f"`scripts/dev bench --network {','.join(rtts)}`: every AWS endpoint (DynamoDB, Secrets Manager, SES,",
        "Cognito and the issuer's keys) behind TLS and a proxy that delays everything crossing it by half",
        "a round trip each way (scripts/latency-proxy.py): a new connection costs two round trips (TCP,",
        "then TLS 1.3) before its first request, each request one. Times in ms at each round-trip time",
        f"({at} ms; medians). Cold: spawn → first response, with the event queued before the spawn (an",
        "on-demand cold start); first: that event → its response. After init: the first request of a",
        f"process that started, asked for its event and waited {doc['idle_before_event_s']:g} s (Lambda's init ahead of",
        "the event). Round trips: the growth of that time from the lowest round-trip time to the highest,",
        "divided by the difference — the round trips the request waits for one after another, handshakes",
        f"included. Connections: TLS handshakes of the cold request per endpoint, then new ones over",
        f"{REUSE_REQUESTS} warm requests (0: every connection reused) and the calls those made.",
        "",
    ]
    for b in doc["budgets"]:
        lines.append(f"- **{b['budget']}** ({b['limit']}): {b['shown']}: {'pass' if b['pass'] else '**FAIL**'}")
    lines += [
        "",
        f"| Function | Cold ms ({at}) | First request | Warm | After init | Round trips cold / first / warm / after init | Connections: cold; new over {REUSE_REQUESTS} warm (calls) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, e in doc["functions"].items():
        cells = [" / ".join(fmt(e[f"{k}_ms"][r], 1) for r in rtts) for k in ("cold", "first_request", "warm", "after_init")]
        trips = " / ".join(fmt(e.get(f"{k}_round_trips")) for k in ("cold", "first_request", "warm", "after_init"))
        c = e.get("connections")
        conn = "–" if not c else (", ".join(f"{s} {k}" for s, k in c["cold_handshakes"].items()) + "; "
                                  + ", ".join(f"{s} {k} ({c['warm_calls'][s]})" for s, k in c["warm_handshakes"].items()))
        label = n + (" (keys)" if e["holds_keys"] else "")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | {trips} | {conn} |")
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------


def throughput(procs: Processes, target: Target, driver: Driver, scenario_cls: type[Scenario],
               concurrency: int, seconds: float) -> dict[str, Any]:
    api = RuntimeApi(target.name)
    clients = []
    for _ in range(concurrency):
        s = scenario_cls(driver)
        s.setup()
        clients.append(s)
    started = [procs.spawn(target, api) for _ in range(concurrency)]
    try:
        # Every process answers once before the clock starts (their cold starts).
        warmups = [api.submit(api_event(c.prepare(0))) for c in clients for _ in range(2)]
        for inv in warmups:
            wait_for(inv, None, api, 60)
        stop_at = time.perf_counter() + seconds
        lock = threading.Lock()
        ok, errors, latencies = [0], [0], []

        def client(s: Scenario) -> None:
            i = 0
            while time.perf_counter() < stop_at:
                i += 1
                req = s.prepare(i)
                inv = api.submit(api_event(req))
                if not inv.done.wait(10):
                    with lock:
                        errors[0] += 1
                    continue
                status, _ = inv.response()
                with lock:
                    if 200 <= status < 300:
                        ok[0] += 1
                        latencies.append(inv.turnaround)
                    else:
                        errors[0] += 1

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in clients]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        elapsed = time.perf_counter() - t0
        rss = [r for p in started if (r := peak_rss(p.pid)) is not None]
        exited = sum(1 for p in started if p.poll() is not None)
        return {
            "function": target.name,
            "concurrency": concurrency,
            "processes": concurrency,
            "seconds": round(elapsed, 2),
            "requests": ok[0] + errors[0],
            "ok": ok[0],
            "errors": errors[0],
            "exited_processes": exited,
            "rps": round(ok[0] / elapsed, 1),
            "p50_ms": ms(percentile(latencies, 50)) if latencies else None,
            "p99_ms": ms(percentile(latencies, 99)) if latencies else None,
            "peak_rss_bytes": max(rss) if rss else None,
        }
    finally:
        for p in started:
            procs.stop(p)
        api.close()


# ---------------------------------------------------------------------------------------------
# Build, sizes, the Python peer
# ---------------------------------------------------------------------------------------------


def run_checked(sup: Supervisor, name: str, argv: list[str], env: dict[str, str]) -> None:
    if sup.run(name, argv, env=env) != 0:
        raise StackError(f"{name} failed")


def zig_available(env: dict[str, str]) -> bool:
    if shutil.which("zig", path=env.get("PATH")):
        return True
    return subprocess.run([str(VENV_BIN / "python"), "-c", "import ziglang"],
                          capture_output=True).returncode == 0


def arm64_sizes(sup: Supervisor, env: dict[str, str], binaries: list[str]) -> dict[str, int]:
    """Builds the functions for arm64 as `sam build` does (cargo lambda, zig) and returns the
    size of each bootstrap."""
    installed = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True)
    if "aarch64-unknown-linux-gnu" not in installed.stdout:
        log("adding the aarch64-unknown-linux-gnu target (rustup)")
        run_checked(sup, "rustup target add", ["rustup", "target", "add", "aarch64-unknown-linux-gnu"], env)
    argv = [str(VENV_BIN / "cargo-lambda"), "lambda", "build", "--release", "--arm64"]
    for b in binaries:
        argv += ["--bin", b]
    log("building for arm64 (cargo lambda build --release --arm64)")
    run_checked(sup, "cargo lambda build --arm64", argv, env)
    target_dir = cargo_target_dir()
    out = {}
    for b in binaries:
        p = target_dir / "lambda" / b / "bootstrap"
        if p.exists():
            out[b] = p.stat().st_size
    return out


def python_peer(sup: Supervisor) -> Path:
    """The peer's own environment (.local/bench-python), from its pinned requirements."""
    req = PY_FUNCTION_DIR / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = PY_VENV / ".requirements.sha256"
    py = PY_VENV / "bin" / "python"
    if not py.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
        log(f"installing the Python peer into {PY_VENV.relative_to(ROOT)} (awslambdaric, boto3)")
        if PY_VENV.exists():
            shutil.rmtree(PY_VENV)
        base = getattr(sys, "_base_executable", sys.executable)
        run_checked(sup, "python -m venv", [base, "-m", "venv", str(PY_VENV)], dict(os.environ))
        run_checked(sup, "pip install", [str(py), "-m", "pip", "install", "--disable-pip-version-check",
                                         "--no-input", "-q", "-r", str(req)], dict(os.environ))
        stamp.write_text(digest + "\n")
    return py


def lambda_env(stack_env: dict[str, str]) -> dict[str, str]:
    """A Lambda-like environment: the template's variables and the local endpoints, little
    else (nothing of the caller's shell, such as SSL_CERT_DIR, leaks into the functions)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": ":UTC",
           "LAMBDA_RUNTIME_DIR": "/var/runtime"}
    env.update(stack_env)
    return env


def own_variables(template: dict[str, Any]) -> dict[str, set[str]]:
    """Binary -> the variables its function sets itself (beyond the Globals)."""
    out = {}
    for logical_id, binary in functions(template).items():
        props = template["Resources"][logical_id].get("Properties", {})
        out[binary] = set((props.get("Environment", {}).get("Variables", {}) or {}))
    return out


def function_env(env: dict[str, str], own: dict[str, set[str]], binary: str) -> dict[str, str]:
    """The one environment of the local stack (every function's variables together) cut down
    to what this function has when deployed: the Globals and its own variables only (so only
    the functions that hold the encryption keys get ENCRYPTION_SECRET_ID)."""
    others = set().union(*own.values()) - own.get(binary, set())
    return {k: v for k, v in env.items() if k not in others}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""

    commit = out(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = bool(out(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
        "kernel": platform.release(), "rustc": out(["rustc", "--version"]),
        "python": platform.python_version(),
        "commit": commit + ("+dirty" if dirty else ""),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 1048576:.2f}"


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def summarize(results: dict[str, Result], rps: list[dict[str, Any]], info: dict[str, Any],
              args: argparse.Namespace) -> dict[str, Any]:
    empty = results[EMPTY]
    empty_penalty = statistics.median(empty.penalty)
    empty_cpu_penalty = statistics.median(empty.cpu_penalty)
    functions = {}
    for name, r in results.items():
        peer = results.get(peer_name(name)) if not is_peer(name) and name != EMPTY else None
        peer = peer or results[PYTHON]
        py_cold = statistics.median(peer.cold)
        cold = statistics.median(r.cold)
        warm = statistics.median(r.warm)
        penalty = statistics.median(r.penalty)
        entry: dict[str, Any] = {
            "request": r.case,
            "cold_ms": ms(cold), "cold_runs_ms": [ms(x) for x in r.cold],
            # Where a cold start's time goes: starting up and asking for the event, then the
            # first request itself (medians of each, so they need not add up to cold_ms).
            "cold_to_event_ms": ms(statistics.median(r.to_event)),
            "cold_first_request_ms": ms(statistics.median(r.first_request)),
            "warm_ms": ms(warm), "penalty_ms": ms(penalty),
            "penalty_vs_empty": round(penalty / empty_penalty, 2) if empty_penalty > 0 else None,
            "python_peer": None if is_peer(name) else peer.name,
            "python_peer_cold_ms": None if is_peer(name) else ms(py_cold),
            "python_cold_vs_cold": None if is_peer(name) else round(py_cold / cold, 1),
            # The same comparison without the request's own work (its calls to the emulators,
            # which both sides wait for alike): the peer's cold-start penalty over this one's.
            "python_penalty_vs_penalty": None if is_peer(name) or penalty <= 0
            else round(statistics.median(peer.penalty) / penalty, 1),
            "cpu_to_first_response_ms": ms(statistics.median(r.cpu_cold)),
            "cpu_penalty_ms": ms(statistics.median(r.cpu_penalty)),
            "cpu_penalty_vs_empty": round(statistics.median(r.cpu_penalty) / empty_cpu_penalty, 2),
            "warm_p50_ms": ms(percentile(r.latency, 50)) if r.latency else None,
            "warm_p99_ms": ms(percentile(r.latency, 99)) if r.latency else None,
            "warm_requests": len(r.latency),
            "peak_rss_bytes": r.rss_after_warm,
            "size_x86_64_bytes": r.size_x86_64,
            "size_arm64_bytes": r.size_arm64,
        }
        if r.calls is not None:
            entry.update({
                # The most seen over every in-process run of the representative request.
                "dynamodb_calls": max(c for c, _ in r.call_counts),
                "sequential_dynamodb_calls": max(s for _, s in r.call_counts),
                "dynamodb_calls_seen": sorted([c, s] for c, s in r.call_counts),
                "dynamodb_operations": [c["operation"] for c in r.calls["recorded"]],
                "dynamodb_actions": [c["actions"] for c in r.calls["recorded"]],
                "other_aws_calls": r.calls["other_calls"],
                "after_response_aws_calls": r.calls.get("after_response_calls", []),
                "stages": r.calls["stages"],
            })
        if r.direct and r.calls and (r.calls["dynamodb_calls"] or r.calls["other_calls"]):
            d50, d99 = percentile(r.direct, 50), percentile(r.direct, 99)
            entry.update({
                "direct_p50_ms": ms(d50), "direct_p99_ms": ms(d99), "direct_requests": len(r.direct),
                "direct_timed_by": sorted(r.direct_sources),
                "latency_ratio_p50": round(percentile(r.latency, 50) / d50, 2),
                "latency_ratio_p99": round(percentile(r.latency, 99) / d99, 2),
            })
        functions[name] = entry
    rust = {k: v for k, v in functions.items() if k != EMPTY and not is_peer(k)}
    load_rss = [x["peak_rss_bytes"] for x in rps if x.get("peak_rss_bytes")]

    def budget(name: str, limit: str, worst: tuple[str, Any], ok: bool, shown: str) -> dict[str, Any]:
        return {"budget": name, "limit": limit, "worst_function": worst[0], "worst": worst[1],
                "shown": shown, "pass": ok}

    def worst(key: str, high: bool = True) -> tuple[str, Any]:
        items = [(k, v[key]) for k, v in rust.items() if v.get(key) is not None]
        if not items:
            return ("–", None)
        return max(items, key=lambda kv: kv[1]) if high else min(items, key=lambda kv: kv[1])

    budgets = []
    w = worst("penalty_vs_empty")
    budgets.append(budget("cold-start penalty vs the empty function", f"≤ {MAX_PENALTY_VS_EMPTY}×", w,
                          w[1] is not None and w[1] <= MAX_PENALTY_VS_EMPTY,
                          f"{w[1]}× ({w[0]}: {rust[w[0]]['penalty_ms']} ms vs {ms(empty_penalty)} ms)"))
    w = worst("python_cold_vs_cold", high=False)
    budgets.append(budget("cold start vs the Python function", f"≥ {MIN_PYTHON_COLD_RATIO}× faster", w,
                          w[1] >= MIN_PYTHON_COLD_RATIO,
                          f"{w[1]}× ({w[0]}: {rust[w[0]]['cold_ms']} ms vs {rust[w[0]]['python_peer_cold_ms']} ms)"))
    w = worst("sequential_dynamodb_calls")
    budgets.append(budget("sequential DynamoDB calls per request", f"≤ {MAX_SEQUENTIAL}", w,
                          w[1] is not None and w[1] <= MAX_SEQUENTIAL, f"{w[1]} ({w[0]})"))
    w = worst("latency_ratio_p50")
    budgets.append(budget("warm latency p50 vs the same calls made directly", f"≤ {MAX_LATENCY_RATIO}×", w,
                          w[1] is not None and w[1] <= MAX_LATENCY_RATIO,
                          f"{w[1]}× ({w[0]}: {rust[w[0]]['warm_p50_ms']} ms vs {rust[w[0]]['direct_p50_ms']} ms)"))
    w = worst("latency_ratio_p99")
    budgets.append(budget("warm latency p99 vs the same calls made directly (reported)", f"≤ {MAX_LATENCY_RATIO}×",
                          w, w[1] is not None and w[1] <= MAX_LATENCY_RATIO,
                          f"{w[1]}× ({w[0]}: {rust[w[0]]['warm_p99_ms']} ms vs {rust[w[0]]['direct_p99_ms']} ms)"))
    w = worst("size_x86_64_bytes")
    budgets.append(budget("stripped binary, x86_64", "≤ 8 MiB", w,
                          w[1] is not None and w[1] <= MAX_BINARY_BYTES, f"{mib(w[1])} MiB ({w[0]})"))
    w = worst("size_arm64_bytes")
    budgets.append(budget("stripped binary, arm64 (cargo lambda)", "≤ 8 MiB", w,
                          w[1] is None or w[1] <= MAX_BINARY_BYTES,
                          f"{mib(w[1])} MiB ({w[0]})" if w[1] is not None else "not measured"))
    w = worst("peak_rss_bytes")
    peak_load = max(load_rss) if load_rss else None
    peak = max(x for x in (w[1], peak_load) if x is not None)
    budgets.append(budget("peak RSS (after the warm requests; under load)", "≤ 32 MiB", w,
                          peak <= MAX_RSS_BYTES,
                          f"{mib(w[1])} MiB ({w[0]}); {mib(peak_load)} MiB under load"))
    return {
        "machine": info,
        "settings": {"secrets_from_memory": args.secrets_from_memory,
                     "cold_runs": args.cold_runs, "warm_per_cold_run": args.warm_per_cold,
                     "warm_requests": args.requests, "rps_seconds": args.rps_seconds,
                     "concurrency": args.concurrency},
        "budgets": budgets,
        "functions": functions,
        "throughput": rps,
    }


def render(doc: dict[str, Any]) -> str:
    m, s = doc["machine"], doc["settings"]
    f = doc["functions"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/dev bench` (scripts/bench.py); the figures of one run, all of them also in",
        "`BENCHMARKS.json`. Local only: DynamoDB Local and moto on loopback, functions as Lambda",
        "processes behind a minimal Runtime API in the harness — ratios matter, not absolute times.",
        "",
        f"- **Run:** {m['date']}, commit `{m['commit']}`",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / 2**30:.0f} GiB, Linux {m['kernel']}, "
        f"{m['rustc']}, Python {m['python']}; load average {m['load_average_start']} at the start, "
        f"{m.get('load_average_end')} at the end of the measurements (other work on the machine adds noise)",
        f"- **Settings:** {s['cold_runs']} cold starts per function (median; one unmeasured start first), "
        f"{s['warm_per_cold_run']} warm requests after each; {s['warm_requests']} warm requests for the latencies; "
        f"{s['rps_seconds']} s per throughput point"
        + ("; **Secrets Manager answered from memory** (`--secrets-from-memory`: moto's first answer, "
           "then a cache; not the standard run)" if s.get("secrets_from_memory") else ""),
        "",
        "## Budgets",
        "",
        "| Budget | Limit | Measured (worst function) | Result |",
        "|---|---|---|---|",
    ]
    for b in doc["budgets"]:
        lines.append(f"| {b['budget']} | {b['limit']} | {b['shown']} | {'pass' if b['pass'] else '**FAIL**'} |")
    lines += [
        "",
        "## Per function",
        "",
        "Cold: process spawn → first response through the Runtime API; in brackets its two parts,",
        "spawn → the first event delivered (starting up and asking for it) / that event → its response",
        "(the first request; medians, so they need not add up). Warm: a queued invocation → its",
        "response, same process. Penalty: cold − warm. ×empty: penalty ÷ the empty function's penalty.",
        "Python ÷: its Python peer's cold start ÷ this one's, and (in brackets) its peer's penalty ÷ this",
        "one's: the same comparison without the request's own calls to the emulators, which both sides",
        "wait for alike. CPU: the process's CPU time up to its",
        "first response, and its CPU penalty (that minus a warm request's) ÷ the empty function's — the",
        "same comparison without the waiting, so less sensitive to a busy machine. Calls: DynamoDB calls per request",
        "(sequential), the most seen, and the calls made after the response (a notice's mail, the",
        "hourly note of the key's use: `shared::run` makes them once the response is posted and",
        "before it asks for the next event; the Python peer makes them at the same point; the next",
        "request waits for them in both cases).",
        "Latency: event delivered → response, p50 / p99. Direct: the time the same request spends in",
        "the AWS calls it waits for (SES included where the response waits for a mail) when run in",
        "process with the same SDK clients, stage by stage; each function request alternates with one.",
        "",
        "| Function | Cold ms | Warm ms | Penalty ms | ×empty | Python ÷ | CPU ms, penalty ×empty | Calls (seq.) | Latency p50 / p99 ms | Direct p50 / p99 ms | Ratio p50 / p99 | x86_64 / arm64 MiB | Peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, label: str) -> str:
        e = f[name]
        calls = "–" if e.get("dynamodb_calls") is None else f"{e['dynamodb_calls']} ({e['sequential_dynamodb_calls']})"
        if e.get("other_aws_calls"):
            calls += " + " + ", ".join(x.replace("sesv2.", "SES ") for x in e["other_aws_calls"])
        if e.get("after_response_aws_calls"):
            calls += "; after the response: " + ", ".join(x.replace("sesv2.", "SES ") for x in e["after_response_aws_calls"])
        direct = "–" if e.get("direct_p50_ms") is None else f"{fmt(e['direct_p50_ms'], 2)} / {fmt(e['direct_p99_ms'], 2)}"
        ratio = "–" if e.get("latency_ratio_p50") is None else f"{e['latency_ratio_p50']:.2f} / {e['latency_ratio_p99']:.2f}"
        size = f"{mib(e['size_x86_64_bytes'])} / {mib(e['size_arm64_bytes'])}"
        python = fmt(e["python_cold_vs_cold"])
        if e.get("python_penalty_vs_penalty") is not None:
            python += f" ({fmt(e['python_penalty_vs_penalty'])})"
        cold = f"{fmt(e['cold_ms'])} ({fmt(e['cold_to_event_ms'])} / {fmt(e['cold_first_request_ms'])})"
        return (f"| {label} | {cold} | {fmt(e['warm_ms'], 2)} | {fmt(e['penalty_ms'])} | "
                f"{fmt(e['penalty_vs_empty'], 2)} | {python} | "
                f"{fmt(e['cpu_to_first_response_ms'], 2)}, {fmt(e['cpu_penalty_vs_empty'], 2)} | {calls} | "
                f"{fmt(e['warm_p50_ms'], 2)} / {fmt(e['warm_p99_ms'], 2)} | {direct} | {ratio} | {size} | "
                f"{mib(e['peak_rss_bytes'])} |")

    for name in f:
        if name != EMPTY and not is_peer(name):
            lines.append(row(name, name))
    lines.append(row(EMPTY, f"*{EMPTY} (baseline)*"))
    for name in f:
        if is_peer(name):
            lines.append(row(name, f"*{name} (Python peer)*"))
    lines += [
        "",
        "Representative requests (each measured request is a successful one, set up just before it",
        "outside the measurement):",
        "",
    ]
    for name, e in f.items():
        lines.append(f"- `{name}`: {e['request']}")
    if doc.get("network"):
        lines += ["", *render_network(doc["network"])]
    lines += [
        "",
        "## Throughput",
        "",
        "N function processes behind one Runtime API (as Lambda runs N execution environments) and N",
        "clients in a closed loop, each with its own user; errors are non-2xx answers, function errors",
        "and time-outs (10 s).",
        "",
        "| Function | Concurrency | Requests/s | Requests | Errors | p50 ms | p99 ms | Peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in doc["throughput"]:
        lines.append(f"| {t['function']} | {t['concurrency']} | {t['rps']} | {t['requests']} | {t['errors']} | "
                     f"{fmt(t['p50_ms'], 2)} | {fmt(t['p99_ms'], 2)} | {mib(t['peak_rss_bytes'])} |")
    lines += [
        "",
        "## How it is measured",
        "",
        "- Binaries: `cargo build --release --workspace` (opt-level s, fat LTO, one codegen unit,",
        "  stripped); arm64 sizes from `cargo lambda build --release --arm64`, what `sam build` deploys",
        "  (it cannot run here).",
        "- Each process gets a Lambda-like environment: the template's variables, the local endpoints,",
        "  `AWS_LAMBDA_*`, and nothing else from the caller's shell.",
        "- The Python peers run on `awslambdaric` (`python -m awslambdaric ...`) with boto3, from their",
        "  own pinned environment (scripts/bench/python-function). get-user's does its work written out",
        "  in Python (handler.py). Every other function's peer (replay.py) makes exactly the AWS calls",
        "  the Rust function made for the same request, recorded by bench-calls (same inputs, same",
        "  order), builds its clients as the Rust function does, and reads the encryption keys at",
        "  start-up where the function has them; it skips the function's own work (parsing, TOTP,",
        "  encryption), so it understates a real Python function. Each function's cold start is",
        "  compared with its own peer's.",
        "- Each process gets the environment its function has when deployed: the Globals and its own",
        "  variables (only the 2FA functions that use the keys have ENCRYPTION_SECRET_ID).",
        "- DynamoDB calls and the direct baseline come from bench-calls (scripts/bench/calls), which runs",
        "  the same request, prepared the same way, straight into the handler with the functions' SDK",
        "  configuration: the tests' interceptor (tests/src/calls.rs) counts the calls and the sequential",
        "  ones; the SDK's own span around each operation (`DynamoDB.GetItem`, …) times it, from the",
        "  operation's start to its output, as a caller of the SDK waits for it (`direct_timed_by` in",
        "  the JSON; the interceptors' narrower window if a span was missing). The direct time is the sum over the request's",
        "  stages (calls that overlapped count once) of the time from the first call's start to the last",
        "  one's end: what the calls take when made directly, without the function around them. Every",
        "  function request alternates with one such run, so both see the same load and data.",
        "- Peak RSS is VmHWM from /proc after the warm requests, and the highest of the processes under",
        "  load.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def bench(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    info = machine()
    require_tool("cargo", "install Rust with rustup")
    services = start_services(sup, "bench", free_port(), free_port())
    env = stack_env(template, services)
    penv = process_env(env)
    if not args.no_build:
        log("building (cargo build --release --workspace)")
        run_checked(sup, "cargo build --release", ["cargo", "build", "--release", "--workspace"], penv)
    py = python_peer(sup)
    wait_services(services)
    pool = setup_services(template, services, env)
    # The functions take the local pool's sign-in tokens, as a deployment takes its pool's.
    env.update(pool.function_env())
    penv = process_env(env)
    WithToken.pool = pool
    target_dir = cargo_target_dir()
    release = Path(args.binaries) if args.binaries else target_dir / "release"
    binaries = [b for b in functions(template).values()]
    fenv = lambda_env(env)
    if args.secrets_from_memory:
        port = free_port()
        cache = sup.start("secrets cache", [sys.executable, str(BENCH_DIR / "secrets-cache.py"), str(port),
                                            services.moto_url], log=LOG_DIR / "bench-secrets-cache.log")
        wait_until("the secrets cache", lambda: not port_is_free(port), cache, 10)
        fenv["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = f"http://127.0.0.1:{port}"
    own = own_variables(template)
    if args.no_connect_during_init:
        fenv["CONNECT_DURING_INIT"] = "false"
    targets = {b: Target(b, [str(release / b)], ROOT, function_env(fenv, own, b), release / b) for b in binaries}
    for cls in VARIANT_SCENARIOS:
        b = function_of(cls.name)
        targets[cls.name] = Target(cls.name, [str(release / b)], ROOT, function_env(fenv, own, b), release / b)
    targets[EMPTY] = Target(EMPTY, [str(release / EMPTY)], ROOT, fenv, release / EMPTY)
    targets[PYTHON] = Target(PYTHON, [str(py), "-m", "awslambdaric", "handler.handler"], PY_FUNCTION_DIR,
                             {**function_env(fenv, own, READ_ROUTE), "LAMBDA_TASK_ROOT": str(PY_FUNCTION_DIR),
                              "_HANDLER": "handler.handler"},
                             None)
    for b in binaries:
        if b != READ_ROUTE:
            targets[peer_name(b)] = Target(
                peer_name(b), [str(py), "-m", "awslambdaric", "replay.handler"], PY_FUNCTION_DIR,
                {**function_env(fenv, own, b), "LAMBDA_TASK_ROOT": str(PY_FUNCTION_DIR), "_HANDLER": "replay.handler"},
                None)
    if args.compare:
        # A variant's compared build is its function's binary from the other folder.
        for n in [*binaries, *(cls.name for cls in VARIANT_SCENARIOS), EMPTY]:
            t = targets[n]
            other = Path(args.compare) / function_of(n)
            targets[compared(n)] = Target(compared(n), [str(other)], t.cwd, t.env, other)
    for t in targets.values():
        if t.binary is not None and not t.binary.exists():
            raise StackError(f"{t.binary} is missing (build with cargo build --release --workspace)")

    driver = Driver(release / "bench-calls", penv, LOG_DIR / "bench-calls.log")
    procs = Processes(LOG_DIR)
    try:
        scenario_of: dict[str, Scenario] = {}
        for cls in [*SCENARIOS, *VARIANT_SCENARIOS, Empty, PythonGetUser]:
            s = cls(driver)
            s.setup()
            scenario_of[s.name] = s
        for cls in SCENARIOS:
            if cls.name != READ_ROUTE:
                s = Replay(driver, cls(driver))
                s.setup()
                scenario_of[s.name] = s
        missing = set(binaries) - set(scenario_of)
        if missing:
            raise StackError(f"no benchmark request for {sorted(missing)}: add a Scenario")
        wanted = (lambda n: not args.only or n in args.only or n in (EMPTY, PYTHON)
                  or (is_peer(n) and any(peer_name(o) == n for o in args.only)))
        names = [n for n in scenario_of if n in targets and wanted(n)]
        if args.compare:
            names = [x for n in names if not is_peer(n) for x in (n, compared(n))]
            for n in names:
                scenario_of.setdefault(n, scenario_of[n.removesuffix(COMPARED)])
        results = {n: Result(n, scenario_of[n].case) for n in names}

        # Under the latency model: the Rust functions and the empty one, their endpoints behind
        # the proxy.
        net_names = [n for n in names if not is_peer(n)]
        key_functions = {b for b in binaries if targets[b].env.get("ENCRYPTION_SECRET_ID")}
        net_results: dict[str, NetResult] = {}
        if args.network:
            net = start_network(sup, services)
            net_targets = {n: Target(n, targets[n].argv, targets[n].cwd, net.function_env(targets[n].env),
                                     targets[n].binary) for n in net_names}
            net_results = network_phase(procs, net_targets, scenario_of, net_names, net, args.network,
                                        args.network_runs, args.warm_per_cold)
            sup.stop(net.child)
        if args.network_only:
            doc = summarize_network(net_results, args.network, key_functions)
            print("\n".join(render_network(doc)))
            failed = [b["budget"] for b in doc["budgets"] if not b["pass"]]
            print(f"summary: {len(doc['budgets']) - len(failed)} passed, {len(failed)} failed", flush=True)
            return 0

        # Cold starts, interleaved across functions.
        apis = {n: RuntimeApi(n) for n in names}
        try:
            log(f"cold starts: {len(names)} functions × {args.cold_runs} (+1 unmeasured)")
            for rep in range(args.cold_runs + 1):
                # Every other round in reverse, so no function always follows the same one.
                for n in (names if rep % 2 == 0 else names[::-1]):
                    # The compared build gets requests of its own (another range of i).
                    i = rep + 500 if n.endswith(COMPARED) else rep
                    cold, to_event, warm, cpu_cold, cpu_warm = cold_run(
                        procs, targets[n], scenario_of[n], apis[n], i, args.warm_per_cold)
                    if rep > 0:
                        results[n].cold.append(cold)
                        results[n].to_event.append(to_event)
                        results[n].first_request.append(cold - to_event)
                        results[n].warm.append(warm)
                        results[n].penalty.append(cold - warm)
                        results[n].cpu_cold.append(cpu_cold)
                        results[n].cpu_penalty.append(cpu_cold - cpu_warm)
        finally:
            for a in apis.values():
                a.close()

        if args.compare:
            print_comparison(results, args.compare)
            return 0

        # Warm latencies, each request paired with its in-process run (DynamoDB calls and the
        # direct baseline), function by function.
        for n in names:
            if is_peer(n) and n != PYTHON:
                continue  # the replay peers are there for the cold starts
            log(f"warm latency: {n} ({args.requests} requests)")
            in_process = driver if n not in (EMPTY, PYTHON) else None
            warm_loop(procs, targets[n], scenario_of[n], in_process, args.requests, results[n])

        for n in names:
            if targets[n].binary is not None:
                results[n].size_x86_64 = targets[n].binary.stat().st_size

        # Throughput.
        rps = []
        for name, cls in ((READ_ROUTE, GetUser), (WRITE_ROUTE, ScenePersonalisation)):
            if name not in targets:
                continue
            for c in args.concurrency:
                log(f"throughput: {name} at concurrency {c} ({args.rps_seconds} s)")
                rps.append(throughput(procs, targets[name], driver, cls, c, args.rps_seconds))
    finally:
        procs.stop_all()
        driver.close()

    # arm64 sizes last: the build would disturb the measurements.
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    sup.stop(services.dynamodb)
    sup.stop(services.moto)
    if not args.no_arm64 and zig_available(penv):
        # By binary: a token request's measurement runs its function's own binary.
        binaries_measured = sorted({targets[n].binary.name for n in names if targets[n].binary is not None})
        sizes = arm64_sizes(sup, penv, binaries_measured)
        for n in names:
            binary = targets[n].binary
            if binary is not None and binary.name in sizes:
                results[n].size_arm64 = sizes[binary.name]
    elif not args.no_arm64:
        log("zig is not available: no arm64 sizes")

    doc = summarize(results, rps, info, args)
    if net_results:
        doc["network"] = summarize_network(net_results, args.network, key_functions)
        doc["budgets"] += doc["network"]["budgets"]
    out_json = Path(args.out_json)
    out_md = Path(args.out_md)
    out_json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    out_md.write_text(render(doc), encoding="utf-8")
    print(render(doc))
    log(f"wrote {out_md} and {out_json}")
    failed = [b["budget"] for b in doc["budgets"] if not b["pass"]]
    print(f"summary: {len(doc['budgets']) - len(failed)} passed, {len(failed)} failed", flush=True)
    return 0


def rtt_list(text: str) -> list[float]:
    """--network: round-trip times in ms, ascending, each 0 to 500 (the proxy's bound)."""
    if text == "none":
        return []
    rtts = sorted({float(x) for x in text.split(",") if x.strip()})
    if not rtts or any(not 0 <= x <= 500 for x in rtts):
        raise argparse.ArgumentTypeError("round-trip times are 0 to 500 ms, comma-separated")
    return rtts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-runs", type=int, default=20, help="cold starts per function (default 20)")
    parser.add_argument("--warm-per-cold", type=int, default=5,
                        help="warm requests after each cold start, for the penalty (default 5)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="warm requests per function for p50/p99, and direct repetitions (default 1000)")
    parser.add_argument("--rps-seconds", type=float, default=10, help="seconds per throughput point (default 10)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                        help="throughput concurrencies (default 1,8,32)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help="only these functions (comma-separated; the baselines always run)")
    parser.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    parser.add_argument("--binaries", default=None,
                        help="folder of the binaries to measure (default target/release; for trying the harness)")
    parser.add_argument("--no-arm64", action="store_true", help="skip the arm64 build and its sizes")
    parser.add_argument("--compare", default=None, metavar="DIR",
                        help="A/B: cold starts only, each function (and the empty one) interleaved with its "
                             "binary from DIR (another build); prints both and writes nothing")
    parser.add_argument("--secrets-from-memory", action="store_true",
                        help="the functions and their peers read Secrets Manager through an in-memory cache in "
                             "front of moto (scripts/bench/secrets-cache.py): what is left of the key functions' "
                             "cold start once moto's CPU time is out of it; not the standard run")
    parser.add_argument("--network", type=rtt_list, default=[0.0, 2.0, 10.0], metavar="RTT_MS[,RTT_MS...]",
                        help="round-trip times (ms) of the latency model, every AWS endpoint behind TLS and a delay "
                             "(scripts/latency-proxy.py); the first is the baseline of the round-trip counts "
                             "(default 0,2,10; none: skip)")
    parser.add_argument("--network-runs", type=int, default=5,
                        help="cold starts per function at each round-trip time (default 5)")
    parser.add_argument("--no-connect-during-init", action="store_true",
                        help="the functions run with CONNECT_DURING_INIT=false (no DynamoDB connection or issuer "
                             "keys fetched at start-up): to measure what connecting during init saves")
    parser.add_argument("--network-only", action="store_true",
                        help="only the measurements under the latency model; prints them and writes nothing")
    parser.add_argument("--out-md", default=str(OUT_MD))
    parser.add_argument("--out-json", default=str(OUT_JSON))
    args = parser.parse_args(argv)

    return supervised("bench", lambda sup: bench(args, sup))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
