"""A deploy rehearsal without AWS: template.yaml translated to plain CloudFormation by the SAM
translator (aws-sam-translator, as `sam deploy` has CloudFormation do it), then created as a
stack in moto's CloudFormation, in this process (moto's `mock_aws`: no server, no Docker, no
AWS account), once per parameter set. Then it checks what the stack made against what the code
relies on: the tables' keys, indexes and TTL attributes against the store's requests
(shared/src/store), the functions' environment against the variables the code reads
(shared/src) resolved to the names of the resources made, each role's policies resolved to
the tables' ARNs, the encryption-key secret against what shared/src/crypto.rs accepts, the
HTTP API's routes and permissions, the functions' aliases, the dashboard, and every output.

moto's CloudFormation does not create everything. Each gap is named in the report, with why:
- a resource type moto has no CloudFormation model for is not created; references to it are
  replaced by a marker (MOTO-GAP(...)) so that the rest still deploys, and a value that holds
  the marker is reported as depending on that gap instead of being checked;
- for the types the code relies on whose moto service exists (Secrets Manager secrets, the
  Cognito user pool, its client and resource server, the HTTP API, the functions' versions and
  aliases), the rehearsal stands in with a small CloudFormation model of its own that makes the
  resource through moto's API from the template's properties (as CloudFormation would); the
  report says which were made so;
- properties a moto model drops (a table's TTL and point-in-time recovery, a role's managed
  policies, a function's architecture, tracing and log group) are checked in the translated
  template instead, and named;
- moto keeps an AWS::NoValue inside a list (a policy left out by a condition becomes a None
  its IAM role model cannot read), so conditions are resolved before the stack is made: the
  resources and outputs a false condition leaves out are removed, Fn::If is replaced by its
  chosen branch and AWS::NoValue by nothing. A reference to a resource a condition left out is
  reported (CloudFormation refuses such a template).
A resource of a type moto supports that moto fails to make is a problem (named, with moto's
message); the stack is made again without it so that the other checks still run.

The rehearsal's account is not 123456789012 (moto's usual one, which IsLocalAccount takes for
the local emulators): the stack is made as in a real account.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import logging
import os
import re
import time
import urllib.parse
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .common import REGION, ROOT, TEMPLATE, StackError
from .template import (
    LOCAL_ANDROID_ORIGIN, NO_VALUE, Resolver, functions as template_functions, routes as template_routes,
)

ACCOUNT = "210987654321"  # any real-looking account but 123456789012 (see IsLocalAccount)
STACK_NAME = "posthog-users-rehearsal"
CODE_BUCKET = "posthog-users-rehearsal-artifacts"
CODE_KEY = "function.zip"
GAP = "MOTO-GAP"
SHARED_SRC = ROOT / "shared" / "src"
STORE_SRC = SHARED_SRC / "store"
CONFIG_RS = SHARED_SRC / "config.rs"
CRYPTO_RS = SHARED_SRC / "crypto.rs"
# Where the code that runs in the functions reads its variables (users-admin is an operator's
# tool, not deployed).
CODE_DIRS = (SHARED_SRC, ROOT / "functions")


# ---------------------------------------------------------------------------------------------
# Parameter sets
# ---------------------------------------------------------------------------------------------


def parameter_sets(sam: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The parameter sets rehearsed: the defaults, and one with everything optional on that moto
    can make (the stack's user pool taking tokens that create users, email, passkeys, reserved
    concurrency, CORS origins, deploys all at once with a release id). Edge protection is not
    rehearsed: moto makes none of WAF, CloudFront, and `{{resolve:...}}` references. An empty
    address parameter (a name ending in Email or Sender, e.g. EmailSender or AlarmEmail) gets
    an example value in the second set; a parameter with no default gets one in both
    (CloudFormation would refuse the stack without it)."""
    declared = sam.get("Parameters") or {}
    full: dict[str, str] = {
        "NamePrefix": "rehearsal",
        "FunctionMemorySize": "256",
        "ReservedConcurrency": "5",
        "CreateUserPool": "true",
        "TokenNewIdentity": "create-user",
        "PasskeyRpId": "example.com",
        "PasskeyOrigins": f"https://app.example.com,{LOCAL_ANDROID_ORIGIN}",
        "CorsAllowOrigins": "https://app.example.com,https://admin.example.com",
        # The other way to deploy than the default, and CI's release id (a commit SHA).
        "DeploymentStrategy": "AllAtOnce",
        "ReleaseId": "4f2a9c0d1e7b",
    }
    full = {k: v for k, v in full.items() if k in declared}
    required: dict[str, str] = {}
    for name, spec in declared.items():
        if name in full:
            continue
        example = _example_value(name, spec)
        if "Default" not in spec:
            if example is None:
                raise StackError(f"parameter {name} has no default: give it a value in scripts/stack/rehearse.py")
            required[name] = example
        elif str(spec.get("Default")) == "" and example is not None:
            full[name] = example
    return [("defaults", dict(required)), ("user pool, email, passkeys", {**required, **full})]


def _example_value(name: str, spec: dict[str, Any]) -> str | None:
    if re.search(r"(Email|Sender|Address)s?$", name):
        return "ops@example.com" if "Sender" not in name else "no-reply@example.com"
    if spec.get("AllowedValues"):
        return str(spec["AllowedValues"][0])
    if spec.get("Type") == "Number":
        return str(spec.get("MinValue", 1))
    return None


def all_parameters(sam: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    out = {n: str(s["Default"]) for n, s in (sam.get("Parameters") or {}).items() if "Default" in s}
    out.update(overrides)
    return out


def parameter_problems(sam: dict[str, Any], params: dict[str, str], resolver: Resolver) -> list[str]:
    """What CloudFormation itself would refuse in the parameter values: AllowedValues,
    AllowedPattern, MinLength/MaxLength, MinValue/MaxValue, and the Rules' assertions."""
    problems = []
    for name, spec in (sam.get("Parameters") or {}).items():
        if name not in params:
            problems.append(f"parameter {name}: no value")
            continue
        value = params[name]
        values = [v.strip() for v in value.split(",")] if spec.get("Type") == "CommaDelimitedList" else [value]
        for v in values:
            if "AllowedValues" in spec and v not in [str(a) for a in spec["AllowedValues"]]:
                problems.append(f"parameter {name}={v!r}: not one of {spec['AllowedValues']}")
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], v):
                problems.append(f"parameter {name}={v!r}: does not match {spec['AllowedPattern']}")
        if "MinLength" in spec and len(value) < int(spec["MinLength"]):
            problems.append(f"parameter {name}={value!r}: shorter than {spec['MinLength']}")
        if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
            problems.append(f"parameter {name}={value!r}: longer than {spec['MaxLength']}")
        if spec.get("Type") == "Number":
            try:
                number = float(value)
            except ValueError:
                problems.append(f"parameter {name}={value!r}: not a number")
                continue
            if "MinValue" in spec and number < float(spec["MinValue"]):
                problems.append(f"parameter {name}={value}: under {spec['MinValue']}")
            if "MaxValue" in spec and number > float(spec["MaxValue"]):
                problems.append(f"parameter {name}={value}: over {spec['MaxValue']}")
    for name, rule in (sam.get("Rules") or {}).items():
        if "RuleCondition" in rule and not resolver.truth(rule["RuleCondition"]):
            continue
        for assertion in rule.get("Assertions") or []:
            if not resolver.truth(assertion["Assert"]):
                problems.append(f"rule {name}: {assertion.get('AssertDescription', 'assertion fails')}")
    return problems


# ---------------------------------------------------------------------------------------------
# Translation and the pre-pass moto needs
# ---------------------------------------------------------------------------------------------


def load_sam(path: Path = TEMPLATE) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(path.read_text(encoding="utf-8"))


def translate(sam: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """template.yaml as plain CloudFormation, as `sam validate` translates it: the local CodeUri
    (./, which `sam build` replaces) pointed at the rehearsal's artifact in S3, and the AWS
    managed policies' ARNs from the translator's own bundled list (no IAM call)."""
    import boto3
    from samtranslator.internal.managed_policies import get_bundled_managed_policy_map
    from samtranslator.parser import parser
    from samtranslator.public.exceptions import InvalidDocumentException
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(sam)
    code_uri = f"s3://{CODE_BUCKET}/{CODE_KEY}"
    function_globals = (sam.get("Globals") or {}).get("Function") or {}
    if isinstance(function_globals.get("CodeUri"), str) and not function_globals["CodeUri"].startswith("s3://"):
        function_globals["CodeUri"] = code_uri
    for res in (sam.get("Resources") or {}).values():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str) \
                and not props["CodeUri"].startswith("s3://"):
            props["CodeUri"] = code_uri
    session = boto3.Session(region_name=REGION, aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal")
    translator = Translator(managed_policy_map=None, sam_parser=parser.Parser(), plugins=[], boto_session=session)
    try:
        return translator.translate(sam, parameter_values=dict(params),
                                    get_managed_policy_map=lambda: get_bundled_managed_policy_map("aws") or {})
    except InvalidDocumentException as e:
        raise StackError("the SAM translator refuses template.yaml: " + " ".join(str(c) for c in e.causes)) from e


def _references(value: Any) -> Iterator[str]:
    """The logical ids and parameters a value refers to (Ref, Fn::GetAtt, ${...} of Fn::Sub)."""
    if isinstance(value, list):
        for v in value:
            yield from _references(v)
    elif isinstance(value, dict):
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" and isinstance(arg, str):
                yield arg
                return
            if key == "Fn::GetAtt":
                yield (arg.split(".", 1) if isinstance(arg, str) else arg)[0]
                return
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                for name in re.findall(r"\$\{([^}!][^}]*)\}", text):
                    if name.split(".", 1)[0] not in variables:
                        yield name.split(".", 1)[0]
                yield from _references(variables)
                return
        for v in value.values():
            yield from _references(v)


def resolve_conditions(cfn: dict[str, Any], resolver: Resolver) -> tuple[dict[str, Any], list[str]]:
    """The template with its conditions applied (see the module's docstring for why moto needs
    it): resources and outputs under a false condition removed, Fn::If replaced by its branch,
    AWS::NoValue left out. Problems: what CloudFormation would refuse after that, a reference
    (or DependsOn) to a resource a condition left out."""

    def prune(value: Any) -> Any:
        if isinstance(value, list):
            return [p for p in (prune(v) for v in value) if p is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" and arg == "AWS::NoValue":
                return NO_VALUE
            if key == "Fn::If":
                name, yes, no = arg
                return prune(yes if resolver.condition(name) else no)
        return {k: p for k, p in ((k, prune(v)) for k, v in value.items()) if p is not NO_VALUE}

    out = {k: v for k, v in cfn.items() if k not in ("Conditions", "Rules")}
    kept: dict[str, Any] = {}
    left_out = set()
    for logical_id, res in (cfn.get("Resources") or {}).items():
        if "Condition" in res and not resolver.condition(res["Condition"]):
            left_out.add(logical_id)
            continue
        kept[logical_id] = prune({k: v for k, v in res.items() if k != "Condition"})
    out["Resources"] = kept
    outputs = {}
    for name, output in (cfn.get("Outputs") or {}).items():
        if "Condition" in output and not resolver.condition(output["Condition"]):
            continue
        outputs[name] = prune({k: v for k, v in output.items() if k != "Condition"})
    out["Outputs"] = outputs
    problems = []
    bodies = [*((f"resource {k}", v) for k, v in kept.items()), *((f"output {k}", v) for k, v in outputs.items())]
    for where, body in bodies:
        depends = body.get("DependsOn", []) if isinstance(body, dict) else []
        for name in sorted(set(_references(body)) | set([depends] if isinstance(depends, str) else depends)):
            if name in left_out:
                problems.append(f"{where} refers to {name}, which a false condition leaves out: CloudFormation "
                                f"refuses the template")
    # Such a reference is marked as one to a gap, for moto to make the rest.
    return (_without(out, {k: "" for k in left_out}) if problems else out), problems


def set_gaps_aside(cfn: dict[str, Any], supported: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The template without the resources whose type moto cannot make (logical id -> type),
    each reference to one replaced by a marker that the checks recognise (MOTO-GAP(...))."""
    gaps = {k: r["Type"] for k, r in cfn["Resources"].items() if r["Type"] not in supported}
    return _without(cfn, gaps), gaps


def _without(cfn: dict[str, Any], removed: dict[str, str]) -> dict[str, Any]:
    def mark(name: str) -> str:
        return f"{GAP}({name})"

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref" and arg in removed:
                return mark(arg)
            if key == "Fn::GetAtt":
                parts = arg.split(".", 1) if isinstance(arg, str) else arg
                if parts[0] in removed:
                    return mark(".".join(parts))
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], walk(arg[1]))
                text = re.sub(r"\$\{([^}!][^}]*)\}",
                              lambda m: mark(m.group(1)) if m.group(1).split(".", 1)[0] in removed else m.group(0),
                              text)
                return {"Fn::Sub": text if not variables else [text, variables]}
        return {k: walk(v) for k, v in value.items()}

    out = dict(cfn)
    resources = {}
    for logical_id, res in cfn["Resources"].items():
        if logical_id in removed:
            continue
        res = walk(res)
        if "DependsOn" in res:
            depends = [res["DependsOn"]] if isinstance(res["DependsOn"], str) else res["DependsOn"]
            depends = [d for d in depends if d not in removed]
            res = {k: v for k, v in res.items() if k != "DependsOn"} | ({"DependsOn": depends} if depends else {})
        resources[logical_id] = res
    out["Resources"] = resources
    out["Outputs"] = walk(cfn.get("Outputs") or {})
    return out


# ---------------------------------------------------------------------------------------------
# moto, and the rehearsal's stand-ins for the types moto's CloudFormation lacks
# ---------------------------------------------------------------------------------------------

_STAND_INS: dict[str, tuple[str, str]] = {}  # type -> (why moto cannot, which moto API makes it)


def _register_stand_ins() -> None:
    """CloudFormation models for types moto's CloudFormation lacks but whose moto service the
    code's checks need: each makes its resource through that moto backend from the template's
    properties, as CloudFormation would, and answers Ref and Fn::GetAtt as CloudFormation does."""
    if _STAND_INS:
        return
    from moto.apigatewayv2.models import apigatewayv2_backends
    from moto.awslambda.models import lambda_backends
    from moto.awslambda.utils import make_function_arn
    from moto.cloudformation import parsing
    from moto.cognitoidp.models import cognitoidp_backends
    from moto.core.common_models import CloudFormationModel
    from moto.secretsmanager.models import secretsmanager_backends

    # moto finds CloudFormation models as the direct subclasses of CloudFormationModel: each
    # stand-in names it as a base of its own.
    class StandIn:
        TYPE = ""
        NAME = ""
        ATTRS: tuple[str, ...] = ()

        def __init__(self, physical_id: str, attrs: dict[str, str]):
            self._physical_id = physical_id
            self._attrs = attrs

        @property
        def physical_resource_id(self) -> str:
            return self._physical_id

        @classmethod
        def cloudformation_type(cls) -> str:
            return cls.TYPE

        @classmethod
        def cloudformation_name_type(cls) -> str:
            return cls.NAME

        @classmethod
        def has_cfn_attr(cls, attr: str) -> bool:
            return attr in cls.ATTRS

        def get_cfn_attribute(self, attribute_name: str) -> str:
            if attribute_name not in self._attrs:
                raise NotImplementedError(f"the rehearsal's {self.TYPE} has no attribute {attribute_name}")
            return self._attrs[attribute_name]

        @classmethod
        def update_from_cloudformation_json(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise NotImplementedError

        @classmethod
        def delete_from_cloudformation_json(cls, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            return None

    class Secret(StandIn, CloudFormationModel):
        TYPE, NAME, ATTRS = "AWS::SecretsManager::Secret", "Name", ("Id",)

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "Secret":
            props = cloudformation_json["Properties"]
            backend = secretsmanager_backends[account_id][region_name]
            value = props.get("SecretString")
            if "GenerateSecretString" in props:
                gen = props["GenerateSecretString"]
                password = json.loads(backend.get_random_password(
                    password_length=int(gen.get("PasswordLength", 32)),
                    exclude_characters=gen.get("ExcludeCharacters", ""),
                    exclude_numbers=bool(gen.get("ExcludeNumbers", False)),
                    exclude_punctuation=bool(gen.get("ExcludePunctuation", False)),
                    exclude_uppercase=bool(gen.get("ExcludeUppercase", False)),
                    exclude_lowercase=bool(gen.get("ExcludeLowercase", False)),
                    include_space=bool(gen.get("IncludeSpace", False)),
                    require_each_included_type=bool(gen.get("RequireEachIncludedType", True)),
                ))["RandomPassword"]
                if "SecretStringTemplate" in gen:
                    document = json.loads(gen["SecretStringTemplate"])
                    document[gen["GenerateStringKey"]] = password
                    value = json.dumps(document)
                else:
                    value = password
            created = json.loads(backend.create_secret(
                name=resource_name, secret_string=value, secret_binary=None, description=props.get("Description"),
                tags=props.get("Tags"), kms_key_id=props.get("KmsKeyId"), client_request_token=None,
                replica_regions=[], force_overwrite=False))
            return cls(created["ARN"], {"Id": created["ARN"]})

    class UserPool(StandIn, CloudFormationModel):
        TYPE, NAME = "AWS::Cognito::UserPool", "UserPoolName"
        ATTRS = ("Arn", "ProviderName", "ProviderURL", "UserPoolId")
        CFN_ONLY = ("UserPoolName", "EnabledMfas", "UserPoolTags", "AliasAttributes", "LambdaConfig")

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "UserPool":
            props = cloudformation_json["Properties"]
            backend = cognitoidp_backends[account_id][region_name]
            pool = backend.create_user_pool(resource_name, {k: v for k, v in props.items() if k not in cls.CFN_ONLY})
            provider = f"cognito-idp.{region_name}.amazonaws.com/{pool.id}"
            return cls(pool.id, {"Arn": pool.arn, "ProviderName": provider, "ProviderURL": f"https://{provider}",
                                 "UserPoolId": pool.id})

    class UserPoolClient(StandIn, CloudFormationModel):
        TYPE, NAME, ATTRS = "AWS::Cognito::UserPoolClient", "ClientName", ("ClientId", "Name")

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "UserPoolClient":
            props = dict(cloudformation_json["Properties"])
            backend = cognitoidp_backends[account_id][region_name]
            pool_id = props.pop("UserPoolId")
            props["ClientName"] = resource_name
            client = backend.create_user_pool_client(pool_id, bool(props.pop("GenerateSecret", False)), props)
            return cls(client.id, {"ClientId": client.id, "Name": resource_name})

    class UserPoolResourceServer(StandIn, CloudFormationModel):
        TYPE, NAME = "AWS::Cognito::UserPoolResourceServer", "Name"

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "UserPoolResourceServer":
            props = cloudformation_json["Properties"]
            backend = cognitoidp_backends[account_id][region_name]
            server = backend.create_resource_server(props["UserPoolId"], props["Identifier"], resource_name,
                                                    props.get("Scopes", []))
            return cls(server.identifier, {})

    class HttpApi(StandIn, CloudFormationModel):
        TYPE, NAME, ATTRS = "AWS::ApiGatewayV2::Api", "Name", ("ApiEndpoint", "ApiId")

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "HttpApi":
            props = cloudformation_json["Properties"]
            if "Body" not in props:
                raise NotImplementedError("the rehearsal's HTTP API needs the Body SAM writes")
            backend = apigatewayv2_backends[account_id][region_name]
            api = backend.create_api(
                api_key_selection_expression=None, cors_configuration=props.get("CorsConfiguration"),
                description=props.get("Description"), disable_schema_validation=None,
                disable_execute_api_endpoint=props.get("DisableExecuteApiEndpoint"),
                name=resource_name, protocol_type="HTTP", route_selection_expression=None,
                tags=props.get("Tags") or {}, version=None)
            # moto's own OpenAPI import: a route and an integration per operation of the Body.
            api.import_api(json.dumps(props["Body"]), fail_on_warnings=False)
            return cls(api.api_id, {"ApiId": api.api_id, "ApiEndpoint": api.api_endpoint})

    class Version(StandIn, CloudFormationModel):
        TYPE, NAME, ATTRS = "AWS::Lambda::Version", "", ("Version",)

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "Version":
            props = cloudformation_json["Properties"]
            backend = lambda_backends[account_id][region_name]
            published = backend.publish_version(props["FunctionName"], props.get("Description", ""))
            if published is None:
                raise ValueError(f"moto published no version of {props['FunctionName']}")
            # Ref: the version's ARN (the function's, qualified by the version).
            arn = f"{make_function_arn(region_name, account_id, published.function_name)}:{published.version}"
            return cls(arn, {"Version": str(published.version)})

    class Alias(StandIn, CloudFormationModel):
        TYPE, NAME, ATTRS = "AWS::Lambda::Alias", "Name", ("AliasArn",)

        @classmethod
        def create_from_cloudformation_json(  # type: ignore[override]
                cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str,
                **kwargs: Any) -> "Alias":
            props = cloudformation_json["Properties"]
            backend = lambda_backends[account_id][region_name]
            alias = backend.create_alias(name=resource_name, function_name=props["FunctionName"],
                                         function_version=str(props["FunctionVersion"]),
                                         description=props.get("Description", ""),
                                         routing_config=props.get("RoutingConfig"))  # type: ignore[arg-type]
            return cls(alias.arn, {"AliasArn": alias.arn})

    no_model = "moto's CloudFormation has no model for it"
    for model, why, how in (
            (Version, "moto's model answers neither Ref nor Fn::GetAtt Version (AttributeError: 'LambdaVersion' "
                      "object has no attribute 'get_cfn_attribute')", "Lambda PublishVersion"),
            (Alias, no_model, "Lambda CreateAlias"),
            (Secret, no_model, "Secrets Manager CreateSecret (GenerateSecretString through GetRandomPassword)"),
            (UserPool, no_model, "Cognito CreateUserPool"),
            (UserPoolClient, no_model, "Cognito CreateUserPoolClient"),
            (UserPoolResourceServer, no_model, "Cognito CreateResourceServer"),
            (HttpApi, no_model, "API Gateway v2 CreateApi and its OpenAPI import of the Body")):
        _STAND_INS[model.TYPE] = (why, how)
    # The model map is built once (and cached): the stand-ins are put in it, over any of moto's.
    parsing.get_model_map.cache_clear()
    parsing.get_name_type_map.cache_clear()
    model_map, name_map = parsing.get_model_map(), parsing.get_name_type_map()
    for model in (Version, Alias, Secret, UserPool, UserPoolClient, UserPoolResourceServer, HttpApi):
        model_map[model.TYPE] = model
        name_map[model.TYPE] = model.NAME


def _moto_supported_types() -> set[str]:
    from moto.cloudformation import parsing

    return set(parsing.get_model_map()) | set(parsing.NULL_MODELS)


@contextlib.contextmanager
def _moto_environment() -> Iterator[None]:
    """The process's environment while moto runs: no real credentials, profile or endpoint can
    take a call out of moto, and moto's account is the rehearsal's."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            del os.environ[name]
    os.environ.update({"AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal",
                       "AWS_DEFAULT_REGION": REGION, "MOTO_ACCOUNT_ID": ACCOUNT})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _artifact() -> bytes:
    """What `sam build` would upload for each function: a zip with a bootstrap (never run)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\necho 'rehearsal artifact: not a function' >&2\nexit 1\n")
    return buf.getvalue()


@dataclass
class Deployment:
    cfn: dict[str, Any]                      # the template moto was given
    physical: dict[str, str]                 # logical id -> physical id, as moto's stack lists it
    types: dict[str, str]                    # logical id -> type
    outputs: dict[str, str]
    status: str


def _create_stack(cfn: dict[str, Any], params: dict[str, str]) -> tuple[Deployment | None, tuple[str, str, str] | None]:
    """Makes the stack in the current moto; on failure, (logical id, type, message) of the
    innermost resource whose creation raised."""
    import boto3
    from moto.cloudformation import parsing

    culprit: list[tuple[str, str, str]] = []
    original = parsing.parse_and_create_resource

    def tracked(logical_id: str, resource_json: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return original(logical_id, resource_json, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 (moto's own failure, reported)
            if not culprit:
                culprit.append((logical_id, resource_json.get("Type", "?"), f"{type(e).__name__}: {e}"))
            raise

    cf = boto3.client("cloudformation", region_name=REGION)
    declared = set(cfn.get("Parameters") or {})
    parsing.parse_and_create_resource = tracked  # type: ignore[assignment]
    try:
        cf.create_stack(StackName=STACK_NAME, TemplateBody=json.dumps(cfn),
                        Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                    for k, v in params.items() if k in declared],
                        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"])
    except Exception as e:  # noqa: BLE001
        if culprit:
            return None, culprit[0]
        return None, ("(stack)", "AWS::CloudFormation::Stack", f"{type(e).__name__}: {e}")
    finally:
        parsing.parse_and_create_resource = original  # type: ignore[assignment]
    stack = cf.describe_stacks(StackName=STACK_NAME)["Stacks"][0]
    resources = cf.describe_stack_resources(StackName=STACK_NAME)["StackResources"]
    return Deployment(
        cfn=cfn,
        physical={r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources},
        types={r["LogicalResourceId"]: r["ResourceType"] for r in resources},
        outputs={o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs", [])},
        status=stack["StackStatus"],
    ), None


# ---------------------------------------------------------------------------------------------
# What the code relies on (read from the Rust sources, so that the checks follow the code)
# ---------------------------------------------------------------------------------------------


def _rust_files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.rs") if "target" not in p.parts)


def code_variables() -> set[str]:
    """Every environment variable the functions' code reads by name."""
    names: set[str] = set()
    pattern = re.compile(r"""(?:required|optional|env::var(?:_os)?)\(\s*"([A-Z][A-Z0-9_]*)"\s*\)""")
    for path in _rust_files(*CODE_DIRS):
        names |= set(pattern.findall(path.read_text(encoding="utf-8")))
    return names


def table_variables() -> dict[str, str]:
    """Config's table fields -> the variable each is read from (shared/src/config.rs); every one
    is required at start-up."""
    pairs = re.findall(r"(\w+):\s*required\(\"([A-Z][A-Z0-9_]*)\"\)", CONFIG_RS.read_text(encoding="utf-8"))
    if not pairs:
        raise StackError(f"{CONFIG_RS.relative_to(ROOT)}: no `field: required(\"VAR\")` found: update rehearse.py")
    return dict(pairs)


@dataclass
class TableUse:
    files: list[Path] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)              # .key("name", ...)
    indexes: dict[str, set[str]] = field(default_factory=dict)  # index -> attributes its key conditions name
    base_conditions: set[str] = field(default_factory=set)   # attributes of key conditions on the table
    text: str = ""


def store_usage() -> dict[str, TableUse]:
    """Per table field of Config: the key attributes, indexes and key conditions the store's
    requests name (a request is the builder chain after `.table_name(&self.tables.<field>)`)."""
    usage: dict[str, TableUse] = {}
    for path in _rust_files(STORE_SRC):
        text = path.read_text(encoding="utf-8")
        for f in set(re.findall(r"tables\.(\w+)", text)):
            use = usage.setdefault(f, TableUse())
            use.files.append(path)
            use.text += text
        for m in re.finditer(r"\.table_name\(\s*&?self\.tables\.(\w+)\s*\)", text):
            use = usage[m.group(1)]
            rest = text[m.end():]
            end = re.search(r"\.send\(\)|\.build\(\)|\.table_name\(", rest)
            chain = rest[: end.start() if end else len(rest)]
            use.keys |= set(re.findall(r"\.key\(\s*\"(\w+)\"", chain))
            names = dict(re.findall(r"expression_attribute_names\(\s*\"(#\w+)\"\s*,\s*\"(\w+)\"", chain))
            conditions = {names.get(c, c) for c in
                          re.findall(r"key_condition_expression\(\s*\"(#?\w+)\s*=", chain)}
            index = re.search(r"\.index_name\(\s*\"([\w.-]+)\"\s*\)", chain)
            if index:
                use.indexes.setdefault(index.group(1), set()).update(conditions)
            else:
                use.base_conditions |= conditions
    return usage


def record_fields() -> set[str]:
    """The field names of the records shared/src serialises (serde: the attribute names)."""
    names: set[str] = set()
    for path in _rust_files(SHARED_SRC):
        names |= set(re.findall(r"^\s*pub(?:\([\w:]+\))?\s+(\w+)\s*:", path.read_text(encoding="utf-8"), re.M))
    return names


def keyring_min_length() -> int | None:
    m = re.search(r"material\.len\(\)\s*<\s*(\d+)", CRYPTO_RS.read_text(encoding="utf-8"))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


class Report:
    def __init__(self, label: str):
        self.label = label
        self.passed: list[str] = []
        self.problems: list[str] = []
        self.gaps: list[str] = []          # what moto cannot do, named (not a failure)
        self.unchecked: list[str] = []     # what depends on a gap
        self.summary = ""

    def dropped(self, kind: str, prop: str, how: str) -> None:
        gap = f"{kind}: moto's model drops {prop} ({how})"
        if gap not in self.gaps:
            self.gaps.append(gap)

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        if ok:
            if what not in self.passed:
                self.passed.append(what)
        else:
            self.problems.append(f"{what}: {why}" if why else what)
        return ok


def _has_gap(value: Any) -> str | None:
    m = re.search(rf"{GAP}\(([^)]*)\)", json.dumps(value)) if value is not None else None
    return m.group(1) if m else None


class Expect:
    """The value CloudFormation would give an expression of the (condition-resolved) template,
    from the parameters and the physical ids and attributes of what moto made. None: not
    computable here (then only moto's own value is checked)."""

    def __init__(self, dep: Deployment, params: dict[str, str], clients: "Clients"):
        self.dep = dep
        self.params = params
        self.c = clients
        self.pseudo = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
                       "AWS::URLSuffix": "amazonaws.com", "AWS::StackName": STACK_NAME}

    def ref(self, name: str) -> str | None:
        if name in self.params:
            return self.params[name]
        if name in self.pseudo:
            return self.pseudo[name]
        return self.dep.physical.get(name) or None

    def get_att(self, name: str, attr: str) -> str | None:
        kind, physical = self.dep.types.get(name), self.dep.physical.get(name)
        if not physical:
            return None
        try:
            if attr == "Arn":
                if kind == "AWS::DynamoDB::Table":
                    return self.c.ddb.describe_table(TableName=physical)["Table"]["TableArn"]
                if kind == "AWS::IAM::Role":
                    return self.c.iam.get_role(RoleName=physical)["Role"]["Arn"]
                if kind == "AWS::Lambda::Function":
                    return self.c.lam.get_function(FunctionName=physical)["Configuration"]["FunctionArn"]
                if kind == "AWS::Logs::LogGroup":
                    return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{physical}:*"
                if kind == "AWS::Cognito::UserPool":
                    return self.c.idp.describe_user_pool(UserPoolId=physical)["UserPool"]["Arn"]
        except Exception:  # noqa: BLE001 (absent: the resource checks say so)
            return None
        return None

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self(v) for v in value]
            return None if any(i is None for i in items) else items
        if not isinstance(value, dict):
            return None if isinstance(value, str) and GAP in value else value
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attr = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(name, attr)
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                values = {k: self(v) for k, v in variables.items()}
                missing = False

                def sub(m: re.Match[str]) -> str:
                    nonlocal missing
                    name = m.group(1)
                    if name.startswith("!"):
                        return "${" + name[1:] + "}"
                    got = values[name] if name in values else (
                        self.get_att(*name.split(".", 1)) if "." in name else self.ref(name))
                    if got is None:
                        missing = True
                        return ""
                    return str(got)

                out = re.sub(r"\$\{([^}]+)\}", sub, text)
                return None if missing or GAP in out else out
            if key == "Fn::Join":
                sep, items = arg
                parts = self(items)
                return None if parts is None else sep.join(str(p) for p in parts)
            if key.startswith("Fn::"):
                return None
        items = {k: self(v) for k, v in value.items()}
        return None if any(v is None for v in items.values()) else items


@dataclass
class Clients:
    ddb: Any
    iam: Any
    lam: Any
    sm: Any
    idp: Any
    apigw: Any

    @classmethod
    def make(cls) -> "Clients":
        import boto3

        return cls(*(boto3.client(s, region_name=REGION) for s in
                     ("dynamodb", "iam", "lambda", "secretsmanager", "cognito-idp", "apigatewayv2")))


def check_resources(rep: Report, dep: Deployment, gaps: dict[str, str], cascaded: dict[str, str]) -> None:
    """Every resource of the template is in moto's stack, or named: a type moto cannot make, or
    one made by a stand-in."""
    stood_in: dict[str, list[str]] = {}
    missing = []
    for logical_id, res in dep.cfn["Resources"].items():
        if logical_id not in dep.types:
            missing.append(f"{res['Type']} {logical_id}")
        elif res["Type"] in _STAND_INS:
            stood_in.setdefault(res["Type"], []).append(logical_id)
    rep.check(not missing, f"every one of the {len(dep.cfn['Resources'])} resources given to moto was created",
              f"moto's stack does not list {missing}")
    for kind, ids in stood_in.items():
        why, how = _STAND_INS[kind]
        rep.gaps.append(f"{kind} ({_some(ids)}): {why}; made by the rehearsal's stand-in through moto's {how}")
    by_type: dict[str, list[str]] = {}
    for logical_id, kind in gaps.items():
        by_type.setdefault(kind, []).append(logical_id)
    for kind, ids in by_type.items():
        rep.gaps.append(f"{kind} ({_some(ids)}): not created: moto's CloudFormation has no model for it")
    by_type = {}
    for logical_id, kind in cascaded.items():
        by_type.setdefault(kind, []).append(logical_id)
    for kind, ids in by_type.items():
        rep.gaps.append(f"{kind} ({_some(ids)}): not created: moto fails to make it with a reference to a resource "
                        f"it cannot make")
    rep.check(dep.status == "CREATE_COMPLETE", "stack CREATE_COMPLETE", dep.status)


def _some(ids: list[str], shown: int = 3) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def table_definition_problems(cfn: dict[str, Any]) -> list[str]:
    """What DynamoDB refuses in a table's definition, said plainly (moto fails on some of it with
    an IndexError): a key attribute without a definition, a definition no key uses."""
    problems = []
    for logical_id, res in cfn["Resources"].items():
        if res["Type"] != "AWS::DynamoDB::Table":
            continue
        props = res["Properties"]
        defined = {a["AttributeName"] for a in props.get("AttributeDefinitions", [])}
        keys = {k["AttributeName"] for k in props.get("KeySchema", [])}
        for index in props.get("GlobalSecondaryIndexes", []) + props.get("LocalSecondaryIndexes", []):
            keys |= {k["AttributeName"] for k in index.get("KeySchema", [])}
        if keys - defined:
            problems.append(f"table {logical_id}: key attributes {sorted(keys - defined)} have no AttributeDefinitions")
        if defined - keys:
            problems.append(f"table {logical_id}: AttributeDefinitions {sorted(defined - keys)} are no key's "
                            f"(DynamoDB refuses them)")
    return problems


def check_tables(rep: Report, dep: Deployment, c: Clients) -> dict[str, dict[str, Any]]:
    """Each table as the template declares it (keys, attribute types, indexes, billing,
    encryption); TTL and point-in-time recovery, which moto's model drops, in the template."""
    tables = {}
    dropped_ttl = dropped_pitr = False
    for logical_id, res in dep.cfn["Resources"].items():
        if res["Type"] != "AWS::DynamoDB::Table" or not dep.physical.get(logical_id):
            continue
        props, name = res["Properties"], dep.physical[logical_id]
        what = f"table {logical_id} ({name})"
        try:
            t = c.ddb.describe_table(TableName=name)["Table"]
        except Exception as e:  # noqa: BLE001
            rep.check(False, f"{what} exists in DynamoDB", str(e))
            continue
        tables[logical_id] = t
        rep.check(t["KeySchema"] == props["KeySchema"], f"{what} key schema",
                  f"{t['KeySchema']} != {props['KeySchema']}")
        declared = {a["AttributeName"]: a["AttributeType"] for a in props.get("AttributeDefinitions", [])}
        actual = {a["AttributeName"]: a["AttributeType"] for a in t.get("AttributeDefinitions", [])}
        rep.check(actual == declared, f"{what} attribute definitions", f"{actual} != {declared}")
        want_gsi = {g["IndexName"]: (g["KeySchema"], g["Projection"]["ProjectionType"])
                    for g in props.get("GlobalSecondaryIndexes", [])}
        got_gsi = {g["IndexName"]: (g["KeySchema"], g["Projection"]["ProjectionType"])
                   for g in t.get("GlobalSecondaryIndexes", [])}
        rep.check(got_gsi == want_gsi, f"{what} global secondary indexes", f"{got_gsi} != {want_gsi}")
        billing = t.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
        rep.check(billing == props.get("BillingMode", "PROVISIONED"), f"{what} billing mode {billing}")
        if props.get("SSESpecification", {}).get("SSEEnabled"):
            if "SSEDescription" in t:
                rep.check(t["SSEDescription"].get("Status") == "ENABLED", f"{what} encrypted at rest (SSE)",
                          str(t.get("SSEDescription")))
            else:
                rep.dropped("AWS::DynamoDB::Table", "SSESpecification", "moto's model hands CloudFormation's "
                            "SSEEnabled to its table, which reads the API's Enabled: DescribeTable shows no "
                            "encryption; stated in the template")
        ttl = props.get("TimeToLiveSpecification")
        moto_ttl = c.ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl and moto_ttl.get("TimeToLiveStatus") != "ENABLED":
            dropped_ttl = True
        elif ttl:
            rep.check(moto_ttl.get("AttributeName") == ttl["AttributeName"], f"{what} TTL on {ttl['AttributeName']}")
        if props.get("PointInTimeRecoverySpecification", {}).get("PointInTimeRecoveryEnabled"):
            pitr = c.ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
            if pitr.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") != "ENABLED":
                dropped_pitr = True
    if dropped_ttl:
        rep.dropped("AWS::DynamoDB::Table", "TimeToLiveSpecification", "TTL stays off; the TTL attributes are "
                    "checked in the translated template against the code")
    if dropped_pitr:
        rep.dropped("AWS::DynamoDB::Table", "PointInTimeRecoverySpecification", "stated in the template")
    return tables


def check_tables_against_code(rep: Report, dep: Deployment, tables: dict[str, dict[str, Any]],
                              globals_env: dict[str, Any], set_aside: dict[str, str]) -> None:
    """The store's requests against the tables made: each table the code's Config reads is one
    the template makes (through the variable's !Ref), the key attributes the requests name are
    its keys, every key attribute is one the code names, the indexes queried exist with the
    attribute the key condition names, every index is used, and the TTL attribute is one the
    code writes."""
    usage = store_usage()
    fields_in_records = record_fields()
    for field_name, var in sorted(table_variables().items()):
        ref = globals_env.get(var)
        logical_id = ref.get("Ref") if isinstance(ref, dict) else None
        what = f"store's tables.{field_name} ({var})"
        if logical_id in set_aside:
            rep.unchecked.append(f"{what}: {logical_id} is not in moto's stack (above)")
            continue
        if not rep.check(logical_id in tables, f"{what} is a table the stack makes",
                         f"Globals sets {var} to {ref!r}"):
            continue
        assert logical_id is not None
        t = tables[logical_id]
        key_attrs = [k["AttributeName"] for k in t["KeySchema"]]
        use = usage.get(field_name, TableUse())
        if not use.files:
            rep.check(False, f"{what}: the store uses it",
                      f"no file under {STORE_SRC.relative_to(ROOT)} names tables.{field_name}")
            continue
        extra = sorted(use.keys - set(key_attrs))
        rep.check(not extra, f"{what}: the keys its requests name are {logical_id}'s keys {key_attrs}",
                  f"{extra} are not")
        unnamed = [a for a in key_attrs if f'"{a}"' not in use.text and a not in fields_in_records]
        rep.check(not unnamed, f"{what}: the code names {logical_id}'s key attributes {key_attrs}",
                  f"{unnamed} appear in no request of the store nor as a record field")
        hash_key = next(k["AttributeName"] for k in t["KeySchema"] if k["KeyType"] == "HASH")
        if use.base_conditions:
            rep.check(use.base_conditions <= {hash_key}, f"{what}: its queries' key conditions name {hash_key}",
                      f"they name {sorted(use.base_conditions)}")
        gsis = {g["IndexName"]: g for g in t.get("GlobalSecondaryIndexes", [])}
        for index, conditions in sorted(use.indexes.items()):
            if not rep.check(index in gsis, f"{what}: index {index} exists", f"{logical_id} has {sorted(gsis)}"):
                continue
            index_hash = next(k["AttributeName"] for k in gsis[index]["KeySchema"] if k["KeyType"] == "HASH")
            rep.check(conditions <= {index_hash}, f"{what}: queries of {index} name its key {index_hash}",
                      f"they name {sorted(conditions)}")
        unused = sorted(set(gsis) - set(use.indexes))
        rep.check(not unused, f"{what}: every index of {logical_id} is queried", f"{unused} never are")
        ttl = dep.cfn["Resources"][logical_id]["Properties"].get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            attr = ttl["AttributeName"]
            rep.check(f'"{attr}"' in use.text or attr in fields_in_records,
                      f"{what}: TTL attribute {attr} is one the code writes",
                      "no request of the store and no record field names it")


def check_functions(rep: Report, dep: Deployment, c: Clients, expect: Expect, tables: dict[str, Any]) -> None:
    """Each function as the template resolves it with the names moto gave: its configuration,
    its environment (every variable the code requires set, none the code does not read, the
    tables, the secret and the user pool named by their real names), its log group and its
    API Gateway permissions."""
    needed = code_variables()
    required = set(table_variables().values())
    min_len = keyring_min_length()
    table_names = {t["TableName"] for t in tables.values()}
    dropped: set[str] = set()
    for logical_id, res in dep.cfn["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function" or not dep.physical.get(logical_id):
            continue
        props, name = res["Properties"], dep.physical[logical_id]
        what = f"function {logical_id} ({name})"
        try:
            conf = c.lam.get_function(FunctionName=name)["Configuration"]
        except Exception as e:  # noqa: BLE001
            rep.check(False, f"{what} exists in Lambda", str(e))
            continue
        bad = []
        for prop, got in (("Runtime", conf.get("Runtime")), ("Handler", conf.get("Handler")),
                          ("MemorySize", conf.get("MemorySize")), ("Timeout", conf.get("Timeout")),
                          ("Role", conf.get("Role"))):
            want = expect(props.get(prop))
            if want is None or str(got) != str(want):
                bad.append(f"{prop} {got!r}, not {want!r}")
        if "ReservedConcurrentExecutions" in props:
            got = c.lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
            if str(got) != str(expect(props["ReservedConcurrentExecutions"])):
                bad.append(f"reserved concurrency {got!r}")
        rep.check(not bad, f"{what}: runtime, handler, memory, timeout, role"
                  f"{', reserved concurrency' if 'ReservedConcurrentExecutions' in props else ''} as the template "
                  f"resolves them", "; ".join(bad))

        # What moto's Lambda model drops, checked as the translated template states it.
        arch = props.get("Architectures", ["x86_64"])
        if conf.get("Architectures") != arch:
            dropped.add("Architectures")
        tracing = (props.get("TracingConfig") or {}).get("Mode")
        if tracing and conf.get("TracingConfig", {}).get("Mode") != tracing:
            dropped.add("TracingConfig")
        log_group = (props.get("LoggingConfig") or {}).get("LogGroup")
        lg = expect(log_group) if log_group is not None else None
        if log_group is not None and conf.get("LoggingConfig", {}).get("LogGroup") != lg:
            dropped.add("LoggingConfig")
        bad = [] if arch == ["arm64"] else [f"Architectures {arch} (scripts/dev build builds arm64)"]
        if log_group is not None and (lg is None or lg not in dep.physical.values()):
            bad.append(f"its log group {log_group} is no log group the stack makes")
        rep.check(not bad, f"{what}: arm64{f', logs to {lg}' if lg else ''}", "; ".join(bad))

        # The environment, every variable as the template resolves it, with the names moto gave.
        env = conf.get("Environment", {}).get("Variables", {})
        want_env = props.get("Environment", {}).get("Variables", {})
        bad = []
        for var, value in want_env.items():
            gap = _has_gap(value)
            if gap:
                rep.unchecked.append(f"{what} {var}: depends on {gap}, which is not in moto's stack (above)")
                continue
            want, got = expect(value), env.get(var)
            if want is None and not got and value != "":
                bad.append(f"{var} unresolved ({got!r})")
            elif want is not None and (got is None or str(got) != str(want)):
                bad.append(f"{var}={got!r}, not {want!r}")
        bad += [f"{var} is set, and not by the template" for var in sorted(set(env) - set(want_env))]
        bad += [f"{var} is read by no code" for var in sorted(want_env)
                if var not in needed and not var.startswith("AWS_")]
        bad += [f"{var}, which the code requires, is not set" for var in sorted(required) if not env.get(var)]
        bad += [f"{var}={value} is no table the stack made" for var, value in sorted(env.items())
                if var in required and value not in table_names and GAP not in str(value)]
        rep.check(not bad, f"{what}: its {len(env)} variables as the template resolves them with the names of the "
                  f"resources made, each read by the code, every required one set", "; ".join(bad))
        if "ENCRYPTION_SECRET_ID" in env:
            check_secret(rep, c, env["ENCRYPTION_SECRET_ID"], f"{what} ENCRYPTION_SECRET_ID", min_len)
        if env.get("TOKEN_ISSUER", "").startswith(f"https://cognito-idp.{REGION}.amazonaws.com/"):
            pool_id = env["TOKEN_ISSUER"].rsplit("/", 1)[1]
            audiences = set(filter(None, str(env.get("TOKEN_AUDIENCES", "")).split(",")))
            try:
                clients = {x["ClientId"] for x in
                           c.idp.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]}
                why = "" if audiences and audiences <= clients else \
                    f"TOKEN_AUDIENCES {sorted(audiences)} are not its clients"
            except Exception as e:  # noqa: BLE001
                why = str(e)
            if env.get("TOKEN_JWKS_URL") != env["TOKEN_ISSUER"] + "/.well-known/jwks.json":
                why += f" TOKEN_JWKS_URL {env.get('TOKEN_JWKS_URL')!r} is not the pool's keys"
            rep.check(not why, f"{what}: TOKEN_ISSUER is the user pool the stack made ({pool_id}), TOKEN_AUDIENCES its "
                      f"client, TOKEN_JWKS_URL its keys", why)
        check_permissions(rep, dep, c, logical_id, name, what)
    for prop in sorted(dropped):
        rep.dropped("AWS::Lambda::Function", prop, "checked in the translated template")


_checked_secrets: dict[str, bool] = {}


def check_secret(rep: Report, c: Clients, secret_id: str, what: str, min_len: int | None) -> None:
    """The encryption keys as shared/src/crypto.rs (Keyring::from_secret) takes them: a JSON
    object whose "active" names a member, each other member key material of min_len or more."""
    if secret_id in _checked_secrets:
        if _checked_secrets[secret_id]:  # (a failure is reported once, for the first function)
            rep.passed.append(f"{what} names the encryption-key secret checked above")
        return
    try:
        value = c.sm.get_secret_value(SecretId=secret_id)["SecretString"]
    except Exception as e:  # noqa: BLE001
        _checked_secrets[secret_id] = rep.check(False, f"{what} names an existing secret", str(e))
        return
    why = ""
    try:
        doc = json.loads(value)
        keys = {k: v for k, v in doc.items() if k != "active"}
        if not isinstance(doc.get("active"), str) or doc["active"] not in keys:
            why = f"\"active\" ({doc.get('active')!r}) names no key ({sorted(keys)})"
        elif min_len is None:
            why = f"{CRYPTO_RS.relative_to(ROOT)} no longer says `material.len() < N`: update rehearse.py"
        elif any(not isinstance(v, str) or len(v) < min_len for v in keys.values()):
            why = f"key material shorter than {min_len} characters"
    except (ValueError, AttributeError):
        why = "not a JSON object"
    _checked_secrets[secret_id] = rep.check(
        not why, f"{what}: the secret exists and holds keys crypto.rs accepts (\"active\" naming a key of "
                 f"{min_len} characters or more)", why)


def check_permissions(rep: Report, dep: Deployment, c: Clients, logical_id: str, name: str, what: str) -> None:
    """The function's Lambda permissions in the template: API Gateway may invoke it from the
    HTTP API the stack made."""
    resources = dep.cfn["Resources"]
    aliases = {k: r["Properties"].get("Name") for k, r in resources.items() if r["Type"] == "AWS::Lambda::Alias"
               and logical_id in _references(r["Properties"].get("FunctionName"))}
    perms = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
             and set(_references(r["Properties"].get("FunctionName"))) & ({logical_id} | set(aliases))]
    for alias_id, alias in aliases.items():
        try:
            got = c.lam.get_alias(FunctionName=name, Name=alias)
            versions = {v["Version"] for v in c.lam.list_versions_by_function(FunctionName=name)["Versions"]}
            rep.check(got["FunctionVersion"] in versions - {"$LATEST"},
                      f"{what}: alias {alias} points at a version published of it ({got['FunctionVersion']})",
                      f"it points at {got['FunctionVersion']}, published: {sorted(versions)}")
        except Exception as e:  # noqa: BLE001
            rep.check(False, f"{what}: alias {alias_id} exists", str(e))
    if not perms:
        return
    raw = ""
    for qualifier in [None, *aliases.values()]:
        try:
            kwargs = {"Qualifier": qualifier} if qualifier else {}
            raw += json.dumps(json.loads(c.lam.get_policy(FunctionName=name, **kwargs)["Policy"])["Statement"])
        except Exception:  # noqa: BLE001 (no policy there: the check below says what is missing)
            pass
    sources = set()
    for perm in perms:
        source = perm["Properties"].get("SourceArn")
        gap = _has_gap(source)
        if gap:
            rep.unchecked.append(f"{what}'s permission: its SourceArn depends on {gap}")
            continue
        sources |= {dep.physical[k] for k in _references(source) if k in dep.physical}
        if not sources or not all(s in raw for s in sources) or "apigateway.amazonaws.com" not in raw:
            rep.check(False, f"{what} may be invoked by API Gateway", f"{source} is not in its policy {raw[:300]}")
            return
    rep.check(True, f"{what}: API Gateway may invoke it from {', '.join(sorted(sources))} ({len(perms)} permissions)")


def check_roles(rep: Report, dep: Deployment, c: Clients, expect: Expect, tables: dict[str, Any]) -> None:
    """Each role: its inline policies as the template states them, resolved to the ARNs of the
    tables and secret made, each of which its function is told of (a grant on a table the
    function cannot name is dead weight, or a wrong table); its managed policies AWS's."""
    from samtranslator.internal.managed_policies import get_bundled_managed_policy_map

    aws_policies = set((get_bundled_managed_policy_map("aws") or {}).values())
    table_arns = {t["TableArn"]: t["TableName"] for t in tables.values()}
    dropped_managed = moto_repr_policies = False
    function_of = {r["Properties"]["Role"]["Fn::GetAtt"][0]: k for k, r in dep.cfn["Resources"].items()
                   if r["Type"] == "AWS::Lambda::Function" and isinstance(r["Properties"].get("Role"), dict)
                   and "Fn::GetAtt" in r["Properties"]["Role"]}
    for logical_id, res in dep.cfn["Resources"].items():
        if res["Type"] != "AWS::IAM::Role" or not dep.physical.get(logical_id):
            continue
        props, name = res["Properties"], dep.physical[logical_id]
        what = f"role {logical_id}"
        try:
            c.iam.get_role(RoleName=name)
        except Exception as e:  # noqa: BLE001
            rep.check(False, f"{what} exists in IAM", str(e))
            continue
        fn = function_of.get(logical_id)
        fn_env: dict[str, str] = {}
        if fn and dep.physical.get(fn):
            fn_env = c.lam.get_function(FunctionName=dep.physical[fn])["Configuration"].get(
                "Environment", {}).get("Variables", {})
        got_names = set(c.iam.list_role_policies(RoleName=name)["PolicyNames"])
        want = {p["PolicyName"]: p["PolicyDocument"] for p in props.get("Policies", [])}
        bad = [] if got_names == set(want) else [f"moto has {sorted(got_names)}, the template {sorted(want)}"]
        grants = 0
        for policy_name, document in want.items():
            if policy_name not in got_names:
                continue
            got = c.iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
            if isinstance(got, str):
                got = _moto_policy_document(got)
                moto_repr_policies = True
            gap = _has_gap(document)
            if gap:
                rep.unchecked.append(f"{what} {policy_name}: depends on {gap}")
                continue
            resolved = expect(document)
            if resolved is None or _normalise(got) != _normalise(resolved):
                bad.append(f"{policy_name} is {json.dumps(got)[:300]}")
            for statement in got.get("Statement", []):
                resources = statement.get("Resource", [])
                for arn in [resources] if isinstance(resources, str) else resources:
                    grants += ":dynamodb:" in arn or ":secretsmanager:" in arn
                    if ":dynamodb:" in arn:
                        base = arn.split("/index/")[0]
                        if base not in table_arns:
                            bad.append(f"{policy_name} grants {arn}, no table the stack made")
                        elif fn_env and table_arns[base] not in fn_env.values():
                            bad.append(f"{policy_name} grants {arn}, a table its function is not told of")
                    elif ":secretsmanager:" in arn and fn_env and arn not in fn_env.values():
                        bad.append(f"{policy_name} grants {arn}, a secret its function is not told of")
        rep.check(not bad, f"{what}: its {len(want)} inline policies as the template states them, resolved; each of "
                  f"their {grants} table and secret grants a resource the stack made that its function is told of",
                  "; ".join(bad))
        managed = props.get("ManagedPolicyArns", [])
        got_managed = {p["PolicyArn"] for p in c.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
        if managed and not got_managed:
            dropped_managed = True
        unknown = sorted(a for a in managed if not isinstance(a, str) or a not in aws_policies)
        rep.check(not unknown, f"{what}: its managed policies are AWS's "
                  f"({', '.join(str(a).rsplit('/', 1)[-1] for a in managed)})",
                  f"{unknown} are in no list of AWS managed policies (the SAM translator's)")
    if moto_repr_policies:
        rep.gaps.append("AWS::IAM::Role: moto's model stores an inline policy's document as a dict, and "
                        "GetRolePolicy answers Python's repr() of it: read back as such")
    if dropped_managed:
        rep.dropped("AWS::IAM::Role", "ManagedPolicyArns", "checked in the translated template against AWS's "
                    "managed policies")


def _moto_policy_document(text: str) -> Any:
    """An inline policy as moto's GetRolePolicy answers one its CloudFormation model put: the
    model stores the document as given, a dict, which moto's answer then writes as Python's
    repr() of it (botocore decodes JSON only)."""
    text = urllib.parse.unquote(text)
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def _normalise(value: Any) -> Any:
    """A policy document compared as IAM reads it: a single action or resource is a list of one."""
    if isinstance(value, dict):
        return {k: (sorted(_normalise(v)) if k in ("Action", "Resource") and isinstance(v, list) else
                    [v] if k in ("Action", "Resource") and isinstance(v, str) else _normalise(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def check_secrets(rep: Report, dep: Deployment, c: Clients, expect: Expect) -> None:
    for logical_id, res in dep.cfn["Resources"].items():
        if res["Type"] != "AWS::SecretsManager::Secret" or not dep.physical.get(logical_id):
            continue
        name = expect(res["Properties"].get("Name"))
        try:
            got = c.sm.describe_secret(SecretId=dep.physical[logical_id])
            rep.check(name is None or got["Name"] == name, f"secret {logical_id} ({got['Name']}) exists",
                      f"named {got['Name']}, not {name}")
        except Exception as e:  # noqa: BLE001
            rep.check(False, f"secret {logical_id} exists", str(e))


def check_http_api(rep: Report, dep: Deployment, c: Clients, sam: dict[str, Any]) -> None:
    """The HTTP API's routes, as API Gateway imports SAM's OpenAPI body, against template.yaml's
    routes: one per route, each integrated with its function."""
    apis = [k for k, r in dep.cfn["Resources"].items() if r["Type"] == "AWS::ApiGatewayV2::Api" and dep.physical.get(k)]
    if not apis:
        return
    by_binary = {binary: logical for logical, binary in template_functions(sam).items()}
    for logical_id in apis:
        api_id = dep.physical[logical_id]
        integrations = {i["IntegrationId"]: i.get("IntegrationUri", "")
                        for i in c.apigw.get_integrations(ApiId=api_id)["Items"]}
        got: dict[tuple[str, str], str] = {}
        for route in c.apigw.get_routes(ApiId=api_id)["Items"]:
            method, path = route["RouteKey"].split(" ", 1)
            # The body's forms for ANY and $default, which API Gateway reads as such.
            method = "ANY" if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" else method
            path = "$default" if path == "/$default" else path
            got[(method, path)] = integrations.get(route.get("Target", "").removeprefix("integrations/"), "")
        want = template_routes(sam)
        missing = [f"{r.method} {r.path}" for r in want if (r.method, r.path) not in got]
        rep.check(not missing and len(got) == len(want),
                  f"HTTP API {logical_id} ({api_id}) has template.yaml's {len(want)} routes",
                  f"missing {missing}, moto has {len(got)}")
        wrong = []
        for r in want:
            function = dep.physical.get(by_binary.get(r.function, ""), "")
            # The integration invokes the function, or an alias of it (AutoPublishAlias).
            if (r.method, r.path) in got and (not function or not re.search(
                    rf":function:{re.escape(function)}(:[\w-]+)?/", got[(r.method, r.path)])):
                wrong.append(f"{r.method} {r.path}")
        rep.check(not wrong, f"HTTP API {logical_id}: each route is integrated with its function",
                  f"{wrong} are not")


def check_dashboards(rep: Report, dep: Deployment) -> None:
    """Each dashboard's body, as the stack resolved it, is JSON (CloudWatch refuses any other) with
    no ${...} left unresolved."""
    import boto3

    cw = boto3.client("cloudwatch", region_name=REGION)
    for logical_id, res in dep.cfn["Resources"].items():
        if res["Type"] != "AWS::CloudWatch::Dashboard" or logical_id not in dep.types:
            continue
        name = dep.physical.get(logical_id, "")
        try:
            body = cw.get_dashboard(DashboardName=name)["DashboardBody"]
            widgets = json.loads(body).get("widgets", [])
            unresolved = re.findall(r"[$][{][^!}][^}]*[}]", body)
            why = f"unresolved: {unresolved[:3]}" if unresolved else ""
        except Exception as e:  # noqa: BLE001
            widgets, why = [], f"{type(e).__name__}: {e}"
        gaps = sorted(set(re.findall(rf"{GAP}\(([^).]*)", body))) if not why else []
        rep.check(not why, f"dashboard {logical_id} ({name}): its body is JSON ({len(widgets)} widgets), every "
                  f"${{...}} resolved" + (f" (references to {len(gaps)} resources moto cannot make hold "
                                          f"{GAP}(...))" if gaps else ""), why)


def check_outputs(rep: Report, dep: Deployment, expect: Expect) -> None:
    for name, output in dep.cfn.get("Outputs", {}).items():
        got = dep.outputs.get(name)
        gap = _has_gap(output.get("Value")) or (_has_gap(got) if got else None)
        if gap:
            rep.unchecked.append(f"output {name}: depends on {gap}, which is not in moto's stack (above)")
            continue
        want = expect(output.get("Value"))
        ok = bool(got) and "${" not in got and got != "None" and (want is None or got == str(want))
        rep.check(ok, f"output {name} = {got}", f"expected {want!r}")


# ---------------------------------------------------------------------------------------------
# The rehearsal
# ---------------------------------------------------------------------------------------------


def rehearse_one(sam: dict[str, Any], label: str, overrides: dict[str, str]) -> Report:
    import boto3
    from moto import mock_aws

    rep = Report(label)
    params = all_parameters(sam, overrides)
    resolver = Resolver(sam, params)
    resolver.pseudo.update({"AWS::AccountId": ACCOUNT, "AWS::StackName": STACK_NAME, "AWS::Region": REGION})
    rep.problems += parameter_problems(sam, params, resolver)
    try:
        cfn = translate(sam, params)
    except StackError as e:
        rep.problems.append(str(e))
        return rep
    cfn_resolver = Resolver(cfn, params)
    cfn_resolver.pseudo.update(resolver.pseudo)
    cfn, problems = resolve_conditions(cfn, cfn_resolver)
    rep.problems += problems + table_definition_problems(cfn)
    _register_stand_ins()
    cfn, gaps = set_gaps_aside(cfn, _moto_supported_types())
    globals_env = ((sam.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables", {})
    failed: dict[str, str] = {}    # logical id -> type: moto failed to make it
    cascaded: dict[str, str] = {}  # the same, for resources that refer to a gap
    for _attempt in range(10):
        _checked_secrets.clear()
        with _moto_environment(), mock_aws(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s3 = boto3.client("s3", region_name=REGION)
            s3.create_bucket(Bucket=CODE_BUCKET)
            s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=_artifact())
            given = _without(cfn, {**failed, **cascaded}) if failed or cascaded else cfn
            dep, culprit = _create_stack(given, params)
            if dep is None:
                assert culprit is not None
                logical_id, kind, message = culprit
                if logical_id not in given["Resources"]:
                    rep.problems.append(f"moto could not create the stack: {message}")
                    return rep
                # The stack is made again without it, so that the other checks still run.
                if _has_gap(given["Resources"][logical_id]):
                    # A resource that refers to a gap fails as its kin will (a permission of a
                    # function's alias, say): they are all set aside as consequences of the gap.
                    cascaded.update({k: kind for k, r in given["Resources"].items()
                                     if r["Type"] == kind and _has_gap(r)})
                else:
                    failed[logical_id] = kind
                    rep.problems.append(f"moto could not create {kind} {logical_id}: {message}")
                continue
            c = Clients.make()
            expect = Expect(dep, params, c)
            check_resources(rep, dep, gaps, cascaded)
            tables = check_tables(rep, dep, c)
            check_tables_against_code(rep, dep, tables, globals_env, {**gaps, **failed, **cascaded})
            check_secrets(rep, dep, c, expect)
            check_functions(rep, dep, c, expect, tables)
            check_roles(rep, dep, c, expect, tables)
            check_http_api(rep, dep, c, sam)
            check_dashboards(rep, dep)
            check_outputs(rep, dep, expect)
            count = Counter(dep.types.values())
            rep.summary = (f"{len(dep.types)} resources made ({sum(count[k] for k in _STAND_INS)} by stand-ins), "
                           f"{len(gaps) + len(cascaded)} not; checked: {count['AWS::DynamoDB::Table']} tables, "
                           f"{count['AWS::Lambda::Function']} functions, {count['AWS::IAM::Role']} roles, "
                           f"{count['AWS::SecretsManager::Secret']} secrets, "
                           f"{count['AWS::ApiGatewayV2::Api']} HTTP API, "
                           f"{len(dep.cfn.get('Outputs', {}))} outputs")
            return rep
    rep.problems.append("gave up after 10 attempts to create the stack")
    return rep


def _gap_key(gap: str) -> str:
    """A gap without the logical ids it names (they differ between parameter sets)."""
    kind, _, rest = gap.partition(" (")
    return kind + rest.partition("): ")[2] if "): " in rest else gap


def rehearse(verbose: bool = False, template: Path = TEMPLATE) -> list[str]:
    """Rehearses the deploy of `template` once per parameter set, prints a short report, and
    returns the problems (empty: every check passed)."""
    started = time.monotonic()
    for logger in ("moto", "samtranslator"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    sam = load_sam(template)
    problems: list[str] = []
    shown_gaps: set[str] = set()
    for label, overrides in parameter_sets(sam):
        t0 = time.monotonic()
        with _moto_environment():  # (the translator makes a boto3 session too)
            rep = rehearse_one(sam, label, overrides)
        print(f"rehearse [{rep.label}]: {len(rep.passed)} checks passed, {len(rep.problems)} failed "
              f"({time.monotonic() - t0:.1f} s)", flush=True)
        print(f"  parameters: {', '.join(f'{k}={v}' for k, v in overrides.items()) or 'the defaults'}")
        if rep.summary:
            print(f"  {rep.summary}")
        new = [g for g in rep.gaps if _gap_key(g) not in shown_gaps]
        if len(new) < len(rep.gaps):
            print(f"  moto gaps: the {len(rep.gaps) - len(new)} above" + (", and:" if new else ""))
        for gap in new:
            print(f"  moto gap: {gap}")
        shown_gaps |= {_gap_key(g) for g in new}
        for item in rep.unchecked:
            print(f"  not checked: {item}")
        if verbose:
            for item in rep.passed:
                print(f"  ok: {item}")
        for p in rep.problems:
            print(f"  FAILED: {p}")
        problems += [f"[{rep.label}] {p}" for p in rep.problems]
    print(f"rehearse: {'passed' if not problems else f'{len(problems)} problems'} "
          f"({time.monotonic() - started:.1f} s)", flush=True)
    return problems
