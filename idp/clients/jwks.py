"""Fetching a client's registered ``jwks_uri`` (private_key_jwt), bounded in time and size."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from authlib.oauth2.rfc6749 import InvalidClientError

_MAX_BYTES = 64 * 1024
_TTL = 300.0
_cache: dict[str, tuple[float, dict[str, Any]]] = {}


def fetch_client_jwks(uri: str) -> dict[str, Any]:
    """The JWKS at ``uri`` (https only), cached per process for five minutes.

    Raises ``InvalidClientError`` when it cannot be fetched or is not a public key set."""
    cached = _cache.get(uri)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    if not uri.startswith("https://"):
        raise InvalidClientError(description="The client's jwks_uri must be https.")
    try:
        with requests.get(uri, timeout=(2, 3), stream=True, allow_redirects=False) as response:
            response.raise_for_status()
            body = response.raw.read(_MAX_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise InvalidClientError(description="The client's jwks_uri could not be fetched.") from exc
    if len(body) > _MAX_BYTES:
        raise InvalidClientError(description="The client's JWKS is too large.")
    try:
        jwks = json.loads(body)
    except ValueError:
        raise InvalidClientError(description="The client's JWKS is not JSON.") from None
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or any(
        not isinstance(k, dict) or k.get("kty") == "oct" or "d" in k for k in keys
    ):
        raise InvalidClientError(description="The client's JWKS is not a public key set.")
    _cache[uri] = (time.monotonic() + _TTL, jwks)
    return jwks
