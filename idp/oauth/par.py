"""Pushed authorization requests (RFC 9126), with signed request objects at push (RFC 9101).

``push`` authenticates the client exactly as the token endpoint does, validates the request
as the authorization endpoint would (Authlib's checks, ours, PKCE S256) and stores it; the
client then sends only ``request_uri`` and ``client_id`` to /authorize, where ``claim``
redeems it once. Clients of the ``fapi2`` profile must push (FAPI 2.0 Security Profile §5.3.1).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Error, OAuth2Request
from flask import current_app
from sqlalchemy import select, update

from idp.audit.services import Origin, record
from idp.clients.models import Client, ClientProfile
from idp.db import utcnow
from idp.extensions import db
from idp.oauth.models import PushedAuthorization
from idp.oauth.request_object import InvalidRequestObject, verify_request_object
from idp.security import digest, new_secret

REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
# What ``new_secret("", 32)`` makes, with room to spare; anything longer is not ours.
MAX_REQUEST_URI_LENGTH = len(REQUEST_URI_PREFIX) + 64
# RFC 9449 §10: a JWK SHA-256 thumbprint, base64url without padding.
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")
# Client authentication parameters: never part of the stored authorization request.
CLIENT_AUTH_PARAMS = ("client_assertion", "client_assertion_type", "client_secret")
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


class PushError(Exception):
    """A refused push: ``error`` is the RFC 6749 §5.2 / RFC 9126 §2.3 code."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


class InvalidRequestURI(Exception):
    """A ``request_uri`` at /authorize that is unknown, expired, used or another client's."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass
class Pushed:
    """What the PAR endpoint answers (RFC 9126 §2.2)."""

    request_uri: str
    expires_in: int
    row: PushedAuthorization = field(repr=False)


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]


def _server() -> Any:
    from idp.oauth import authorization

    return authorization


def uses_par(client: Client) -> bool:
    """Whether ``client`` must push its authorization requests (RFC 9126 §6 metadata)."""
    return client.profile is ClientProfile.FAPI2


def push(
    request: OAuth2Request, *, proof_jkt: str | None = None, origin: Origin | None = None
) -> Pushed:
    """Authenticate the client, validate its authorization request (form parameters, or the
    claims of a signed ``request`` object) and store it.

    ``proof_jkt`` is the thumbprint of a verified DPoP proof sent with the push (RFC 9449
    §10.1), if any: it must equal a ``dpop_jkt`` parameter and is stored as ``dpop_jkt``.
    Returns the new ``request_uri``; raises ``PushError``."""
    client = _authenticate(request)
    form = {k: v for k, v in request.form.items() if k not in CLIENT_AUTH_PARAMS}
    if "request_uri" in form:
        raise PushError("invalid_request", "'request_uri' cannot be pushed (RFC 9126 §2.1).")
    sent_client_id = form.get("client_id")
    if sent_client_id is not None and sent_client_id != client.client_id:
        raise PushError("invalid_request", "'client_id' is not the authenticated client.")
    signed = "request" in form
    if signed:
        try:
            params = verify_request_object(
                form["request"],
                client=client,
                issuer=str(_cfg("ISSUER")),
                max_length=int(_cfg("MAX_JWT_LENGTH")),
                leeway=int(_cfg("CLOCK_SKEW")),
            )
        except InvalidRequestObject as exc:
            raise PushError(exc.error, exc.description) from None
    else:
        params = dict(form)
    params["client_id"] = client.client_id
    _bind_dpop(params, proof_jkt)
    _validate(params)
    secret = new_secret("", 32)
    ttl = int(_cfg("PAR_TTL"))
    row = PushedAuthorization(
        request_uri_hash=digest(secret),
        client_id=client.id,
        params=params,
        expires_at=utcnow() + dt.timedelta(seconds=ttl),
    )
    db.session.add(row)
    record(
        "oauth:par:push",
        actor=f"client:{client.client_id}",
        subject=f"client:{client.client_id}",
        origin=origin,
        details={"request_object": signed, "dpop_jkt": "dpop_jkt" in params, "expires_in": ttl},
    )
    db.session.commit()
    return Pushed(REQUEST_URI_PREFIX + secret, ttl, row)


def _authenticate(request: OAuth2Request) -> Client:
    try:
        client: Client = _server().authenticate_client(request, AUTH_METHODS, endpoint="par")
    except InvalidClientError as error:
        # RFC 6749 §5.2 allows 401 for every failed client authentication: always here.
        raise PushError(
            "invalid_client",
            error.get_error_description() or "Client authentication failed.",
            401,
            {"WWW-Authenticate": 'Basic realm="corp-id", error="invalid_client"'},
        ) from None
    except OAuth2Error as error:
        raise PushError(
            error.error or "invalid_request",
            error.get_error_description() or "The request is invalid.",
        ) from None
    return client


def _bind_dpop(params: dict[str, str], proof_jkt: str | None) -> None:
    sent = params.get("dpop_jkt")
    if sent is not None and not _JKT.fullmatch(sent):
        raise PushError("invalid_request", "'dpop_jkt' must be a base64url SHA-256 thumbprint.")
    if proof_jkt is not None:
        if sent is not None and sent != proof_jkt:
            raise PushError("invalid_dpop_proof", "'dpop_jkt' does not match the DPoP proof's key.")
        params["dpop_jkt"] = proof_jkt


def _validate(params: dict[str, str]) -> None:
    """The checks /authorize runs (Authlib's grant, PKCE S256, idp.oauth.checks)."""
    from idp.oauth.server import StoredOAuth2Request

    request = StoredOAuth2Request(params, str(_cfg("ISSUER")) + "/authorize")
    try:
        _server().get_consent_grant(request)
    except OAuth2Error as error:
        raise PushError(
            error.error or "invalid_request",
            error.get_error_description() or "The authorization request is invalid.",
        ) from None


def claim(request_uri: str, *, client_id: str | None) -> tuple[Client, dict[str, str]]:
    """Redeem a pushed request at /authorize, once: returns its client and stored parameters.

    Single-use by compare-and-set on ``used_at`` (two racing redemptions cannot both win);
    refused when expired or pushed by another client than ``client_id``. Raises
    ``InvalidRequestURI``."""
    if (
        not isinstance(request_uri, str)
        or not request_uri.startswith(REQUEST_URI_PREFIX)
        or len(request_uri) > MAX_REQUEST_URI_LENGTH
    ):
        raise InvalidRequestURI("This request_uri was not issued by Corp ID.")
    secret = request_uri[len(REQUEST_URI_PREFIX) :]
    row = db.session.scalars(
        select(PushedAuthorization).where(PushedAuthorization.request_uri_hash == digest(secret))
    ).first()
    if row is None:
        raise InvalidRequestURI(
            "This sign-in request is not known. Start again from the site you came from."
        )
    if not client_id:
        raise InvalidRequestURI("Send client_id with the request_uri (RFC 9126 §4).")
    client = _server().query_client(client_id)
    if client is None or client.id != row.client_id:
        raise InvalidRequestURI("This request_uri was pushed by another client.")
    now = utcnow()
    claimed = db.session.execute(
        update(PushedAuthorization)
        .where(
            PushedAuthorization.id == row.id,
            PushedAuthorization.used_at.is_(None),
            PushedAuthorization.expires_at > now,
        )
        .values(used_at=now)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        db.session.rollback()
        raise InvalidRequestURI(
            "This sign-in request has expired or was already used. "
            "Start again from the site you came from."
        )
    params = dict(row.params)
    db.session.commit()
    return client, params
