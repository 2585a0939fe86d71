"""OpenID Provider metadata (OIDC Discovery 1.0) and RFC 8414 authorization server metadata.

Every value here must be true of the running provider: tests compare it with behaviour.
"""

from __future__ import annotations

import json
from typing import Any

from idp.data.categories import CATEGORIES, RAR_TYPE
from idp.data.sources import EVIDENCE_TYPE, REGISTER_RECORD_TYPE
from idp.keys.services import SUPPORTED_ALGS

# corp_consents: a company admin's token for the consents API (idp.consent.views).
SCOPES = ("openid", "profile", "email", "corp", "offline_access", *CATEGORIES, "corp_consents")
CLAIMS = (
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "acr",
    "amr",
    "sid",
    "at_hash",
    "name",
    "email",
    "email_verified",
    "corp",
    "act",
    *CATEGORIES,
    "verified_claims",
)
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
CLIENT_ASSERTION_ALGS = ("RS256", "PS256", "ES256", "EdDSA")
ACR_VALUES = ("phrh",)
# DPoP proof algorithms (RFC 9449 §5.1); fapi2 clients may not use RS256 (idp.oauth.dpop).
DPOP_SIGNING_ALGS = ("ES256", "PS256", "EdDSA", "RS256")

PATHS = {
    "authorization_endpoint": "/authorize",
    "token_endpoint": "/token",
    "userinfo_endpoint": "/userinfo",
    "jwks_uri": "/jwks.json",
    "introspection_endpoint": "/introspect",
    "revocation_endpoint": "/revoke",
    "end_session_endpoint": "/logout",
    "pushed_authorization_request_endpoint": "/par",
}
DISCOVERY_PATH = "/.well-known/openid-configuration"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"


def provider_metadata(issuer: str) -> dict[str, Any]:
    endpoints = {name: issuer + path for name, path in PATHS.items()}
    return {
        "issuer": issuer,
        **endpoints,
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": list(SUPPORTED_ALGS),
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "introspection_endpoint_auth_methods_supported": [
            m for m in CLIENT_AUTH_METHODS if m != "none"
        ],
        "introspection_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(CLAIMS),
        "claims_parameter_supported": True,
        # Request objects (RFC 9101) are accepted at the PAR endpoint only, never at
        # /authorize, which takes a request_uri only from PAR: both flags describe /authorize.
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "request_object_signing_alg_values_supported": list(CLIENT_ASSERTION_ALGS),
        # Basic clients need not push; fapi2 clients must (their registration says so).
        "require_pushed_authorization_requests": False,
        "acr_values_supported": list(ACR_VALUES),
        "ui_locales_supported": ["en", "zh-Hant-HK"],
        "claim_types_supported": ["normal"],
        "authorization_response_iss_parameter_supported": True,
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "dpop_signing_alg_values_supported": list(DPOP_SIGNING_ALGS),
        "authorization_details_types_supported": [RAR_TYPE],
        **identity_assurance_metadata(),
    }


def identity_assurance_metadata() -> dict[str, Any]:
    """OpenID Connect for Identity Assurance 1.0 metadata: company data categories are
    released as verified_claims, evidenced by electronic records of the company register."""
    from flask import current_app

    return {
        "verified_claims_supported": True,
        "trust_frameworks_supported": [str(current_app.config["IDP"]["DATA_TRUST_FRAMEWORK"])],
        "evidence_supported": [EVIDENCE_TYPE],
        "electronic_records_supported": [REGISTER_RECORD_TYPE],
        "claims_in_verified_claims_supported": list(CATEGORIES),
    }


def metadata_document(issuer: str) -> bytes:
    return json.dumps(provider_metadata(issuer), separators=(",", ":")).encode()
