"""The cargo lambda watch router: Cargo.toml's [workspace.metadata.lambda.watch.router],
written from template.yaml's routes (`scripts/dev gen-router`) and checked against them
(`scripts/dev check-router`)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from .common import ROOT, StackError
from .template import fallback_function, load_template, routes

CARGO_TOML = ROOT / "Cargo.toml"
ROUTER_SECTION = "workspace.metadata.lambda.watch.router"
ROUTER_HEADER = f"[{ROUTER_SECTION}]"
ROUTER_COMMENT = (
    "# Local routes for `cargo lambda watch`, generated from template.yaml by\n"
    "# `scripts/dev gen-router` (`scripts/dev check-router` checks them). A known path answers\n"
    "# every method: the ones the template does not route go to the fallback function (405).\n"
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


def current_router(cargo_toml: Path = CARGO_TOML) -> RouterSpec | None:
    with open(cargo_toml, "rb") as f:
        data = tomllib.load(f)
    node: Any = data
    for part in ROUTER_SECTION.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    out: RouterSpec = {}
    for path, target in node.items():
        if isinstance(target, str):
            out[path] = target
        else:
            out[path] = {str(entry["method"]): str(entry["function"]) for entry in target}
    return out


def router_diff(expected: RouterSpec, actual: RouterSpec | None) -> list[str]:
    if actual is None:
        return [f"Cargo.toml has no {ROUTER_HEADER}"]
    problems = []
    for path in sorted(set(expected) | set(actual)):
        e, a = expected.get(path), actual.get(path)
        if e == a:
            continue
        if a is None:
            problems.append(f"missing {path} -> {e}")
        elif e is None:
            problems.append(f"unexpected {path} -> {a}")
        elif isinstance(e, dict) and isinstance(a, dict):
            for m in sorted(set(e) | set(a)):
                if e.get(m) != a.get(m):
                    problems.append(f"{m} {path}: template says {e.get(m)}, Cargo.toml says {a.get(m)}")
        else:
            problems.append(f"{path}: template says {e}, Cargo.toml says {a}")
    return problems


_TABLE_HEADER = re.compile(r"^\s*\[\[?\s*[A-Za-z0-9_.\"'\- ]+\]\]?\s*(#.*)?$")


def write_router(template: dict[str, Any], cargo_toml: Path = CARGO_TOML) -> bool:
    """Writes (or replaces) the router section; returns whether the file changed."""
    block = render_router(expected_router(template))
    text = cargo_toml.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.strip() == ROUTER_HEADER), None)
    if start is None:
        new_text = text.rstrip("\n") + "\n\n" + block
    else:
        # Take the generated comment above the header with it.
        comment_lines = ROUTER_COMMENT.count("\n")
        if "".join(lines[max(0, start - comment_lines):start]) == ROUTER_COMMENT:
            start -= comment_lines
        end = start + 1
        while end < len(lines) and not (_TABLE_HEADER.match(lines[end]) and lines[end].strip() != ROUTER_HEADER):
            end += 1
        rest = "".join(lines[end:])
        new_text = "".join(lines[:start]) + block + ("\n" + rest if rest else "")
    if new_text == text:
        return False
    cargo_toml.write_text(new_text, encoding="utf-8")
    return True


def check_router() -> list[str]:
    return router_diff(expected_router(load_template()), current_router())
