"""The Python peer of the get-user function, for `scripts/dev bench`: what a team would
otherwise write. It does the same DynamoDB work as `GET /api/users/@me/` in Rust (a
consistent GetItem of the API key's hash, then one consistent BatchGetItem of the user, its
TOTP device and its pending email change) and answers with the same user object, on AWS's
own Python runtime client (run as `python -m awslambdaric handler.handler`) with boto3.
The client is built once per cold start, as the Rust functions do."""

import hashlib
import json
import os
import time

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config

_config = Config(
    connect_timeout=1,
    read_timeout=2,
    retries={"max_attempts": 3, "mode": "standard"},
)
_dynamodb = boto3.client("dynamodb", config=_config)
_deserialize = TypeDeserializer().deserialize

USERS = os.environ["USERS_TABLE"]
API_KEYS = os.environ["API_KEYS_TABLE"]
TWO_FACTOR = os.environ["TWO_FACTOR_TABLE"]
EMAIL_CHANGES = os.environ["EMAIL_CHANGES_TABLE"]

_NOT_AUTHENTICATED = (401, "authentication_error", "not_authenticated",
                      "Authentication credentials were not provided.")
_AUTH_FAILED = (401, "authentication_error", "authentication_failed",
                "Personal API key found in request Authorization header is invalid.")


def _plain(value):
    """DynamoDB numbers come back as Decimal; the user object wants ints."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "as_integer_ratio") and not isinstance(value, (bool, float)):
        return int(value)
    return value


def _item(raw):
    return {k: _plain(_deserialize(v)) for k, v in raw.items()}


def _response(status, body, headers=None):
    out = {"content-type": "application/json"}
    out.update(headers or {})
    return {"statusCode": status, "headers": out, "body": json.dumps(body, separators=(",", ":")),
            "isBase64Encoded": False}


def _error(status, kind, code, detail):
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return _response(status, {"type": kind, "code": code, "detail": detail, "attr": None}, headers)


def _user_object(user, is_2fa_enabled, pending_email):
    scenes = sorted(user.get("scene_dashboards", {}).items(),
                    key=lambda kv: (user.get("scene_first_set", {}).get(kv[0], 2**64), kv[0]))
    return {
        "uuid": user["uuid"],
        "distinct_id": user["distinct_id"],
        "first_name": user.get("first_name", ""),
        "last_name": user.get("last_name", ""),
        "email": user["email"],
        "pending_email": pending_email,
        "is_email_verified": user.get("is_email_verified"),
        "date_joined": user["date_joined"],
        "is_staff": user.get("is_staff", False),
        "notification_settings": user.get("notification_settings"),
        "anonymize_data": user.get("anonymize_data", False),
        "allow_impersonation": user.get("allow_impersonation", True),
        "toolbar_mode": user.get("toolbar_mode"),
        "events_column_config": user.get("events_column_config"),
        "has_seen_product_intro_for": user.get("has_seen_product_intro_for"),
        "theme_mode": user.get("theme_mode"),
        "hedgehog_config": user.get("hedgehog_config"),
        "allow_sidebar_suggestions": user.get("allow_sidebar_suggestions"),
        "shortcut_position": user.get("shortcut_position"),
        "role_at_organization": user.get("role_at_organization"),
        "passkeys_enabled_for_2fa": user.get("passkeys_enabled_for_2fa", False),
        "hide_mcp_hints": user.get("hide_mcp_hints", False),
        "is_2fa_enabled": is_2fa_enabled,
        "scene_personalisation": [{"scene": s, "dashboard": d} for s, d in scenes],
    }


def handler(event, _context):
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    scheme, _, key = headers.get("authorization", "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return _error(*_NOT_AUTHENTICATED)
    secure_value = "sha256$" + hashlib.sha256(key.encode()).hexdigest()
    found = _dynamodb.get_item(TableName=API_KEYS, Key={"secure_value": {"S": secure_value}},
                               ConsistentRead=True).get("Item")
    record = _item(found) if found else None
    if not record or not record.get("user_is_active", False):
        return _error(*_AUTH_FAILED)
    uuid = record["user_uuid"]
    out = _dynamodb.batch_get_item(RequestItems={
        TWO_FACTOR: {"Keys": [{"user_uuid": {"S": uuid}, "kind": {"S": "totp"}}], "ConsistentRead": True},
        EMAIL_CHANGES: {"Keys": [{"user_uuid": {"S": uuid}}], "ConsistentRead": True},
        USERS: {"Keys": [{"uuid": {"S": uuid}}], "ConsistentRead": True},
    })["Responses"]
    user = next((_item(i) for i in out.get(USERS, [])), None)
    if user is None or not user.get("is_active", True):
        return _error(404, "invalid_request", "not_found", "Not found.")
    pending = next((_item(i) for i in out.get(EMAIL_CHANGES, [])), None)
    pending_email = pending["new_email"] if pending and pending["expires_at"] > time.time() else None
    return _response(200, _user_object(user, bool(out.get(TWO_FACTOR)), pending_email))
