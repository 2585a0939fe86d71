"""Relying parties (OAuth clients)."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, str_enum, utcnow
from idp.security import matches


class AuthMethod(enum.StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name
    PRIVATE_KEY_JWT = "private_key_jwt"
    NONE = "none"


class SubjectType(enum.StrEnum):
    PUBLIC = "public"
    PAIRWISE = "pairwise"


class ClientStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class ClientProfile(enum.StrEnum):
    BASIC = "basic"
    FAPI2 = "fapi2"


class Client(Base, ClientMixin):
    __tablename__ = "clients"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 hex digest of the secret; secrets are 256-bit random so no slow hash is needed.
    secret_hash: Mapped[str | None] = mapped_column(String(64))
    auth_method: Mapped[AuthMethod] = mapped_column(str_enum(AuthMethod, "auth_method"))
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    backchannel_logout_uri: Mapped[str | None] = mapped_column(Text)
    jwks: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    jwks_uri: Mapped[str | None] = mapped_column(Text)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    id_token_alg: Mapped[str] = mapped_column(String(16), default="RS256")
    subject_type: Mapped[SubjectType] = mapped_column(
        str_enum(SubjectType, "subject_type"), default=SubjectType.PUBLIC
    )
    # Host of the redirect URIs (or a registered sector identifier) for pairwise subjects.
    sector_identifier: Mapped[str | None] = mapped_column(String(255))
    profile: Mapped[ClientProfile] = mapped_column(
        str_enum(ClientProfile, "client_profile"), default=ClientProfile.BASIC
    )
    status: Mapped[ClientStatus] = mapped_column(
        str_enum(ClientStatus, "client_status"), default=ClientStatus.ACTIVE
    )
    # Only members holding a live e-service authorisation for this client may sign in to it.
    members_authorised_only: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def is_public(self) -> bool:
        return self.auth_method is AuthMethod.NONE

    @property
    def is_active(self) -> bool:
        return self.status is ClientStatus.ACTIVE

    # --- Authlib's ClientMixin -----------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # OIDC requires redirect_uri on every request; no default is ever assumed.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        allowed = set(self.scopes)
        return " ".join(s for s in dict.fromkeys(scope.split()) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact string comparison (RFC 9700 §4.1.3), no normalisation.
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return self.is_active and matches(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # One registered method per client, for every endpoint.
        return self.is_active and method == self.auth_method.value

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types
