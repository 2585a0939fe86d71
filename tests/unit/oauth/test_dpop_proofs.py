"""DPoP proof checks (RFC 9449 §4.3), one rule per test, through idp.oauth.dpop."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwskate
import pytest
from flask import Flask

from idp.oauth import dpop

pytestmark = pytest.mark.usefixtures("app_ctx")

URL = "http://localhost:5000/token"
_KEYS: dict[str, jwskate.Jwk] = {}


def key(alg: str = "ES256", index: int = 0) -> jwskate.Jwk:
    name = f"{alg}-{index}"
    if name not in _KEYS:
        _KEYS[name] = jwskate.Jwk.generate(alg=alg)
    return _KEYS[name]


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_proof(
    *,
    alg: str = "ES256",
    signer: jwskate.Jwk | None = None,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A proof for POST URL signed by ``signer``; ``header``/``claims`` override (None drops)."""
    signer = signer or key(alg)
    body = {"jti": secrets.token_urlsafe(12), "htm": "POST", "htu": URL, "iat": int(time.time())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": signer.public_jwk().to_dict()}
    head.update(header or {})
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = f"{b64(head)}.{b64(body)}".encode()
    signature = signer.sign(signing_input, alg=alg)
    return f"{signing_input.decode()}.{b64(bytes(signature))}"


def check(proof: str, **kwargs: Any) -> dpop.Proof:
    kwargs.setdefault("method", "POST")
    kwargs.setdefault("url", URL)
    return dpop.check_proof(proof, **kwargs)


def refused(proof: str, error: str = "invalid_dpop_proof", **kwargs: Any) -> dpop.DPoPError:
    with pytest.raises(dpop.DPoPError) as caught:
        check(proof, **kwargs)
    assert caught.value.error == error
    assert caught.value.description
    return caught.value


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA", "RS256"])
def test_valid_proof_gives_the_rfc7638_thumbprint(alg: str) -> None:
    signer = key(alg)
    proof = check(make_proof(alg=alg, signer=signer))
    assert proof.jkt == signer.public_jwk().thumbprint()
    assert dpop.is_jkt(proof.jkt)


def test_fapi2_algs_exclude_rs256() -> None:
    refused(make_proof(alg="RS256"), algs=dpop.FAPI2_DPOP_ALGS)


def test_alg_none_and_hmac_are_refused() -> None:
    head = {"typ": "dpop+jwt", "alg": "none", "jwk": key().public_jwk().to_dict()}
    body = {"jti": "x", "htm": "POST", "htu": URL, "iat": int(time.time())}
    refused(f"{b64(head)}.{b64(body)}.")
    hs = jwskate.Jwk.generate(alg="HS256")
    head = {"typ": "dpop+jwt", "alg": "HS256", "jwk": hs.to_dict()}
    token = jwskate.Jwt.sign(
        body, hs, alg="HS256", extra_headers={"jwk": hs.to_dict(), "typ": "dpop+jwt"}
    )
    refused(str(token))


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt"])
def test_typ_must_be_dpop_jwt(typ: str | None) -> None:
    refused(make_proof(header={"typ": typ}))


def test_jwk_with_private_members_is_refused() -> None:
    signer = key()
    refused(make_proof(signer=signer, header={"jwk": signer.to_dict()}))


def test_jwk_missing_or_of_the_wrong_type_is_refused() -> None:
    refused(make_proof(header={"jwk": None}))
    refused(make_proof(header={"jwk": key("EdDSA").public_jwk().to_dict()}))


def test_bad_signature_is_refused() -> None:
    good = make_proof()
    other = make_proof(signer=key("ES256", 1), header={"jwk": key().public_jwk().to_dict()})
    assert check(good)
    refused(other)
    head, body, sig = make_proof().split(".")
    refused(f"{head}.{body}.{sig[:-4]}AAAA")


@pytest.mark.parametrize("value", ["", "a.b", "a.b.c", "x" * 5000, "e30.e30.e30.e30"])
def test_malformed_proofs_are_refused_fast(value: str) -> None:
    refused(value)


def test_htm_must_be_the_request_method() -> None:
    refused(make_proof(htm="GET"))
    refused(make_proof(htm=None))


def test_htu_must_be_the_endpoint_under_our_issuer() -> None:
    refused(make_proof(htu="http://localhost:5000/userinfo"))
    refused(make_proof(htu="http://evil.example/token"))
    refused(make_proof(htu="https://localhost:5000/token"))
    refused(make_proof(htu=None))


def test_htu_ignores_query_and_fragment_and_normalises_case_and_port() -> None:
    check(make_proof(htu=URL + "?x=1#frag"))
    check(make_proof(htu="HTTP://LOCALHOST:5000/token"))
    assert dpop.normalise_url("https://a.example:443") == "https://a.example/"


def test_jti_is_single_use_per_key() -> None:
    proof = make_proof()
    check(proof)
    refused(proof)


@pytest.mark.parametrize("jti", [None, "", 5, "j" * 257])
def test_jti_must_be_a_short_string(jti: Any) -> None:
    refused(make_proof(jti=jti))


def test_stale_and_future_iat_are_refused() -> None:
    refused(make_proof(iat=int(time.time()) - 120))
    refused(make_proof(iat=int(time.time()) + 60))
    refused(make_proof(iat="now"))
    check(make_proof(iat=int(time.time()) - 30))


def test_ath_must_hash_the_access_token() -> None:
    token = "at-" + secrets.token_urlsafe(20)
    check(make_proof(ath=dpop.access_token_hash(token)), access_token=token)
    refused(make_proof(), access_token=token)
    refused(make_proof(ath=dpop.access_token_hash("other")), access_token=token)


def test_nonce_required_then_accepted() -> None:
    error = refused(make_proof(), "use_dpop_nonce", require_nonce=True)
    assert error.nonce
    assert dpop.is_valid_nonce(error.nonce)
    assert ("DPoP-Nonce", error.nonce) in error.get_headers()
    check(make_proof(nonce=error.nonce), require_nonce=True)


def test_stale_or_forged_nonce_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    refused(make_proof(nonce="forged"), "use_dpop_nonce")
    old = dpop.current_nonce()
    now = time.time()
    monkeypatch.setattr(dpop.time, "time", lambda: now + 300)
    assert dpop.is_valid_nonce(old)  # the previous slot's nonce still works
    monkeypatch.setattr(dpop.time, "time", lambda: now + 700)
    assert not dpop.is_valid_nonce(old)


def test_nonces_agree_across_apps_with_one_secret(make_app: Callable[..., Flask]) -> None:
    nonce = dpop.current_nonce()
    with make_app().app_context():
        assert dpop.is_valid_nonce(nonce)


def test_proof_jkt_at_for_par(app: Flask) -> None:
    url = "http://localhost:5000/par"
    signer = key()
    with app.test_request_context("/par", method="POST"):
        from flask import request

        assert dpop.proof_jkt_at(request, url) is None
    with app.test_request_context(
        "/par", method="POST", headers={"DPoP": make_proof(signer=signer, htu=url)}
    ):
        assert dpop.proof_jkt_at(request, url) == signer.public_jwk().thumbprint()
    with (
        app.test_request_context("/par", method="POST", headers={"DPoP": make_proof()}),
        pytest.raises(dpop.DPoPError),
    ):
        dpop.proof_jkt_at(request, url)  # htu is /token
    with (
        app.test_request_context(
            "/par",
            method="POST",
            headers=[("DPoP", make_proof(htu=url)), ("DPoP", make_proof(htu=url))],
        ),
        pytest.raises(dpop.DPoPError),
    ):
        dpop.proof_jkt_at(request, url)


@pytest.mark.parametrize("value", ["", "abc", "A" * 44, "A" * 42 + "+", None])
def test_is_jkt_refuses_non_thumbprints(value: Any) -> None:
    assert not dpop.is_jkt(value)
