"""Introspection (RFC 7662), revocation (RFC 7009) and userinfo (OIDC Core 5.3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from flask import current_app

from idp.audit.services import record
from idp.clients.models import Client
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.claims import user_claims
from idp.oauth.grants import ALL_AUTH_METHODS
from idp.oauth.models import Grant
from idp.security import REFRESH_TOKEN_PREFIX


@dataclass
class PresentedToken:
    """A token presented for introspection or revocation: an access token's claims, or a
    refresh token's record."""

    client_id: str
    access_claims: dict[str, Any] | None = None
    refresh: tokens.RefreshTokenRecord | None = None

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def is_expired(self) -> bool:
        return self.refresh.is_expired() if self.refresh else False

    def is_revoked(self) -> bool:
        if self.refresh is not None:
            return self.refresh.is_revoked() or self.refresh.grant.expires_at <= tokens.utcnow()
        return not tokens.is_access_token_live(self.access_claims or {})


def find_presented_token(token: Any, hint: str | None) -> PresentedToken | None:
    if (
        not isinstance(token, str)
        or not token
        or len(token) > int(current_app.config["IDP"]["MAX_JWT_LENGTH"])
    ):
        return None
    if token.startswith(REFRESH_TOKEN_PREFIX):
        found = tokens.find_refresh_token(token)
        if found is None:
            return None
        client = db.session.get(Client, found.grant.client_id)
        return PresentedToken(client.client_id if client else "", refresh=found)
    claims = tokens.decode_access_token(token)
    if claims is None:
        return None
    return PresentedToken(str(claims.get("client_id", "")), access_claims=claims)


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = [m for m in ALL_AUTH_METHODS if m != "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        return find_presented_token(token_string, token_type_hint)

    def check_permission(
        self, token: PresentedToken, client: Client, request: OAuth2Request
    ) -> bool:
        # Only the client a token was issued to learns anything about it.
        return token.check_client(client)

    def introspect_token(self, token: PresentedToken) -> dict[str, Any]:
        if token.refresh is not None:
            grant = token.refresh.grant
            answer: dict[str, Any] = {
                "active": True,
                "token_type": "refresh_token",
                "client_id": token.client_id,
                "scope": grant.scope,
                "exp": int(grant.expires_at.timestamp()),
                "iss": current_app.config["IDP"]["ISSUER"],
                **(
                    {"authorization_details": grant.authorization_details}
                    if grant.authorization_details
                    else {}
                ),
            }
            if grant.cnf_jkt:
                answer["cnf"] = {"jkt": grant.cnf_jkt}
            return answer
        return access_token_introspection(token.access_claims or {})


def access_token_introspection(claims: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7662 answer for a live access token with these claims (a DPoP-bound one says
    so, with its ``cnf``: RFC 9449 §6.2)."""
    bound = isinstance(claims.get("cnf"), dict)
    payload: dict[str, Any] = {"active": True, "token_type": "DPoP" if bound else "Bearer"}
    for name in INTROSPECTED_CLAIMS:
        if name in claims:
            payload[name] = claims[name]
    gid = claims.get("gid")
    if gid and "corp" in str(claims.get("scope", "")).split():
        payload.update(_corp_claim(gid))
    return payload


INTROSPECTED_CLAIMS = (
    "scope",
    "client_id",
    "sub",
    "aud",
    "iss",
    "exp",
    "iat",
    "jti",
    "auth_time",
    "acr",
    "amr",
    "sid",
    "act",
    "cnf",
    "authorization_details",
)


def _corp_claim(gid: str) -> dict[str, Any]:
    from sqlalchemy import select

    grant = db.session.scalars(select(Grant).where(Grant.gid == gid)).first()
    if grant is None:
        return {}
    principal = tokens.principal_for_grant(grant)
    if principal is None:
        return {}
    client = db.session.get(Client, grant.client_id)
    if client is None:
        return {}
    claims = user_claims(principal, client, "corp", "userinfo")
    return {"corp": claims["corp"]} if "corp" in claims else {}


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ALL_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> PresentedToken | None:
        return find_presented_token(token_string, token_type_hint)

    def revoke_token(self, token: PresentedToken, request: OAuth2Request) -> None:
        if token.refresh is not None:
            # Revoking a refresh token ends its whole family, access tokens included.
            tokens.revoke_grant(
                token.refresh.grant.id,
                reason="revoked_by_client",
                actor=f"client:{token.client_id}",
            )
        elif token.access_claims is not None:
            tokens.revoke_access_token(token.access_claims)
            record(
                "oauth:token:revoke",
                actor=f"client:{token.client_id}",
                subject=f"jti:{token.access_claims.get('jti')}",
            )
            db.session.commit()


def userinfo_claims(access_token: str) -> dict[str, Any] | None:
    """Claims for the userinfo endpoint, or None when the token is not an active user token
    with the ``openid`` scope."""
    claims = tokens.check_access_token(access_token)
    return None if claims is None else userinfo_for(claims)


def userinfo_for(claims: dict[str, Any]) -> dict[str, Any] | None:
    """Userinfo claims for an active access token's ``claims`` (idp.oauth.resource), or None
    when it is not a user token with the ``openid`` scope."""
    if not claims.get("gid"):
        return None
    if "openid" not in str(claims.get("scope", "")).split():
        return None
    from sqlalchemy import select

    grant = db.session.scalars(select(Grant).where(Grant.gid == claims["gid"])).first()
    if grant is None:
        return None
    principal = tokens.principal_for_grant(grant)
    client = db.session.get(Client, grant.client_id)
    if principal is None or client is None or not client.is_active:
        return None
    return user_claims(principal, client, str(claims.get("scope", "")), "userinfo")
