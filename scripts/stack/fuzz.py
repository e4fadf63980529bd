"""schemathesis against the local API: openapi.yaml's operations fuzzed as a fresh staff user
with a `*` key and 2FA on."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import urllib.error
import urllib.request
from typing import Any

from .common import LOCAL_DIR, OPENAPI, ROOT, VENV_BIN, StackError, cargo_target_dir, process_env
from .services import users_admin
from .supervisor import Supervisor

SCHEMATHESIS_CONFIG = ROOT / "scripts" / "schemathesis.toml"


def call_api(url: str, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    return status, json.loads(raw) if raw else None


def enable_two_factor(url: str, key: str) -> None:
    """Turns 2FA on for the key's user, with backup codes, through the API (so the fuzzer also
    reaches the 2FA routes' paths past "2FA must be enabled first")."""
    import pyotp

    status, setup = call_api(url, "GET", "/api/users/@me/two_factor_start_setup/", key)
    if status != 200:
        raise StackError(f"two_factor_start_setup: HTTP {status} {setup}")
    code = pyotp.TOTP(setup["secret"]).now()
    status, body = call_api(url, "POST", "/api/users/@me/two_factor_validate/", key, {"token": code})
    if status != 200:
        raise StackError(f"two_factor_validate: HTTP {status} {body}")
    status, body = call_api(url, "POST", "/api/users/@me/two_factor_backup_codes/", key)
    if status != 200:
        raise StackError(f"two_factor_backup_codes: HTTP {status} {body}")


def run_schemathesis(sup: Supervisor, env: dict[str, str], url: str, *, seed: int, examples: int,
                     timeout: float) -> bool:
    """Fuzzes the local API against openapi.yaml with every schemathesis check, as a fresh staff
    user with a `*` key and 2FA on (so the other tests' users are untouched)."""
    target = cargo_target_dir()
    email = f"fuzz-{secrets.token_hex(6)}@example.com"
    try:
        user = users_admin(target, env, "create-user", "--email", email, "--first-name", "Fuzz", "--staff")
        key = users_admin(target, env, "create-key", "--user", user["uuid"], "--scopes", "*",
                          "--label", "schemathesis")["api_key"]
    except StackError as e:
        print(f"  {e}", file=sys.stderr)
        return False
    try:
        enable_two_factor(url, key)
    except (StackError, OSError, ValueError, KeyError) as e:
        print(f"  could not enable 2FA for the schemathesis user: {e}", file=sys.stderr)
        return False
    report = LOCAL_DIR / "schemathesis"
    shutil.rmtree(report, ignore_errors=True)
    argv = [
        str(VENV_BIN / "st"), "--config-file", str(SCHEMATHESIS_CONFIG), "run", str(OPENAPI),
        "--url", url,
        "--header", f"Authorization: Bearer {key}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(examples),
        "--seed", str(seed),
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "30",
        "--report", "junit,ndjson", "--report-dir", str(report),
    ]
    if not sys.stdout.isatty():
        argv.append("--no-color")
    print(f"stack: schemathesis against {url} as {email} (staff, scope *, 2FA on): seed {seed}, "
          f"at most {examples} examples per operation and phase", flush=True)
    child = sup.start("schemathesis", argv, env=process_env({**env, "SCHEMATHESIS_TELEMETRY": "false"}))
    code = sup.finish(child, timeout)
    if code != 0:
        print(f"stack: schemathesis reports: {report.relative_to(ROOT)}", file=sys.stderr)
    return code == 0
