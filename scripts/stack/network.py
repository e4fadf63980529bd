"""The latency model (scripts/latency-proxy.py): every AWS endpoint a function calls behind TLS
and a round trip's delay, as `scripts/dev bench --network` measures the functions with it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import LOCAL_DIR, LOG_DIR, ROOT, StackError
from .services import Services
from .supervisor import Child, Supervisor

PROXY = ROOT / "scripts" / "latency-proxy.py"
CERT_DIR = LOCAL_DIR / "network-tls"

# The endpoints behind the proxy, each on a port of its own (so each is counted apart, and
# each is a connection of its own as it is on AWS), and the emulator behind each.
ENDPOINTS = {
    "dynamodb": "AWS_ENDPOINT_URL_DYNAMODB",
    "secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "sesv2": "AWS_ENDPOINT_URL_SESV2",
    "cognito": "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
}
# The issuer's keys (TOKEN_JWKS_URL) are another host on AWS (and another client here).
JWKS = "jwks"


def openssl(cwd: Path, *args: str) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise StackError(f"openssl {' '.join(args[:2])}: {out.stderr.strip()}")


def certificates() -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key): a certificate authority of this checkout, made once
    in .local/network-tls, and a certificate for localhost signed by it. The functions trust
    the authority through AWS_CA_BUNDLE and TOKEN_CA_BUNDLE, as they would a private one."""
    ca, cert, key = CERT_DIR / "ca.pem", CERT_DIR / "server.pem", CERT_DIR / "server.key"
    if ca.exists() and cert.exists() and key.exists():
        return ca, cert, key
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl(CERT_DIR, "req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650",
            "-subj", "/CN=local latency model CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl(CERT_DIR, "req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (CERT_DIR / "server.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl(CERT_DIR, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "3650", "-extfile", "server.ext")
    return ca, cert, key


@dataclass
class Network:
    """A running latency proxy."""

    child: Child
    control_port: int
    ports: dict[str, int]
    ca: Path

    def _call(self, method: str, path: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def set_rtt(self, ms: float) -> None:
        self._call("POST", f"/rtt?ms={ms}")

    def stats(self) -> dict[str, dict[str, int]]:
        doc = self._call("GET", "/stats")
        doc.pop("rtt_ms", None)
        return doc

    def reset(self) -> None:
        self._call("POST", "/reset")

    def url(self, name: str) -> str:
        return f"https://localhost:{self.ports[name]}"

    def function_env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with every AWS endpoint (and the issuer's keys) behind the proxy."""
        out = dict(env)
        for name, var in ENDPOINTS.items():
            if var in out:
                out[var] = self.url(name)
        out["AWS_CA_BUNDLE"] = str(self.ca)
        jwks = out.get("TOKEN_JWKS_URL")
        if jwks:
            path = jwks.split("://", 1)[1].split("/", 1)[1]
            out["TOKEN_JWKS_URL"] = f"{self.url(JWKS)}/{path}"
            out["TOKEN_CA_BUNDLE"] = str(self.ca)
        return out


def start_network(sup: Supervisor, services: Services, rtt_ms: float = 0.0) -> Network:
    """The proxy in front of DynamoDB Local and moto (every other endpoint)."""
    ca, cert, key = certificates()
    upstreams = {"dynamodb": services.dynamodb_port, "secretsmanager": services.moto_port,
                 "sesv2": services.moto_port, "cognito": services.moto_port, JWKS: services.moto_port}
    child = sup.start("latency proxy",
                      [sys.executable, str(PROXY), "--cert", str(cert), "--key", str(key), "--rtt-ms", str(rtt_ms),
                       *(f"{n}={p}" for n, p in upstreams.items())],
                      stdout=subprocess.PIPE)
    assert child.popen.stdout is not None
    line = child.popen.stdout.readline()
    try:
        ports = json.loads(line)
    except ValueError:
        raise StackError(f"the latency proxy did not start: {line!r}; see {LOG_DIR}") from None
    control = ports.pop("control")
    return Network(child, control, ports, ca)
