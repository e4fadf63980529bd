"""Policy width: the template's grants against what the functions did in the tests (too
narrow: it would fail in AWS; too wide: a grant never used)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import StackError
from .observed import Call, read_observed
from .template import Resolver, fallback_function, functions, load_template, routes

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
# Beside DynamoDB, the one action a function may be granted of each of these services (by its
# name in the messages), and only when the tests saw it make that call.
ONE_ACTION_SERVICES = {"secretsmanager": ("Secrets Manager", "GetSecretValue"), "ses": ("SES", "SendEmail")}
# Calls that no IAM policy governs, so that no grant is needed (and none may be given: a grant
# of their service is "a grant no function needs" below). Exactly these; any other call
# without its grant still fails. Cognito's GetUser is made with the signed-in user's own
# access token (for the email a Cognito access token does not carry): Cognito authorizes it
# by that token and, as for all its token-authorized operations, does not evaluate IAM
# policies for it (no IAM permission can grant or deny it).
TOKEN_AUTHORIZED_CALLS = {Call("cognito-idp", "GetUser", "*")}


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
    resource: str    # a table name for DynamoDB, else the resource's local value (its JSON if it has none)
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


def _resource_text(resolver: Resolver, resource: Any) -> str:
    """An IAM resource other than a table as its local value (a secret's `!Ref` is its name,
    as the ENCRYPTION_SECRET_ID the function is given locally), or its JSON when it has none."""
    try:
        value = resolver.resolve(resource)
    except StackError:
        value = None
    return value if isinstance(value, str) else json.dumps(resource, sort_keys=True)


def _with_parameters(value: Any, params: dict[str, Any]) -> Any:
    """A SAM policy template's definition with its parameters (`Ref: Name`) given their values."""
    if isinstance(value, list):
        return [_with_parameters(v, params) for v in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in params:
            return params[value["Ref"]]
        return {k: _with_parameters(v, params) for k, v in value.items()}
    return value


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
                            grants.append(Grant("inline", service, name, _resource_text(resolver, resource),
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
                    resources = _with_parameters(st["Resource"], params)
                    for resource in resources if isinstance(resources, list) else [resources]:
                        grants.append(Grant(name, service, act, _resource_text(resolver, resource)))
    return grants


def _allows(grant: Grant, call: Call) -> bool:
    """Whether the grant allows the observed call: its action, on the same table or secret (by
    its local name) or on "*". An SES call names no identity: a grant of its action allows it
    (the identity ARN and the ses:FromAddress condition are for AWS to check)."""
    if (grant.service, grant.action) != (call.service, call.action):
        return False
    return call.service == "ses" or grant.resource in (call.resource, "*")


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


def policy_problems(template: dict[str, Any], observed: dict[str, set[Call]]) -> list[str]:
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
        calls = observed.get(binary, set())
        if binary == fallback:
            if grants:
                problems.append(f"{lid}: the fallback needs no AWS access but is granted {sorted({g.source for g in grants})}")
            if calls:
                problems.append(f"{lid}: the fallback needs no AWS access but called {sorted(str(c) for c in calls)}")
            continue
        # (a) Too narrow: every observed call (on a table, a secret, SES) must be granted, but
        # for the token-authorized ones, which no grant governs.
        for call in sorted(calls):
            if call not in TOKEN_AUTHORIZED_CALLS and not any(_allows(g, call) for g in grants):
                problems.append(f"{lid}: used {call}, which its policies do not grant (it would fail in AWS)")
        used = {(c.action, c.resource) for c in calls if c.service == "dynamodb"}
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
        other = {g.service for g in grants} - {"dynamodb", *ONE_ACTION_SERVICES}
        if other:
            problems.append(f"{lid}: grants for {sorted(other)}, which no function needs")
        # (e) Secrets Manager and SES: only the one action, and only where the tests saw the
        # function make that call (a call without its grant is too narrow, in (a)).
        for service, (title, action) in ONE_ACTION_SERVICES.items():
            service_grants = [g for g in grants if g.service == service]
            actions = {g.action for g in service_grants}
            if actions and actions != {action}:
                problems.append(f"{lid}: {title} actions {sorted(actions)}; only {action} is needed")
            for g in service_grants:
                if g.action == action and not any(_allows(g, c) for c in calls):
                    problems.append(f"{lid}: {g.source} {Call(service, action, g.resource)} was never observed")
        # The secret's id reaches a function in ENCRYPTION_SECRET_ID: only where it reads it.
        reads_secret = any(c.service == "secretsmanager" and c.action == "GetSecretValue" for c in calls)
        if reads_secret and "ENCRYPTION_SECRET_ID" not in env:
            problems.append(f"{lid}: ENCRYPTION_SECRET_ID is missing (it called GetSecretValue)")
        if "ENCRYPTION_SECRET_ID" in env and not reads_secret:
            problems.append(f"{lid}: ENCRYPTION_SECRET_ID is set, but it never called GetSecretValue")
    return problems


def check_policies(directory: Path) -> list[str]:
    if not directory.is_dir():
        return [f"{directory} does not exist: run the tests first (scripts/dev test writes it)"]
    return policy_problems(load_template(), read_observed(directory))
