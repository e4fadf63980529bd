"""The Python peer of every function but get-user, for `scripts/dev bench`: the same AWS work
on AWS's own Python runtime client (`python -m awslambdaric replay.handler`) with boto3.

Writing each function again in Python would measure a second implementation; instead this
peer makes exactly the AWS calls the Rust function made for the same request, with the same
inputs and in the same order: bench-calls records them (the request bodies, stage by stage)
and the harness passes them in the event under `benchReplay`. Like the Rust functions it
builds its DynamoDB client at start-up, reads the encryption keys from Secrets Manager at
start-up when the function has them (ENCRYPTION_SECRET_ID), builds its SES client when it
first sends mail, and makes the calls the function makes after its response (its mail, the
note of the key's use) after its own. It does none of the function's own work (parsing, TOTP, encryption, the
user object), so its times understate what a full Python function would take. A replayed
write may meet a condition the first run already changed; DynamoDB then refuses it after
doing the same work, and the peer carries on, as a function answering 4xx would."""

import base64
import json
import os
import re

import boto3
from awslambdaric import lambda_runtime_client
from botocore.config import Config
from botocore.exceptions import ClientError

_config = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"max_attempts": 3, "mode": "standard"},
)
_clients = {"dynamodb": boto3.client("dynamodb", config=_config)}

if os.environ.get("ENCRYPTION_SECRET_ID"):
    _clients["secretsmanager"] = boto3.client("secretsmanager", config=_config)
    _keys = json.loads(_clients["secretsmanager"].get_secret_value(
        SecretId=os.environ["ENCRYPTION_SECRET_ID"])["SecretString"])


def _client(service):
    if service not in _clients:
        _clients[service] = boto3.client(service, config=_config)
    return _clients[service]


def _snake(operation):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _binary(value):
    """The wire format's base64 binaries ({"B": "..."}, {"BS": [...]}) as the bytes boto3 takes."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("B"), str):
            return {"B": base64.b64decode(value["B"])}
        if len(value) == 1 and isinstance(value.get("BS"), list):
            return {"BS": [base64.b64decode(v) for v in value["BS"]]}
        return {k: _binary(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_binary(v) for v in value]
    return value


def _make(call):
    client = _client(call["service"])
    try:
        getattr(client, _snake(call["operation"]))(**_binary(call["input"]))
    except ClientError:
        pass


# The calls the Rust function makes after posting its response (shared::run: queued mail, the
# note of the key's use): made
# here at the same point, after awslambdaric has posted the response and before it asks for
# the next event.
_after_response = []
_wait_next_invocation = lambda_runtime_client.BaseLambdaRuntimeClient.wait_next_invocation


def _wait_next_after_queued_calls(self):
    while _after_response:
        try:
            _make(_after_response.pop(0))
        except Exception:  # noqa: BLE001  as the function: logged there, never fatal
            pass
    return _wait_next_invocation(self)


lambda_runtime_client.BaseLambdaRuntimeClient.wait_next_invocation = _wait_next_after_queued_calls


def handler(event, _context):
    replay = event["benchReplay"]
    for call in replay["calls"]:
        if call.get("after_response"):
            _after_response.append(call)
        else:
            _make(call)
    return {"statusCode": replay["status"], "headers": {"content-type": "application/json"},
            "body": replay["body"], "isBase64Encoded": False}
