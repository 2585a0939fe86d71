"""DPoP (RFC 9449) for tests that talk to the token endpoint by hand: a client's proof key
that signs proofs and retries once with the server's nonce (``use_dpop_nonce``)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import jwskate
import requests


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ProofKey:
    """An ES256 DPoP key; ``post`` sends a form with a fresh proof (and the nonce if asked)."""

    def __init__(self) -> None:
        self.key = jwskate.Jwk.generate(alg="ES256")
        self.nonce: str | None = None

    @property
    def jkt(self) -> str:
        return str(self.key.public_jwk().thumbprint())

    def proof(self, method: str, url: str, **claims: Any) -> str:
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.public_jwk().to_dict()}
        body: dict[str, Any] = {
            "jti": secrets.token_urlsafe(12),
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
        }
        if self.nonce:
            body["nonce"] = self.nonce
        body.update(claims)
        signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(body).encode())}"
        signature = self.key.sign(signing_input.encode(), alg="ES256")
        return f"{signing_input}.{_b64(bytes(signature))}"

    def post(self, url: str, data: dict[str, Any], **kwargs: Any) -> requests.Response:
        """POST ``data`` with a proof; once more with the server's nonce if it asks for one.
        ``data`` may be a callable returning the form (a fresh client assertion per try)."""
        for _ in range(2):
            form = data() if callable(data) else data
            headers = {"DPoP": self.proof("POST", url)}
            response = requests.post(url, data=form, headers=headers, timeout=15, **kwargs)
            nonce = response.headers.get("DPoP-Nonce")
            if nonce:
                self.nonce = nonce
            if response.status_code != 400 or response.json().get("error") != "use_dpop_nonce":
                return response
        return response
