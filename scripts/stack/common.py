"""What every part of the local stack shares: the repository's paths, the local region and
account, the error with a message for the user, the tools and environment of the processes it
starts, and an AWS SDK client for a local emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent  # scripts/stack/common.py
TEMPLATE = ROOT / "template.yaml"
OPENAPI = ROOT / "openapi.yaml"
VENV_BIN = ROOT / ".venv" / "bin"
LOCAL_DIR = ROOT / ".local"
LOG_DIR = LOCAL_DIR / "logs"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's account


class StackError(Exception):
    """A failure with a message for the user (no traceback)."""


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise StackError(f"{name} not found on PATH: {hint}")
    return path


def process_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        env.pop(name, None)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["SAM_CLI_TELEMETRY"] = "0"
    env.update(extra)
    return env


def aws_client(service: str, url: str, attempts: int = 3) -> Any:
    """A boto3 client of `service` at a local emulator (`url`), with local credentials."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def cargo_target_dir() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])
