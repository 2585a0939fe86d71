"""The demo relying party's checks, each refused on its own: state, iss (RFC 9207), error
answers, and the ID token's signature, alg, iss, aud, exp, nonce, azp and at_hash."""

from __future__ import annotations

import time
from typing import Any

import jwskate
import pytest

from idp.demo_rp import services
from idp.demo_rp.services import DemoLoginError, RelyingParty

ISSUER = "http://localhost:5000"
RP = RelyingParty(
    issuer=ISSUER,
    client_id="demo-client",
    redirect_uri=f"{ISSUER}/demo-rp/callback",
    post_logout_redirect_uri=f"{ISSUER}/demo-rp/",
)
ACCESS_TOKEN = "at-1234"
METADATA = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/authorize",
    "token_endpoint": f"{ISSUER}/token",
    "jwks_uri": f"{ISSUER}/jwks.json",
    "userinfo_endpoint": f"{ISSUER}/userinfo",
    "authorization_response_iss_parameter_supported": True,
}
TRANSACTION = {"state": "s-1", "nonce": "n-1", "code_verifier": "v" * 43}


@pytest.fixture(scope="module")
def key() -> jwskate.Jwk:
    return jwskate.Jwk.generate(alg="RS256", kid="k1")


def id_token(key: jwskate.Jwk, *, alg: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "person-1",
        "aud": RP.client_id,
        "iat": now,
        "exp": now + 300,
        "nonce": TRANSACTION["nonce"],
        "at_hash": _at_hash(ACCESS_TOKEN),
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return str(jwskate.Jwt.sign(claims, key, alg=alg))


def _at_hash(token: str) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def verify(key: jwskate.Jwk, token: str, *, jwks: dict[str, Any] | None = None) -> dict[str, Any]:
    return services.verify_id_token(
        RP,
        token,
        jwks=jwks or {"keys": [key.public_jwk().to_dict()]},
        nonce=TRANSACTION["nonce"],
        access_token=ACCESS_TOKEN,
    )


def test_a_valid_id_token_is_accepted(key: jwskate.Jwk) -> None:
    claims = verify(key, id_token(key))
    assert claims["sub"] == "person-1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "http://localhost:6000"},
        {"aud": "another-client"},
        {"aud": ["demo-client", "other"], "azp": "other"},
        {"exp": int(time.time()) - 3600},
        {"nonce": "n-other"},
        {"nonce": None},
        {"at_hash": _at_hash("another-token")},
        {"sub": None},
    ],
    ids=["iss", "aud", "azp", "exp", "nonce", "no-nonce", "at_hash", "no-sub"],
)
def test_id_token_claims_are_checked(key: jwskate.Jwk, overrides: dict[str, Any]) -> None:
    with pytest.raises(DemoLoginError, match="ID token"):
        verify(key, id_token(key, **overrides))


def test_id_token_signed_by_another_key_is_refused(key: jwskate.Jwk) -> None:
    other = jwskate.Jwk.generate(alg="RS256", kid="k1")
    with pytest.raises(DemoLoginError, match="not valid"):
        verify(key, id_token(other))


def test_id_token_in_another_alg_is_refused(key: jwskate.Jwk) -> None:
    ec_key = jwskate.Jwk.generate(alg="ES256", kid="e1")
    with pytest.raises(DemoLoginError, match="not valid"):
        verify(key, id_token(ec_key, alg="ES256"), jwks={"keys": [ec_key.public_jwk().to_dict()]})


def test_garbage_id_token_is_refused(key: jwskate.Jwk) -> None:
    with pytest.raises(DemoLoginError, match="not valid"):
        verify(key, "not.a.jwt")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Discovery answers METADATA; the token endpoint must not be reached."""
    calls: list[str] = []
    monkeypatch.setattr(services, "discover", lambda rp: dict(METADATA))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        calls.append("token")
        raise AssertionError("the code must not be redeemed")

    monkeypatch.setattr(services.OAuth2Session, "fetch_token", refuse)
    return calls


@pytest.mark.parametrize(
    ("transaction", "params", "message"),
    [
        (None, {"state": "s-1", "code": "c", "iss": ISSUER}, "not started here"),
        (TRANSACTION, {"code": "c", "iss": ISSUER}, "not started here"),
        (TRANSACTION, {"state": "s-2", "code": "c", "iss": ISSUER}, "state mismatch"),
        (TRANSACTION, {"state": "s-1", "code": "c"}, "expected provider"),
        (TRANSACTION, {"state": "s-1", "code": "c", "iss": "https://evil.example"}, "expected"),
        (TRANSACTION, {"state": "s-1", "iss": ISSUER}, "no authorization code"),
        (
            TRANSACTION,
            {"state": "s-1", "iss": ISSUER, "error": "access_denied", "error_description": "No."},
            "access_denied: No.",
        ),
    ],
    ids=["no-transaction", "no-state", "wrong-state", "no-iss", "wrong-iss", "no-code", "error"],
)
def test_callback_is_checked_before_the_code_is_redeemed(
    no_network: list[str],
    transaction: dict[str, str] | None,
    params: dict[str, str],
    message: str,
) -> None:
    with pytest.raises(DemoLoginError, match=message):
        services.finish_login(RP, transaction, params)
    assert no_network == []


def test_start_login_asks_for_pkce_s256_state_and_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services, "discover", lambda rp: dict(METADATA))
    url, transaction = services.start_login(RP)
    assert url.startswith(f"{ISSUER}/authorize?")
    for part in (
        "response_type=code",
        "client_id=demo-client",
        "code_challenge_method=S256",
        f"state={transaction['state']}",
        f"nonce={transaction['nonce']}",
    ):
        assert part in url
    assert transaction["code_verifier"] not in url
    _, other = services.start_login(RP)
    assert other["state"] != transaction["state"]
    assert other["nonce"] != transaction["nonce"]
