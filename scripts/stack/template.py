"""template.yaml, the one description of the deployed stack: loaded with its CloudFormation
tags, its functions and their HttpApi routes, and the local values of its intrinsic
functions (Resolver) and of the functions' environment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .common import ACCOUNT_ID, REGION, TEMPLATE, StackError

# The account-security page's port under `scripts/dev run` (its --page-port default), and so
# the port of the passkey origin in scripts/sam-local-env.json and for every caller that names
# no other (`scripts/dev test` serves the page on a free port and passes it).
LOCAL_PAGE_PORT = 3001
# The Android app origin the functions accept locally beside the page's, for the tests' passkey
# ceremonies from a mobile app: `android:apk-key-hash:` and the unpadded base64url SHA-256 of
# the app's signing certificate. No certificate has this one: it is the SHA-256 of the text
# "posthog-users local test app signing certificate".
LOCAL_ANDROID_ORIGIN = "android:apk-key-hash:E8wzTa8DgqiU17BM25AH_WJwnhVKVgdDahU0kwMJZdg"
# A web app's origin the local API's CORS allows beside the account page's (CorsAllowOrigins).
# No app is served there (`.test` is reserved, RFC 6761): the tests send preflights from it.
LOCAL_WEB_APP_ORIGIN = "https://app.example.test"


def local_parameters(page_port: int = LOCAL_PAGE_PORT) -> dict[str, str]:
    """Local values of the template's parameters (everything else takes its default). Passkeys
    are bound to RP id `localhost` and accepted from the account page,
    http://localhost:<page_port> (first: the tests' software authenticator takes the first
    origin as its own), and from the local Android app origin. The HTTP API's CORS allows the
    account page's origin and LOCAL_WEB_APP_ORIGIN (not the default "*": locally, too, an
    origin that is not listed is refused)."""
    return {
        "NamePrefix": "local",
        "EmailSender": "no-reply@example.com",
        "PasskeyRpId": "localhost",
        "PasskeyRpName": "PostHog (local)",
        "PasskeyOrigins": f"http://localhost:{page_port},{LOCAL_ANDROID_ORIGIN}",
        "CorsAllowOrigins": f"http://localhost:{page_port},{LOCAL_WEB_APP_ORIGIN}",
    }


LOCAL_PARAMETERS = local_parameters()


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

    def truth(self, expr: Any) -> bool:
        """The value of a condition expression (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition),
        as in Conditions and the Rules' assertions."""
        return self._truth(expr)

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


def local_function_env(template: dict[str, Any], page_port: int = LOCAL_PAGE_PORT) -> dict[str, str]:
    """The environment every function gets locally: the template's Globals and every
    function's own variables, resolved with the local parameters (the passkey origins with the
    account page on `page_port`)."""
    resolver = Resolver(template, local_parameters(page_port))
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



def local_cors_configuration(template: dict[str, Any], page_port: int = LOCAL_PAGE_PORT) -> dict[str, Any] | None:
    """The HTTP API's CorsConfiguration (AWS::Serverless::HttpApi, the property names of
    AWS::ApiGatewayV2::Api's Cors) resolved with the local parameters, for the local API's
    front (scripts/local_api.py): None when the API has none. A CommaDelimitedList parameter
    becomes its list, each member space-trimmed, as CloudFormation does."""
    apis = [res for res in template["Resources"].values() if res.get("Type") == "AWS::Serverless::HttpApi"]
    if len(apis) != 1:
        raise StackError(f"template.yaml must declare exactly one AWS::Serverless::HttpApi, found {len(apis)}")
    cors = apis[0].get("Properties", {}).get("CorsConfiguration")
    if cors is None or cors is False:
        return None
    if isinstance(cors, str):
        cors = {"AllowOrigins": [cors]}  # SAM: a string is the one allowed origin
    if not isinstance(cors, dict):
        raise StackError(f"HttpApi CorsConfiguration: {cors!r} has no local value")
    resolver = Resolver(template, local_parameters(page_port))
    declared = template.get("Parameters") or {}
    out: dict[str, Any] = {}
    for name, value in cors.items():
        if isinstance(value, dict) and set(value) == {"Ref"} and \
                declared.get(value["Ref"], {}).get("Type") == "CommaDelimitedList":
            value = [v.strip() for v in str(resolver.ref(value["Ref"])).split(",")]
        else:
            value = resolver.resolve(value)
        if value is not NO_VALUE:
            out[name] = value
    return out
