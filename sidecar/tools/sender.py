"""Send a correctly signed delivery over mTLS, the way Meta does (send-test, demo)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from sidecar.checks.signature import sign
from sidecar.config import Config
from sidecar.errors import UsageError
from sidecar.events import JSONValue
from sidecar.tls.client_pair import load_client_pair
from sidecar.secret import Secret

__all__ = ["ClientTLS", "default_client_tls", "listener_url", "send_delivery", "SendResult"]


@dataclass(frozen=True, slots=True)
class ClientTLS:
    cert: Path | None
    key: Path | None
    ca: Path | None  # trusts the server with this CA; None: system roots

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            load_client_pair(ctx, self.cert, self.key)
        return ctx


@dataclass(frozen=True, slots=True)
class SendResult:
    status: int
    body: str


def default_client_tls(config: Config, cert: Path | None, key: Path | None,
                       ca: Path | None) -> ClientTLS:
    """Default to the pair ``certs dev`` writes next to the server certificate."""
    cert_dir = config.tls.cert_file.parent
    if cert is None:
        cert = cert_dir / "client.pem"
    if key is None:
        key = cert_dir / "client.key"
    if ca is None:
        dev_ca = cert_dir / "ca.pem"
        ca = dev_ca if dev_ca.exists() else config.tls.client_ca_files[0]
    for what, path in (("--cert", cert), ("--key", key), ("--ca", ca)):
        if not path.exists():
            raise UsageError(f"{what} {path}: file not found (run `sidecar certs dev -o DIR` "
                             "or pass --cert/--key/--ca)")
    return ClientTLS(cert, key, ca)


def listener_url(config: Config) -> str:
    host = config.listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{config.listen.port}{config.listen.path}"


def send_delivery(url: str, payload: JSONValue, *, secret: Secret, tls: ClientTLS,
                  timeout_s: float = 10.0) -> SendResult:
    body = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    headers = {"content-type": "application/json", "x-hub-signature-256": sign(secret, body),
               "user-agent": "sidecar-send-test"}
    try:
        with httpx.Client(verify=tls.context(), timeout=timeout_s, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise UsageError(f"could not deliver to {url}: {type(exc).__name__} "
                         "(is the sidecar running, and is this client certificate allowed?)"
                         ) from exc
    return SendResult(response.status_code, response.text[:500])
