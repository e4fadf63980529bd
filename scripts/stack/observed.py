"""The tests' record of what each function did: one directory per `scripts/dev test` run, made
fresh for it, and read back for the policy check."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import LOCAL_DIR, StackError
from .supervisor import proc_stat

# Where the in-process tests of a `scripts/dev test` run record each function's AWS calls
# (DynamoDB, Secrets Manager, SES, Cognito):
# `.local/observed/<pid of the run>/<pid of the test>.jsonl`, one line a call:
#   {"function": "<binary>", "service": "dynamodb", "action": "GetItem", "resource": "<table name>"}
#   {"function": "<binary>", "service": "secretsmanager", "action": "GetSecretValue",
#    "resource": "<the secret id the function was given: its ENCRYPTION_SECRET_ID>"}
#   {"function": "<binary>", "service": "ses", "action": "SendEmail", "resource": "*"}
#   {"function": "<binary>", "service": "cognito-idp", "action": "GetUser", "resource": "*"}
#    (with the user's access token, which authorizes it: no IAM grant, see policies.py)
# A line of the older record, {"function": ..., "action": ..., "table": ...}, is a DynamoDB call.
OBSERVED_DIR = LOCAL_DIR / "observed"


@dataclass(frozen=True, order=True)
class Call:
    """One AWS call a function made in the tests."""
    service: str   # "dynamodb", "secretsmanager", "ses", "cognito-idp"
    action: str    # without the service prefix: "GetItem", "GetSecretValue", "SendEmail"
    resource: str  # a table name, the secret id the function was given, or "*" (SES, Cognito)

    def __str__(self) -> str:
        return f"{self.service}:{self.action}" + ("" if self.resource == "*" else f" on {self.resource}")


def fresh_observed_dir() -> Path:
    """An empty directory for this test run's record of each function's AWS calls
    (`.local/observed/<pid>`; those of finished runs are removed, running ones kept)."""
    OBSERVED_DIR.mkdir(parents=True, exist_ok=True)
    for old in OBSERVED_DIR.iterdir():
        if old.is_dir() and old.name.isdigit() and proc_stat(int(old.name)) is None:
            shutil.rmtree(old, ignore_errors=True)
    run = OBSERVED_DIR / str(os.getpid())
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    return run


def latest_observed_dir() -> Path:
    runs = [d for d in OBSERVED_DIR.glob("*") if d.is_dir()] if OBSERVED_DIR.is_dir() else []
    return max(runs, key=lambda d: d.stat().st_mtime) if runs else OBSERVED_DIR


def _call(rec: dict[str, Any]) -> Call:
    if "service" in rec:
        return Call(str(rec["service"]), str(rec["action"]), str(rec["resource"]))
    return Call("dynamodb", str(rec["action"]), str(rec["table"]))  # the older, DynamoDB-only line


def read_observed(directory: Path) -> dict[str, set[Call]]:
    """function -> its calls, from the `<pid>.jsonl` files the in-process tests wrote."""
    observed: dict[str, set[Call]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                observed.setdefault(str(rec["function"]), set()).add(_call(rec))
            except (ValueError, KeyError, TypeError) as e:
                raise StackError(f"{path.name}:{n}: not an observation ({e}): {line[:200]}") from e
    return observed
