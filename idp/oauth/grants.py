"""Authlib hooks: the grants we allow, PKCE (S256 only, every client), OpenID ID tokens,
private_key_jwt client authentication and the token generator."""

from __future__ import annotations

import datetime as dt
import hmac
import time
import warnings
from typing import Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from flask import current_app, g
from joserfc.jwk import KeySet
from sqlalchemy import select, update

from idp import cache
from idp.authn.models import LoginSession
from idp.clients.models import Client, ClientProfile
from idp.data.categories import CATEGORIES
from idp.db import utcnow
from idp.extensions import db
from idp.keys import jws
from idp.oauth import dpop, tokens
from idp.oauth.claims import Principal, user_claims
from idp.oauth.discovery import CLIENT_ASSERTION_ALGS
from idp.oauth.models import AuthorizationCode
from idp.security import AUTHORIZATION_CODE_PREFIX, digest, new_secret

# FAPI 2.0 Security Profile §5.4.1: the client assertion algorithms for fapi2 clients.
FAPI2_ASSERTION_ALGS = ("ES256", "PS256")
ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]


# --- token generator --------------------------------------------------------------------------


def generate_token(
    grant_type: str,
    client: Client,
    user: Principal | None = None,
    scope: str | None = None,
    expires_in: int | None = None,
    include_refresh_token: bool = True,
) -> dict[str, Any]:
    # Set by DPoPBinding for this request's checked proof (RFC 9449 §5); never on the hot path.
    jkt: str | None = g.get("idp_dpop_jkt")
    access_token, ttl = tokens.issue_access_token(
        client=client, scope=scope or "", principal=user, jkt=jkt
    )
    token: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "DPoP" if jkt else "Bearer",
        "expires_in": ttl,
    }
    if scope:
        token["scope"] = scope
    if user is not None and user.grant_id is not None:
        grant = _grant_of(user)
        if grant is not None and jkt and grant_type == "authorization_code":
            grant.cnf_jkt = jkt  # the family's refresh tokens are bound to the key too
        if grant is not None and include_refresh_token:
            token["refresh_token"] = tokens.new_refresh_token(grant)
    if user is not None and user.authorization_details:
        token["authorization_details"] = user.authorization_details  # RFC 9396 §7
    if user is not None and user.grant_id is not None:
        receipt = _consent_receipt(user)
        if receipt:
            token["consent_receipt"] = receipt
    if user is not None:
        # Tokens for a person are audited (their grant is written anyway). Client-credentials
        # tokens are stateless by design and are not written one by one (see idp.oauth.tokens).
        tokens.audit_issue(
            client=client, principal=user, grant_type=grant_type, scope=scope, jkt=jkt
        )
    return token


# --- DPoP (RFC 9449) --------------------------------------------------------------------------


class DPoPBinding:
    """Grant extension: apply the token request's DPoP proof (checked, its ``jti`` spent,
    before the grant is looked at: ``AuthorizationServer.create_token_response``) once the
    grant is validated (client authenticated, code or refresh token found), before tokens
    are made.

    fapi2 clients must send one (ES256, PS256 or EdDSA, with a server nonce when
    IDP_DPOP_REQUIRE_NONCE_FAPI2); a code issued for a ``dpop_jkt`` and a bound refresh token
    need a proof by that key. The thumbprint is left in ``g.idp_dpop_jkt`` for
    ``generate_token``."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("before_create_token_response", self.check)

    def check(self, grant: Any) -> None:
        client: Client = grant.request.client
        proof: dpop.Proof | None = g.get("idp_dpop_proof")
        if client.profile is ClientProfile.FAPI2:
            if proof is None:
                raise dpop.invalid("FAPI 2.0 clients must send a DPoP proof to the token endpoint.")
            dpop.require(
                proof,
                algs=dpop.FAPI2_DPOP_ALGS,
                nonce=bool(_cfg("DPOP_REQUIRE_NONCE_FAPI2")),
            )
        jkt = proof.jkt if proof else None
        bound = _bound_jkt(grant.request)
        if bound is not None and jkt is None:
            raise dpop.invalid("This grant is bound to a DPoP key: send a DPoP proof by it.")
        if bound is not None and not hmac.compare_digest(bound, jkt or ""):
            raise InvalidGrantError("The DPoP proof key is not the key this grant is bound to.")
        g.idp_dpop_jkt = jkt


def _bound_jkt(request: OAuth2Request) -> str | None:
    """The key the code (``dpop_jkt``) or refresh token family (``cnf_jkt``) is bound to."""
    code = getattr(request, "authorization_code", None)
    if isinstance(code, AuthorizationCode):
        return code.dpop_jkt
    refresh = getattr(request, "refresh_token", None)
    if isinstance(refresh, tokens.RefreshTokenRecord):
        return refresh.grant.cnf_jkt
    return None


def keep_grant(grant: tokens.Grant, *, receipt: str | bool | None = False) -> None:
    """Hold the grant this token request works on for ``generate_token`` (the session's
    identity map holds objects weakly: without this, reading it again is a query), with its
    consent's latest ``receipt`` when it was read already (None: it has none; False: not
    read)."""
    g.idp_grant = grant
    g.idp_receipt = receipt


def _grant_of(principal: Principal) -> tokens.Grant | None:
    kept: tokens.Grant | None = g.get("idp_grant")
    if kept is not None and kept.id == principal.grant_id:
        return kept
    return db.session.get(tokens.Grant, principal.grant_id)


def _consent_receipt(principal: Principal) -> str | None:
    """The latest signed receipt of the consent a grant was issued under."""
    from idp.consent.receipts import latest_receipt

    grant = _grant_of(principal)
    if grant is None or grant.consent_id is None:
        return None
    kept = g.get("idp_receipt", False)
    if grant is g.get("idp_grant") and kept is not False:
        return kept if isinstance(kept, str) else None
    return latest_receipt(grant.consent_id)


# --- PKCE -------------------------------------------------------------------------------------


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256, required of every client (SECURITY.md), not only public ones."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "PKCE is required: send 'code_challenge' with 'code_challenge_method=S256'."
            )
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only 'code_challenge_method=S256' is supported.")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge(self, authorization_code: AuthorizationCode) -> str:
        return authorization_code.code_challenge

    def get_authorization_code_challenge_method(self, authorization_code: AuthorizationCode) -> str:
        return authorization_code.code_challenge_method


# --- authorization code -----------------------------------------------------------------------


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS

    def create_authorization_response(
        self, redirect_uri: str, grant_user: Principal
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        """Issue the code; the view turns the parameters into a query or form_post response
        with ``iss`` (RFC 9207)."""
        self.request.user = grant_user
        code = self.generate_authorization_code()
        self.save_authorization_code(code, self.request)
        params = [("code", code)]
        if self.request.payload.state:
            params.append(("state", self.request.payload.state))
        return 200, params, []

    def generate_authorization_code(self) -> str:
        return new_secret(AUTHORIZATION_CODE_PREFIX)

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        principal: Principal = request.user
        data = request.payload.data
        auth_time = dt.datetime.fromtimestamp(principal.auth_time or time.time(), dt.UTC)
        # Set by idp.oauth.authorize, which has the session at hand.
        session_id: int | None = getattr(request, "login_session_id", None)
        if session_id is None and principal.sid:
            session_id = db.session.scalar(
                select(LoginSession.id).where(LoginSession.sid == principal.sid)
            )
        db.session.add(
            AuthorizationCode(
                code_hash=digest(code),
                client_id=request.client.id,
                person_id=principal.person.id,
                company_id=principal.company.id,
                agent_company_id=principal.agent.id if principal.agent else None,
                session_id=session_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope or "",
                nonce=data.get("nonce"),
                code_challenge=data["code_challenge"],
                code_challenge_method=data.get("code_challenge_method", "S256"),
                auth_time=auth_time,
                acr=principal.acr,
                amr=list(principal.amr),
                claims_request=principal.claims_request,
                dpop_jkt=data.get("dpop_jkt"),
                # Set by idp.oauth.authorize: the consent relied on and the details granted.
                consent_id=getattr(request, "consent_id", None),
                authorization_details=getattr(request, "authorization_details", None),
                expires_at=utcnow() + dt.timedelta(seconds=int(_cfg("CODE_TTL"))),
            )
        )
        db.session.commit()

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        """Claim the code atomically for this redemption. A code presented again revokes the
        tokens issued from it (RFC 6749 §4.1.2); two racing redemptions cannot both win."""
        if (
            not isinstance(code, str)
            or not code.startswith(AUTHORIZATION_CODE_PREFIX)
            or len(code) > 100
        ):
            return None
        now = utcnow()
        # The happy path is one statement: claim the code if it is this client's, unused and
        # live, and read it back.
        row = db.session.scalars(
            update(AuthorizationCode)
            .where(
                AuthorizationCode.code_hash == digest(code),
                AuthorizationCode.client_id == client.id,
                AuthorizationCode.used_at.is_(None),
                AuthorizationCode.expires_at > now,
            )
            .values(used_at=now)
            .returning(AuthorizationCode)
            .execution_options(synchronize_session=False)
        ).first()
        if row is not None:
            return row
        db.session.rollback()
        used = db.session.scalars(
            select(AuthorizationCode).where(AuthorizationCode.code_hash == digest(code))
        ).first()
        if used is not None and used.client_id == client.id and used.used_at is not None:
            issued = db.session.scalars(
                select(tokens.Grant.id).where(tokens.Grant.code_id == used.id)
            ).first()
            if issued is not None:
                tokens.revoke_grant(issued, reason="code_reuse", actor=f"client:{client.client_id}")
        return None

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was spent when claimed, and its grant names it (code_id)."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Principal | None:
        code = authorization_code
        parties = tokens.load_parties(
            person_id=code.person_id,
            company_id=code.company_id,
            client_id=code.client_id,
            agent_company_id=code.agent_company_id,
            session_id=code.session_id,
            consent_id=code.consent_id,
        )
        if parties is None:
            return None
        security_key_id = None
        if code.session_id is not None:
            if parties.session is None or parties.session.ended_at is not None:
                return None
            security_key_id = parties.session.security_key_id
        consent_expires_at = None
        if code.consent_id is not None:
            from idp.consent.services import LIVE, status

            if parties.consent is None or status(parties.consent) != LIVE:
                return None  # revoked or expired since the code was issued: nothing released
            consent_expires_at = parties.consent.expires_at
        grant = tokens.create_grant(
            client=self.request.client,
            person=parties.person,
            company=parties.company,
            scope=code.scope,
            session_id=code.session_id,
            security_key_id=security_key_id,
            auth_time=code.auth_time,
            acr=code.acr,
            amr=list(code.amr),
            claims_request=code.claims_request,
            agent_company_id=code.agent_company_id,
            authorization_details=code.authorization_details,
            consent_id=code.consent_id,
            consent_expires_at=consent_expires_at,
            code_id=code.id,
        )
        principal = tokens.principal_from(parties, grant, client=self.request.client)
        if principal is None:
            return None
        keep_grant(grant, receipt=parties.consent_receipt)
        self.request.authorization_code = code
        return principal


class OpenIDConnectCode(OpenIDCode):
    """ID tokens for the code flow, signed through our JWS door with the client's algorithm.

    Prompt handling is ours (``idp.oauth.authorize``), so Authlib's prompt hook is not used."""

    def __init__(self) -> None:
        super().__init__(require_nonce=False)

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_create_token_response", self.process_token)

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return False

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        return build_id_token(
            client=request.client,
            principal=request.user,
            scope=token.get("scope", ""),
            nonce=getattr(request.authorization_code, "nonce", None),
            access_token=token.get("access_token"),
        )


def build_id_token(
    *, client: Client, principal: Principal, scope: str, nonce: str | None, access_token: str | None
) -> str:
    """Sign an ID token (OIDC Core 2) for ``principal`` with the client's algorithm."""
    alg = client.id_token_alg or "RS256"
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": _cfg("ISSUER"),
        "aud": client.client_id,
        "iat": now,
        "exp": now + int(_cfg("ID_TOKEN_TTL")),
    }
    claims.update(user_claims(principal, client, scope, "id_token"))
    if principal.auth_time is not None:
        claims["auth_time"] = principal.auth_time
    if nonce:
        claims["nonce"] = nonce
    if principal.acr:
        claims["acr"] = principal.acr
    if principal.amr:
        claims["amr"] = principal.amr
    if principal.sid:
        claims["sid"] = principal.sid
    if access_token:
        claims["at_hash"] = jws.half_hash(access_token, alg=alg)
    return jws.sign(claims, alg=alg)


# --- refresh token ----------------------------------------------------------------------------


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> tokens.RefreshTokenRecord | None:
        found = tokens.find_refresh_token(refresh_token)
        if found is None:
            return None
        if found.row.rotated_at is not None:
            # A rotated token came back: someone holds a copy. End the family.
            tokens.revoke_grant(found.grant.id, reason="refresh_token_reuse")
            return None
        if found.is_revoked() or found.is_expired() or found.grant.expires_at <= utcnow():
            return None
        return found

    def authenticate_user(self, refresh_token: tokens.RefreshTokenRecord) -> Principal | None:
        principal = tokens.principal_for_grant(refresh_token.grant, client=self.request.client)
        keep_grant(refresh_token.grant)
        if principal is None:
            raise InvalidGrantError(
                "The person, company or membership behind this refresh token is no longer active."
            )
        if not tokens.rotate_refresh_token(refresh_token):
            raise InvalidGrantError("The refresh token was already used.")
        return principal

    def revoke_old_credential(self, refresh_token: tokens.RefreshTokenRecord) -> None:
        return None  # rotated atomically in authenticate_user


# --- client credentials -----------------------------------------------------------------------


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        if not client_credentials_scope_allowed(self.request.client, self.request.payload.scope):
            raise InvalidScopeError("The client may not request these scopes.")


def client_credentials_scope_allowed(client: Client, scope: str | None) -> bool:
    """Whether ``client`` may ask for ``scope`` without a person: only its registered scopes,
    never ``openid``, ``offline_access`` or a company data category (they need a person, and
    company data the company's consent)."""
    allowed = set(client.scopes) - {"openid", "offline_access", *CATEGORIES}
    return all(s in allowed for s in (scope or "").split())


# --- private_key_jwt --------------------------------------------------------------------------


class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 client authentication: keys only from the client's registration, never from
    the assertion's header; iss = sub = client_id, aud = our issuer or token endpoint,
    exp required and near, jti single-use across workers."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self) -> None:
        super().__init__(validate_jti=True, leeway=30)

    def __call__(self, query_client: Any, request: OAuth2Request) -> Client | None:
        assertion = request.form.get("client_assertion")
        if isinstance(assertion, str) and len(assertion) > int(_cfg("MAX_JWT_LENGTH")):
            from authlib.oauth2.rfc6749 import InvalidClientError

            raise InvalidClientError(description="The client assertion is too large.")
        client: Client | None = super().__call__(query_client, request)
        if client is not None and client.profile is ClientProfile.FAPI2:
            self.check_fapi2_assertion(assertion)
        return client

    def check_fapi2_assertion(self, assertion: str) -> None:
        """FAPI 2.0 Security Profile §5.3.2.1 and §5.4.1: ES256 or PS256 only, and ``aud``
        exactly the issuer (endpoint URLs are accepted for basic clients only)."""
        from authlib.oauth2.rfc6749 import InvalidClientError

        headers, claims = self.extract_assertion(assertion)
        if headers.get("alg") not in FAPI2_ASSERTION_ALGS:
            raise InvalidClientError(
                description="FAPI 2.0 clients must sign assertions with ES256 or PS256."
            )
        if claims.get("aud") != _cfg("ISSUER"):
            raise InvalidClientError(
                description="FAPI 2.0 clients must use the issuer as the assertion's aud."
            )

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        from authlib.oauth2.rfc6749 import InvalidClientError

        headers, claims = super().extract_assertion(assertion)
        if headers.get("alg") not in CLIENT_ASSERTION_ALGS:
            raise InvalidClientError(description="Unsupported client assertion algorithm.")
        for member in ("jwk", "jku", "x5u", "x5c"):
            if member in headers:
                raise InvalidClientError(
                    description=f"Client assertions must not carry '{member}'."
                )
        return headers, claims

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        """Verify with every algorithm we advertise (Authlib's default is joserfc's
        "recommended" set, which lacks PS256 and EdDSA)."""
        from authlib.oauth2.rfc6749 import InvalidClientError
        from joserfc import jwt
        from joserfc.errors import JoseError, SecurityWarning

        try:
            with warnings.catch_warnings():
                # joserfc flags the "EdDSA" name as superseded by RFC 9864; OIDC still uses it.
                warnings.filterwarnings("ignore", category=SecurityWarning, message="EdDSA")
                token = jwt.decode(assertion, resolve_key, algorithms=list(CLIENT_ASSERTION_ALGS))
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="The client assertion is not valid.") from exc
        self.verify_claims(token.claims)
        return token.claims

    def get_audiences(self) -> list[str]:
        issuer = _cfg("ISSUER")
        # RFC 9126 §2: the PAR endpoint URL identifies us too.
        return [issuer, issuer + "/token", issuer + "/par"]

    def verify_claims(self, claims: Any) -> None:
        from authlib.oauth2.rfc6749 import InvalidClientError

        super().verify_claims(claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp - time.time() > int(
            _cfg("CLIENT_ASSERTION_MAX_AGE")
        ):
            raise InvalidClientError(description="The client assertion expires too far ahead.")

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            return False
        ttl = int(claims.get("exp", time.time()) - time.time()) + 60
        return cache.use_once("assertion-jti", f"{claims['sub']}\x00{jti}", ttl=max(ttl, 60))

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if client.jwks:
            return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]
        if client.jwks_uri:
            from idp.clients.jwks import fetch_client_jwks

            return KeySet.import_key_set(fetch_client_jwks(client.jwks_uri))  # type: ignore[arg-type]
        from authlib.oauth2.rfc6749 import InvalidClientError

        raise InvalidClientError(description="The client has no registered keys.")
