"""openapi.yaml: the operations it documents (`scripts/dev openapi-routes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .common import OPENAPI

OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def openapi_routes(path: Path = OPENAPI) -> list[dict[str, Any]]:
    """Every operation of openapi.yaml: method, path, the function it names, its documented
    statuses and whether it takes a body."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    out = []
    for route, item in (doc.get("paths") or {}).items():
        for method, op in item.items():
            if method in OPENAPI_METHODS:
                out.append({"method": method.upper(), "path": route,
                            "function": str(op.get("x-lambda-function", "")),
                            "statuses": sorted(str(code) for code in (op.get("responses") or {})),
                            "body": "requestBody" in op})
    return out
