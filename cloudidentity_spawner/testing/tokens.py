"""A ServiceAccount token issuer like kube-apiserver's: RS256 tokens, and the issuer discovery
document and keys (JWKS) that an object store or cloud fetches to check them.

kube-apiserver signs ServiceAccount tokens with one key and serves
``/.well-known/openid-configuration`` and ``/openid/v1/jwks`` (the
``system:service-account-issuer-discovery`` role lets anyone read them). The keys here also
carry an ``x5c`` certificate chain, which Ceph RADOS Gateway requires to check a signature.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
import uuid
from collections.abc import Sequence
from functools import cached_property
from typing import Any

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/openid/v1/jwks"


def _b64url_uint(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


class TokenIssuer:
    """Signs tokens for one issuer URL (set once the server knows its port). The key is made
    when first needed: most emulated clusters never issue a token."""

    def __init__(self, issuer: str = ""):
        self.issuer = issuer

    @cached_property
    def key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric import rsa

        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @cached_property
    def kid(self) -> str:
        from cryptography.hazmat.primitives import serialization

        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()

    @cached_property
    def certificate(self) -> Any:
        """A self-signed certificate of the key (the JWKS ``x5c``)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "service-account-issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365)).sign(self.key, hashes.SHA256()))

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}{JWKS_PATH}",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def jwks(self) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        numbers = self.key.public_key().public_numbers()
        cert = base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()
        return {"keys": [{"use": "sig", "kty": "RSA", "kid": self.kid, "alg": "RS256",
                          "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e), "x5c": [cert]}]}

    def issue(self, namespace: str, service_account: dict[str, Any], audiences: Sequence[str], expiration_seconds: int,
              pod: dict[str, Any] | None = None) -> tuple[str, int]:
        """A token for *service_account* (the stored object), bound to *pod* if given, as the
        TokenRequest API and the kubelet's projected volumes issue them: ``(token, exp)``."""
        now = int(time.time())
        exp = now + expiration_seconds
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account['metadata']['name']}",
            "aud": list(audiences),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account["metadata"]["name"], "uid": service_account["metadata"]["uid"]},
                **({"pod": {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}} if pod else {}),
            },
        }
        import jwt

        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid}), exp
