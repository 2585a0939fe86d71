"""The resource door (idp.oauth.resource): schemes, bound tokens, scopes, challenges."""

from __future__ import annotations

import secrets
import time

import jwskate
import pytest
from flask import Flask, request

from idp.clients.services import create_client
from idp.oauth import dpop, resource, tokens

pytestmark = pytest.mark.usefixtures("app_ctx")

URL = "http://localhost:5000/api/thing"


def issue(jkt: str | None = None, scope: str = "corp") -> str:
    client, _ = create_client(
        name="Service",
        redirect_uris=["https://rp.example/cb"],
        auth_method="client_secret_basic",
        scopes=["corp"],
        grant_types=["client_credentials"],
        actor="tests",
    )
    token, _ = tokens.issue_access_token(client=client, scope=scope, principal=None, jkt=jkt)
    return token


def dpop_proof(key: jwskate.Jwk, token: str) -> str:
    claims = {
        "jti": secrets.token_urlsafe(8),
        "htm": "GET",
        "htu": URL,
        "iat": int(time.time()),
        "ath": dpop.access_token_hash(token),
    }
    return str(
        jwskate.Jwt.sign(
            claims,
            key,
            alg="ES256",
            typ="dpop+jwt",
            extra_headers={"jwk": key.public_jwk().to_dict()},
        )
    )


def refused(app: Flask, headers: dict[str, str], **kwargs: object) -> resource.ResourceError:
    with (
        app.test_request_context("/api/thing", headers=headers),
        pytest.raises(resource.ResourceError) as caught,
    ):
        resource.protected_claims(request, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_bearer_token_and_scopes(app: Flask) -> None:
    token = issue()
    with app.test_request_context("/api/thing", headers={"Authorization": f"Bearer {token}"}):
        assert resource.protected_claims(request, required_scopes=["corp"])["scope"] == "corp"
    error = refused(app, {"Authorization": f"Bearer {token}"}, required_scopes=["corp_profile"])
    assert (error.status, error.error) == (403, "insufficient_scope")
    assert error.headers[0][1].startswith('Bearer realm="corp-id", error="insufficient_scope"')


def test_missing_token_offers_both_schemes(app: Flask) -> None:
    error = refused(app, {})
    assert (error.status, error.error) == (401, "invalid_request")
    response = resource.error_response(error)
    assert response.headers.getlist("WWW-Authenticate")[0].startswith("Bearer")
    assert response.headers.getlist("WWW-Authenticate")[1].startswith("DPoP algs=")
    assert response.headers["Cache-Control"] == "no-store"


def test_bound_token_needs_dpop_with_its_key(app: Flask) -> None:
    key, other = jwskate.Jwk.generate(alg="ES256"), jwskate.Jwk.generate(alg="ES256")
    token = issue(jkt=str(key.public_jwk().thumbprint()))
    assert refused(app, {"Authorization": f"Bearer {token}"}).error == "invalid_token"
    headers = {"Authorization": f"DPoP {token}", "DPoP": dpop_proof(key, token)}
    with app.test_request_context("/api/thing", headers=headers):
        assert resource.protected_claims(request)["cnf"]["jkt"] == key.public_jwk().thumbprint()
    wrong = refused(app, {"Authorization": f"DPoP {token}", "DPoP": dpop_proof(other, token)})
    assert wrong.error == "invalid_token"
    assert wrong.headers[0][1].startswith('DPoP error="invalid_token"')
    assert refused(app, {"Authorization": f"DPoP {token}"}).error == "invalid_dpop_proof"


def test_unbound_token_with_dpop_scheme_is_refused(app: Flask) -> None:
    key = jwskate.Jwk.generate(alg="ES256")
    token = issue()
    error = refused(app, {"Authorization": f"DPoP {token}", "DPoP": dpop_proof(key, token)})
    assert error.error == "invalid_token"
