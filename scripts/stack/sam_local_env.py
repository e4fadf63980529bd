"""scripts/sam-local-env.json: `sam local start-api --env-vars` (for those with Docker),
written from template.yaml (`scripts/dev gen-sam-local-env`) and checked against it."""

from __future__ import annotations

import json
from typing import Any

from .common import ROOT
from .template import load_template, local_function_env

SAM_LOCAL_ENV = ROOT / "scripts" / "sam-local-env.json"
# From a container, the emulators that `scripts/dev run` starts on the host.
SAM_LOCAL_ENDPOINTS = {
    "AWS_ENDPOINT_URL_DYNAMODB": "http://host.docker.internal:8000",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://host.docker.internal:5000",
    "AWS_ENDPOINT_URL_SESV2": "http://host.docker.internal:5000",
    "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": "http://host.docker.internal:5000",
}


def sam_local_env(template: dict[str, Any]) -> str:
    """The env-vars file: every function variable of the template with its local value (sam
    local resolves `!Ref` of a table to its logical id, so the names must be given), under
    "Parameters", which applies to every function that declares the variable. Sign-in tokens
    keep the template's values (TOKEN_ISSUER empty: API keys only): the local user pool and its
    ids exist only while `scripts/dev run` runs (`scripts/dev env` prints them then)."""
    env = local_function_env(template)
    env.update(SAM_LOCAL_ENDPOINTS)
    return json.dumps({"Parameters": dict(sorted(env.items()))}, indent=2) + "\n"


def check_sam_local_env() -> list[str]:
    expected = sam_local_env(load_template())
    actual = SAM_LOCAL_ENV.read_text() if SAM_LOCAL_ENV.exists() else ""
    if actual != expected:
        return [f"{SAM_LOCAL_ENV.relative_to(ROOT)} differs from template.yaml's variables "
                f"(fix: scripts/dev gen-sam-local-env)"]
    return []
