"""Bearer-secret helpers: generation with a recognisable prefix, SHA-256 storage, comparison."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# Prefixes make leaked secrets recognisable by secret scanners and in support tickets.
CLIENT_SECRET_PREFIX = "cis_"  # noqa: S105 - a prefix
AUTHORIZATION_CODE_PREFIX = "cic_"
REFRESH_TOKEN_PREFIX = "cir_"  # noqa: S105 - a prefix
INVITE_PREFIX = "cii_"
SESSION_PREFIX = "cil_"


def new_secret(prefix: str, nbytes: int = 32) -> str:
    """Return ``prefix`` + ``nbytes`` of randomness, URL-safe base64."""
    return prefix + secrets.token_urlsafe(nbytes)


def digest(secret: str) -> str:
    """SHA-256 hex digest: how every bearer secret is stored and looked up.

    Secrets are 256-bit random values, so a fast hash is right (no password hashing needed)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def matches(secret: str, stored_digest: str | None) -> bool:
    """Constant-time check of a presented secret against a stored digest."""
    if not stored_digest:
        return False
    return hmac.compare_digest(digest(secret), stored_digest)
