"""The local sign-in: a Cognito user pool in moto (its `cognito-idp`), whose access tokens the
functions accept beside personal API keys, as a deployment accepts its own pool's.

moto signs every pool's tokens with one RSA key that ships inside the package (kid "dummy")
and serves its public half at `<moto>/<pool id>/.well-known/jwks.json`; the tokens' `iss` is
the real Cognito form, `https://cognito-idp.<region>.amazonaws.com/<pool id>`. The pool, its
app client and the demo user exist only while that moto runs (a fresh one each time the stack
starts, with new ids)."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import LOCAL_DIR, REGION, ROOT, StackError, aws_client

POOL_NAME = "local-users"
CLIENT_NAME = "local-app"
CLIENT_FLOWS = ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
# The demo user's password in the local pool (printed by `scripts/dev run`; nothing else).
DEMO_PASSWORD = "Demo-password-1"
# What an unsigned JSON call to moto needs to reach its Cognito (moto takes it for us-east-1).
TARGET_PREFIX = "AWSCognitoIdentityProviderService"

# moto's signing key, as the tests get it: the JWK moto ships (completed with its primes) and
# the same key as PKCS#1 DER (jsonwebtoken's EncodingKey::from_rsa_der).
PRIVATE_JWK_FILE = LOCAL_DIR / "moto-cognito-private-jwk.json"
PRIVATE_DER_FILE = LOCAL_DIR / "moto-cognito-private-key.der"


@dataclass(frozen=True)
class LocalPool:
    moto_url: str
    pool_id: str
    client_id: str

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{REGION}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.moto_url}/{self.pool_id}/.well-known/jwks.json"

    def function_env(self) -> dict[str, str]:
        """The functions' token settings for this pool (the template's TOKEN_* variables)."""
        return {
            "TOKEN_ISSUER": self.issuer,
            "TOKEN_JWKS_URL": self.jwks_url,
            "TOKEN_AUDIENCES": self.client_id,
            "TOKEN_FIRST_PARTY_CLIENTS": self.client_id,
            "TOKEN_SCOPE_PREFIX": "",
            "TOKEN_NEW_IDENTITY": "link-by-email",
        }

    def ids_env(self) -> dict[str, str]:
        """The pool's ids, for a shell (`scripts/dev env`) and the tests."""
        return {"LOCAL_USER_POOL_ID": self.pool_id, "LOCAL_USER_POOL_CLIENT_ID": self.client_id}


def _cognito(moto_url: str, attempts: int = 3) -> Any:
    return aws_client("cognito-idp", moto_url, attempts=attempts)


def setup_user_pool(moto_url: str) -> LocalPool:
    """The pool `local-users` (users sign in with their email) and its public app client
    `local-app` (password and refresh-token flows, no secret): found, or created."""
    found = find_user_pool(moto_url)
    if found is not None:
        return found
    idp = _cognito(moto_url)
    pool_id = next((p["Id"] for p in _pools(idp) if p["Name"] == POOL_NAME), None)
    if pool_id is None:
        pool_id = idp.create_user_pool(PoolName=POOL_NAME, UsernameAttributes=["email"])["UserPool"]["Id"]
    client = idp.create_user_pool_client(UserPoolId=pool_id, ClientName=CLIENT_NAME, GenerateSecret=False,
                                         ExplicitAuthFlows=CLIENT_FLOWS)["UserPoolClient"]
    return LocalPool(moto_url, pool_id, client["ClientId"])


def _pools(idp: Any) -> list[dict[str, Any]]:
    pools: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"MaxResults": 60}
    while True:
        page = idp.list_user_pools(**kwargs)
        pools += page.get("UserPools", [])
        if not page.get("NextToken"):
            return pools
        kwargs["NextToken"] = page["NextToken"]


def find_user_pool(moto_url: str) -> LocalPool | None:
    """The local pool and app client in the moto at `moto_url`, or None when that moto does not
    answer or has none (no stack runs there)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        idp = _cognito(moto_url, attempts=1)
        for pool in _pools(idp):
            if pool["Name"] != POOL_NAME:
                continue
            clients = idp.list_user_pool_clients(UserPoolId=pool["Id"], MaxResults=60)["UserPoolClients"]
            for client in clients:
                if client.get("ClientName") == CLIENT_NAME:
                    return LocalPool(moto_url, pool["Id"], client["ClientId"])
    except (BotoCoreError, ClientError):
        return None
    return None


def create_demo_user(pool: LocalPool, email: str, password: str = DEMO_PASSWORD) -> dict[str, Any]:
    """A confirmed user of the pool with a verified `email` and a permanent `password`; signs
    it in once and checks that the access token is what the functions are told to accept.
    Returns the token's claims."""
    idp = _cognito(pool.moto_url)
    try:
        idp.admin_get_user(UserPoolId=pool.pool_id, Username=email)
    except idp.exceptions.UserNotFoundException:
        idp.admin_create_user(UserPoolId=pool.pool_id, Username=email, MessageAction="SUPPRESS",
                              UserAttributes=[{"Name": "email", "Value": email},
                                              {"Name": "email_verified", "Value": "true"}])
    idp.admin_set_user_password(UserPoolId=pool.pool_id, Username=email, Password=password, Permanent=True)
    claims = jwt_claims(sign_in(pool, email, password))
    expected = {"iss": pool.issuer, "client_id": pool.client_id, "token_use": "access"}
    wrong = {k: claims.get(k) for k, v in expected.items() if claims.get(k) != v}
    if wrong:
        raise StackError(f"moto's Cognito signs access tokens otherwise than the functions are told: {wrong}, "
                         f"expected {expected}")
    return claims


def sign_in(pool: LocalPool, email: str, password: str = DEMO_PASSWORD) -> str:
    """The access token of a user of the pool, from `InitiateAuth` (USER_PASSWORD_AUTH)."""
    idp = _cognito(pool.moto_url)
    result = idp.initiate_auth(AuthFlow="USER_PASSWORD_AUTH", ClientId=pool.client_id,
                               AuthParameters={"USERNAME": email, "PASSWORD": password})
    return result["AuthenticationResult"]["AccessToken"]


def jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (for showing and checking what moto issued)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def sign_in_example(pool: LocalPool, api_url: str, email: str, password: str = DEMO_PASSWORD) -> str:
    """Shell lines that sign in to the pool as `email` (moto's InitiateAuth, an unsigned JSON
    call) and call GET /api/users/@me/ with the access token: curl and python3 only."""
    body = json.dumps({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": pool.client_id,
                       "AuthParameters": {"USERNAME": email, "PASSWORD": password}}, separators=(",", ":"))
    extract = 'import json,sys; print(json.load(sys.stdin)["AuthenticationResult"]["AccessToken"])'
    return (
        f"TOKEN=$(curl -s {pool.moto_url}/ -H 'Content-Type: application/x-amz-json-1.1' \\\n"
        f"    -H 'X-Amz-Target: {TARGET_PREFIX}.InitiateAuth' \\\n"
        f"    -d {shlex.quote(body)} \\\n"
        f"  | python3 -c {shlex.quote(extract)})\n"
        f"curl -s {api_url}/api/users/@me/ -H \"Authorization: Bearer $TOKEN\""
    )


def moto_private_key_files() -> tuple[Path, Path]:
    """moto's token-signing key (the package's cognitoidp/resources/jwks-private.json[.gz], the
    same for every pool), written as a complete private JWK (moto's has only n, e and d: the
    primes are recovered) and as PKCS#1 DER, so that tests can sign tokens the functions take
    for moto's. Returns (jwk file, der file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    jwk = _moto_private_jwk()
    if jwk.get("kty") != "RSA" or not {"n", "e", "d"} <= set(jwk):
        raise StackError(f"moto's Cognito signing key is not an RSA private JWK: {sorted(jwk)}")

    def num(name: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(jwk[name] + "=" * (-len(jwk[name]) % 4)), "big")

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    n, e, d = num("n"), num("e"), num("d")
    p, q = rsa.rsa_recover_prime_factors(n, e, d)
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                                    rsa.RSAPublicNumbers(e, n))
    key = numbers.private_key()
    complete = dict(jwk, p=b64(p), q=b64(q), dp=b64(numbers.dmp1), dq=b64(numbers.dmq1), qi=b64(numbers.iqmp))
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    LOCAL_DIR.mkdir(parents=True, exist_ok=True)
    _write(PRIVATE_JWK_FILE, (json.dumps(complete, indent=2, sort_keys=True) + "\n").encode())
    _write(PRIVATE_DER_FILE, der)
    return PRIVATE_JWK_FILE, PRIVATE_DER_FILE


def _moto_private_jwk() -> dict[str, Any]:
    spec = importlib.util.find_spec("moto")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("moto is not installed in this Python (run scripts/dev, which installs requirements.txt)")
    resources = Path(list(spec.submodule_search_locations)[0]) / "cognitoidp" / "resources"
    for name, read in (("jwks-private.json.gz", lambda p: gzip.decompress(p.read_bytes())),
                       ("jwks-private.json", lambda p: p.read_bytes())):
        if (resources / name).exists():
            return json.loads(read(resources / name))
    raise StackError(f"moto's Cognito signing key is not in {resources.relative_to(ROOT) if resources.is_relative_to(ROOT) else resources}")


def _write(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    scratch.write_bytes(data)
    scratch.replace(path)
