"""Protocol state: authorization codes, grants (token families), refresh tokens, revocations,
replay caches and rate-limit counters. Every bearer secret is stored as its SHA-256 digest."""

from __future__ import annotations

import datetime as dt
from typing import Any

from authlib.oidc.core import AuthorizationCodeMixin
from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, utcnow


class AuthorizationCode(Base, AuthorizationCodeMixin):
    __tablename__ = "authorization_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    # The company the person acts through under a third-party authorisation (None: their own).
    agent_company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE")
    )
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL")
    )
    redirect_uri: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)
    nonce: Mapped[str | None] = mapped_column(String(512))
    code_challenge: Mapped[str] = mapped_column(String(128))
    code_challenge_method: Mapped[str] = mapped_column(String(8))
    auth_time: Mapped[dt.datetime]
    acr: Mapped[str | None] = mapped_column(String(64))
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The OIDC `claims` request parameter, parsed.
    claims_request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # RFC 9396 authorization details granted with the code (validated, as JSON).
    authorization_details: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # RFC 9449 §10: the DPoP key thumbprint the code is bound to (PAR or authorize dpop_jkt).
    dpop_jkt: Mapped[str | None] = mapped_column(String(64))
    # The consent the person gave (or relied on) for this authorization.
    consent_id: Mapped[int | None] = mapped_column(ForeignKey("consents.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_acr(self) -> str | None:
        return self.acr

    def get_amr(self) -> list[str]:
        return list(self.amr)


class Grant(Base):
    """What one authorization produced: a family of access and refresh tokens.

    Revoking the grant (directly, by refresh-token reuse, or because the person, security key,
    membership, consent or session ended) makes every token of the family inactive at once.
    """

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Opaque identifier carried in access tokens (claim "gid").
    gid: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    company_id: Mapped[int] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    # Set when the person acts for ``company_id`` as a member of this agent company (a
    # third-party authorisation); tokens then carry an ``act`` claim.
    agent_company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[int | None] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="SET NULL"), index=True
    )
    security_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("security_keys.id", ondelete="SET NULL"), index=True
    )
    scope: Mapped[str] = mapped_column(Text)
    claims_request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # RFC 9396 authorization details granted (in token responses, introspection, tokens).
    authorization_details: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # RFC 9449: thumbprint of the DPoP key every token of this family is bound to (cnf.jkt).
    cnf_jkt: Mapped[str | None] = mapped_column(String(64))
    # The consent this family was issued under; revoking it revokes the grant.
    consent_id: Mapped[int | None] = mapped_column(
        ForeignKey("consents.id", ondelete="SET NULL"), index=True
    )
    # The authorization code redeemed for this family (None for other grant types, or once the
    # code is purged): presented again, the code revokes the family (RFC 6749 §4.1.2). Written
    # with the grant, so redeeming a code updates nothing after.
    code_id: Mapped[int | None] = mapped_column(
        ForeignKey("authorization_codes.id", ondelete="SET NULL"), index=True
    )
    auth_time: Mapped[dt.datetime]
    acr: Mapped[str | None] = mapped_column(String(64))
    amr: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    # Set when the token was exchanged for a new one; presenting it again revokes the family.
    rotated_at: Mapped[dt.datetime | None]


class RevokedAccessToken(Base):
    """Access tokens revoked one by one (RFC 7009), kept until they would have expired."""

    __tablename__ = "revoked_access_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class ReplayEntry(Base):
    """Single-use values (client assertion jti...) when Redis is not configured."""

    __tablename__ = "replay_entries"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)


class RateCounter(Base):
    """Fixed-window rate-limit counters when Redis is not configured."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer, default=0)


class PendingAuthorization(Base):
    """An authorization request waiting for sign-in, company choice or consent.

    The browser holds only an opaque handle (in its signed session cookie); login and consent
    POSTs act on this record, never on parameters the browser sends back."""

    __tablename__ = "pending_authorizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    handle_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    # The validated request parameters, single-valued.
    params: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    company_id: Mapped[int | None] = mapped_column(ForeignKey("companies.id", ondelete="CASCADE"))
    # The agent company chosen with company_id ("B for A"), if any.
    agent_company_id: Mapped[int | None] = mapped_column(
        ForeignKey("companies.id", ondelete="CASCADE")
    )
    consented_at: Mapped[dt.datetime | None]
    completed_at: Mapped[dt.datetime | None]


class PushedAuthorization(Base):
    """A pushed authorization request (RFC 9126): the validated parameters a client sent to the
    PAR endpoint, redeemed once at the authorization endpoint by its ``request_uri``
    (``urn:ietf:params:oauth:request_uri:<secret>``, stored as the secret's digest)."""

    __tablename__ = "pushed_authorizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_uri_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    # The validated request parameters (from the form or the signed request object),
    # single-valued, dpop_jkt included when bound.
    params: Mapped[dict[str, str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]


class BackchannelDelivery(Base):
    """A back-channel logout notice owed to one client for one ended session.

    Committed with the logout, then sent off the request and retried with backoff
    (``idp.oauth.backchannel``). The logout token itself is not stored: it is short-lived, so
    each attempt signs a fresh one from ``sub`` and ``sid``. ``next_attempt_at`` doubles as a
    lease: a worker claims a due record by moving it forward (compare-and-set), so two workers
    never send the same attempt. None once delivered or given up."""

    __tablename__ = "backchannel_deliveries"
    __table_args__ = (UniqueConstraint("client_id", "sid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    # The ended session's public sid and the subject this client knows the person by.
    sid: Mapped[str] = mapped_column(String(64))
    sub: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None]
    gave_up_at: Mapped[dt.datetime | None]
    # Why the last attempt failed (status code or error class; never the token).
    last_error: Mapped[str | None] = mapped_column(String(200))
