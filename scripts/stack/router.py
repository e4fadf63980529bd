"""The cargo lambda watch router, made from template.yaml's routes (which the tests check
against the route table) each time the local API starts: `.local/cargo-lambda.toml`, which
cargo lambda watch reads as its global configuration (`--global`). Nothing in the repository
holds a copy that could drift; `scripts/dev gen-router` writes the file for a hand-run
`cargo lambda watch --global .local/cargo-lambda.toml`."""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from .common import LOCAL_DIR, StackError
from .template import fallback_function, load_template, routes

ROUTER_FILE = LOCAL_DIR / "cargo-lambda.toml"
ROUTER_HEADER = "[watch.router]"
ROUTER_COMMENT = (
    "# Local routes for `cargo lambda watch`, written from template.yaml by scripts/stack each\n"
    "# time the local API starts (do not edit). A known path answers every method: the ones the\n"
    "# template does not route go to the fallback function (405).\n"
)
# Methods a known path must answer locally: cargo lambda watch does not fall through to the
# catch-all when a path matches but its method is not mapped.
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

RouterSpec = dict[str, Any]  # path -> function (every method) or {method: function}


def expected_router(template: dict[str, Any]) -> RouterSpec:
    all_routes = routes(template)
    fallback = fallback_function(all_routes)
    router: RouterSpec = {"/": fallback, "/{*path}": fallback}
    by_path: dict[str, dict[str, str]] = {}
    for r in all_routes:
        if r.path == "$default":
            continue
        if r.method == "ANY":
            raise StackError(f"{r.path}: ANY routes other than $default are not supported locally")
        methods = by_path.setdefault(r.path, {})
        if methods.get(r.method, r.function) != r.function:
            raise StackError(f"{r.method} {r.path} is routed to two functions")
        methods[r.method] = r.function
    for path, methods in by_path.items():
        for m in ALL_METHODS:
            methods.setdefault(m, fallback)
        router[path] = methods
    return router


def _route_sort_key(item: tuple[str, Any]) -> tuple[int, str]:
    path = item[0]
    return (0 if path in ("/", "/{*path}") else 1, path)


def render_router(router: RouterSpec) -> str:
    lines = [ROUTER_COMMENT + ROUTER_HEADER]
    for path, target in sorted(router.items(), key=_route_sort_key):
        key = json.dumps(path)
        if isinstance(target, str):
            lines.append(f"{key} = {json.dumps(target)}")
            continue
        lines.append(f"{key} = [")
        ordered = sorted(target.items(), key=lambda kv: ALL_METHODS.index(kv[0]) if kv[0] in ALL_METHODS else 99)
        for method, function in ordered:
            lines.append(f"    {{ method = {json.dumps(method)}, function = {json.dumps(function)} }},")
        lines.append("]")
    return "\n".join(lines) + "\n"


def write_router(template: dict[str, Any], path: Path = ROUTER_FILE) -> Path:
    """Writes the router for `cargo lambda watch --global`, whole or not at all (a run and a
    check may write it at the same time); returns the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as f:
        f.write(render_router(expected_router(template)))
    os.replace(f.name, path)
    return path


def check_router() -> list[str]:
    """Where the router as written would route otherwise than template.yaml's table: what
    can go wrong once the table is right (template.yaml against the route table is the
    tests' check) is its rendering for cargo lambda watch. Written to a file of its own."""
    template = load_template()
    expected = expected_router(template)
    with tempfile.TemporaryDirectory() as scratch:
        with open(write_router(template, Path(scratch) / ROUTER_FILE.name), "rb") as f:
            node: Any = tomllib.load(f).get("watch", {}).get("router", {})
    actual: RouterSpec = {
        p: t if isinstance(t, str) else {str(e["method"]): str(e["function"]) for e in t} for p, t in node.items()
    }
    return [f"{p}: template says {expected.get(p)}, the router file says {actual.get(p)}"
            for p in sorted(set(expected) | set(actual)) if expected.get(p) != actual.get(p)]
