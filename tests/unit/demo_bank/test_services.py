"""The demo bank's own logic against a small stand-in FAPI 2.0 provider served on loopback:
what it sends (PAR with private_key_jwt aud = issuer, DPoP proofs with nonce retries, dpop_jkt,
PKCE S256, state, nonce, authorization_details) and each check it makes on what comes back,
refused one at a time (iss, state, errors, token type, ID token, granted details, receipt,
data API)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwskate
import pytest
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

from idp.demo_bank import services
from idp.demo_bank.services import Bank, BankError

CLIENT_ID = "bank-client"
ALL = ["corp_profile", "corp_address", "corp_officers"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _s256(value: str) -> str:
    return _b64(hashlib.sha256(value.encode()).digest())


@dataclass
class Provider:
    """A stand-in provider: it checks what the bank sends and answers as told by ``quirks``."""

    issuer: str
    as_key: jwskate.Jwk
    client_public: jwskate.Jwk
    quirks: dict[str, Any] = field(default_factory=dict)
    pushed: dict[str, dict[str, str]] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    nonces_asked: set[str] = field(default_factory=set)

    def authorize(self, authorization_url: str) -> dict[str, str]:
        """What the browser would bring back to the bank after an Allow."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        assert set(query) == {"client_id", "request_uri"}, query
        pushed = self.pushed[query["request_uri"]]
        code = secrets.token_urlsafe(16)
        self.codes[code] = pushed
        return {"code": code, "state": pushed["state"], "iss": self.issuer}

    # --- checks the stand-in makes on the bank's requests ---

    def check_client_assertion(self, form: dict[str, str]) -> None:
        assert form["client_assertion_type"].endswith(":jwt-bearer")
        jwt = jwskate.SignedJwt(form["client_assertion"])
        assert jwt.alg == "ES256"
        assert jwt.verify_signature(self.client_public, alg="ES256")
        assert jwt.claims["aud"] == self.issuer  # FAPI 2.0: the issuer, not the endpoint
        assert jwt.claims["iss"] == jwt.claims["sub"] == CLIENT_ID == form["client_id"]

    def check_dpop(self, htm: str, htu: str, *, access_token: str | None = None) -> str | None:
        """The proof's key thumbprint, or None when a nonce must be asked for first."""
        proof = jwskate.SignedJwt(request.headers["DPoP"])
        assert proof.headers["typ"] == "dpop+jwt"
        key = jwskate.Jwk(proof.headers["jwk"])
        assert not key.is_private
        assert proof.verify_signature(key, alg=proof.alg)
        assert proof.claims["htm"] == htm
        assert proof.claims["htu"] == htu
        if access_token is not None:
            assert proof.claims["ath"] == _s256(access_token)
        if proof.claims.get("nonce") not in self.nonces_asked:
            return None
        return str(key.thumbprint())


def _nonce_error(provider: Provider, status: int, *, resource: bool = False) -> Any:
    nonce = secrets.token_urlsafe(8)
    provider.nonces_asked.add(nonce)
    if resource:
        response = jsonify({})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'DPoP error="use_dpop_nonce"'
    else:
        response = jsonify(error="use_dpop_nonce", error_description="use this nonce")
        response.status_code = status
    response.headers["DPoP-Nonce"] = nonce
    return response


def _provider_app(provider: Provider) -> Flask:
    app = Flask("stand-in-provider")
    issuer = provider.issuer

    @app.get("/.well-known/openid-configuration")
    def metadata() -> Any:
        provider.seen.append("discovery")
        document = {
            "issuer": provider.quirks.get("metadata_issuer", issuer),
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "pushed_authorization_request_endpoint": f"{issuer}/par",
            "jwks_uri": f"{issuer}/jwks",
            "authorization_response_iss_parameter_supported": True,
        }
        if provider.quirks.get("no_par"):
            del document["pushed_authorization_request_endpoint"]
        return jsonify(document)

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify({"keys": [dict(provider.as_key.public_jwk())]})

    @app.post("/par")
    def par() -> Any:
        form = request.form.to_dict()
        provider.check_client_assertion(form)
        if provider.check_dpop("POST", f"{issuer}/par") is None:
            return _nonce_error(provider, 400)
        if provider.quirks.get("par_error"):
            return jsonify(error="invalid_request", error_description="no thanks"), 400
        provider.seen.append("par")
        request_uri = f"urn:ietf:params:oauth:request_uri:{secrets.token_urlsafe(8)}"
        provider.pushed[request_uri] = form
        return jsonify(request_uri=request_uri, expires_in=60), 201

    @app.post("/token")
    def token() -> Any:
        form = request.form.to_dict()
        provider.check_client_assertion(form)
        jkt = provider.check_dpop("POST", f"{issuer}/token")
        if jkt is None:
            return _nonce_error(provider, 400)
        pushed = provider.codes.pop(form["code"])
        assert jkt == pushed["dpop_jkt"]
        assert _s256(form["code_verifier"]) == pushed["code_challenge"]
        assert form["redirect_uri"] == pushed["redirect_uri"]
        provider.seen.append("token")
        access_token = "at-" + secrets.token_urlsafe(16)
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": "pairwise-subject",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": pushed["nonce"],
            "at_hash": _b64(hashlib.sha256(access_token.encode()).digest()[:16]),
            **provider.quirks.get("id_token_claims", {}),
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        details = json.loads(pushed["authorization_details"])
        receipt = {
            "iss": issuer,
            "consent_id": "cns_1",
            "client": {"client_id": CLIENT_ID, "name": "Bank"},
            "authorization_details": details,
        }
        receipt.update(provider.quirks.get("receipt_claims", {}))
        receipt_key = provider.quirks.get("receipt_key", provider.as_key)
        body = {
            "access_token": access_token,
            "token_type": provider.quirks.get("token_type", "DPoP"),
            "expires_in": 300,
            "scope": "openid",
            "id_token": str(jwskate.Jwt.sign(claims, provider.as_key, alg="PS256")),
            "authorization_details": provider.quirks.get("granted", details),
            "consent_receipt": str(
                jwskate.Jwt.sign(
                    receipt,
                    receipt_key,
                    alg=receipt_key.alg or "PS256",
                    typ=provider.quirks.get("receipt_typ", services.RECEIPT_TYP),
                )
            ),
        }
        app.config["ACCESS_TOKEN"] = access_token
        return jsonify(body), 200, {"Cache-Control": "no-store"}

    @app.get("/api/company-data")
    def company_data() -> Any:
        access_token = app.config["ACCESS_TOKEN"]
        assert request.headers["Authorization"] == f"DPoP {access_token}"
        if (
            provider.check_dpop("GET", f"{issuer}/api/company-data", access_token=access_token)
            is None
        ):
            return _nonce_error(provider, 401, resource=True)
        if provider.quirks.get("data_status"):
            return jsonify(error="invalid_token"), provider.quirks["data_status"]
        provider.seen.append("data")
        return jsonify(
            {
                "br_number": "12345678",
                "categories": {
                    "corp_profile": {
                        "values": {"br_number": "12345678", "name_en": "Demo Trading Limited"},
                        "provenance": {"source": "Companies Registry", "as_of": "2026-11-30"},
                    }
                },
            }
        )

    return app


@pytest.fixture(scope="module")
def keys() -> tuple[jwskate.Jwk, jwskate.Jwk, jwskate.Jwk]:
    as_key = jwskate.Jwk.generate(alg="PS256", kid="as-1", key_size=2048)
    client_key = jwskate.Jwk.generate(alg="ES256", kid="bank-client-1")
    dpop_key = jwskate.Jwk.generate(alg="ES256", kid="bank-dpop-1")
    return as_key, client_key, dpop_key


@pytest.fixture
def provider(keys: tuple[jwskate.Jwk, jwskate.Jwk, jwskate.Jwk]) -> Iterator[Provider]:
    as_key, client_key, _ = keys
    server = make_server("127.0.0.1", 0, Flask("placeholder"), threaded=True)
    stand_in = Provider(
        issuer=f"http://127.0.0.1:{server.server_port}",
        as_key=as_key,
        client_public=client_key.public_jwk(),
    )
    server.app = _provider_app(stand_in)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def bank(provider: Provider, keys: tuple[jwskate.Jwk, jwskate.Jwk, jwskate.Jwk]) -> Bank:
    _, client_key, dpop_key = keys
    return Bank(
        issuer=provider.issuer,
        client_id=CLIENT_ID,
        redirect_uri="http://localhost:5000/demo-bank/callback",
        client_key=client_key,
        dpop_key=dpop_key,
    )


Journey = Callable[..., Any]


@pytest.fixture
def journey(bank: Bank, provider: Provider) -> Journey:
    """``journey(categories=ALL, tamper=lambda params: params)``: start, allow, finish."""

    def run(
        categories: list[str] = ALL,
        tamper: Callable[[dict[str, str]], dict[str, str]] = lambda p: p,
    ) -> services.KycResult:
        url, transaction = services.start_kyc(bank, categories=categories)
        params = tamper(provider.authorize(url))
        return services.finish_kyc(bank, transaction, params)

    return run


# --- the happy path ---------------------------------------------------------------------------


def test_a_journey_sends_what_fapi_2_asks_and_checks_what_comes_back(
    journey: Journey, provider: Provider, bank: Bank
) -> None:
    result = journey(categories=["corp_profile", "corp_officers"])
    assert provider.seen == ["discovery", "par", "discovery", "token", "data"]
    pushed = next(iter(provider.pushed.values()))
    assert pushed["response_type"] == "code"
    assert pushed["scope"] == "openid"
    assert pushed["code_challenge_method"] == "S256"
    assert len(pushed["code_challenge"]) == 43
    assert pushed["state"]
    assert pushed["nonce"]
    assert pushed["redirect_uri"] == bank.redirect_uri
    assert pushed["dpop_jkt"] == bank.dpop_key.thumbprint()
    assert json.loads(pushed["authorization_details"]) == [
        {
            "type": "corp_data",
            "categories": ["corp_profile", "corp_officers"],
            "purpose": services.PURPOSE,
            "duration": 365 * 24 * 3600,
        }
    ]
    assert result.token_type == "DPoP"
    assert result.claims["sub"] == "pairwise-subject"
    assert result.authorization_details[0]["categories"] == ["corp_profile", "corp_officers"]
    assert result.receipt is not None
    assert result.receipt["claims"]["consent_id"] == "cns_1"
    assert result.receipt["header"]["kid"] == "as-1"
    (profile,) = services.sections(result.company_data)
    assert profile.category == "corp_profile"
    assert profile.values["name_en"] == "Demo Trading Limited"
    assert (profile.source, profile.as_of) == ("Companies Registry", "2026-11-30")


def test_the_browser_is_sent_with_client_id_and_request_uri_only(
    bank: Bank, provider: Provider
) -> None:
    url, transaction = services.start_kyc(bank, categories=["corp_profile"], ui_locales="zh-HK")
    assert url.startswith(f"{provider.issuer}/authorize?")
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"client_id", "request_uri"}
    assert transaction["categories"] == ["corp_profile"]
    assert next(iter(provider.pushed.values()))["ui_locales"] == "zh-HK"


# --- the callback -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tamper", "kind"),
    [
        (lambda p: {**p, "state": "forged"}, "state"),
        (lambda p: {k: v for k, v in p.items() if k != "state"}, "state"),
        (lambda p: {**p, "iss": "https://evil.example"}, "iss"),
        (lambda p: {k: v for k, v in p.items() if k != "iss"}, "iss"),
        (lambda p: {"error": "access_denied", "state": p["state"], "iss": p["iss"]}, "denied"),
        (lambda p: {"error": "server_error", "state": p["state"], "iss": p["iss"]}, "refused"),
        # An error with a wrong iss is a mix-up, not a refusal.
        (lambda p: {"error": "access_denied", "state": p["state"], "iss": "https://x"}, "iss"),
        (lambda p: {"state": p["state"], "iss": p["iss"]}, "refused"),
    ],
    ids=[
        "wrong-state",
        "no-state",
        "wrong-iss",
        "no-iss",
        "denied",
        "other-error",
        "error-from-wrong-iss",
        "no-code",
    ],
)
def test_callback_checks(journey: Journey, provider: Provider, tamper: Any, kind: str) -> None:
    with pytest.raises(BankError) as exc:
        journey(tamper=tamper)
    assert exc.value.kind == kind
    assert "token" not in provider.seen  # nothing redeemed


def test_a_callback_without_a_transaction_is_refused(bank: Bank) -> None:
    with pytest.raises(BankError) as exc:
        services.finish_kyc(bank, None, {"code": "c", "state": "s", "iss": bank.issuer})
    assert exc.value.kind == "not_started"


# --- discovery and PAR ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "quirk", [{"metadata_issuer": "https://other.example"}, {"no_par": True}, {"par_error": True}]
)
def test_start_refuses_a_provider_that_is_not_what_it_should_be(
    bank: Bank, provider: Provider, quirk: dict[str, Any]
) -> None:
    provider.quirks.update(quirk)
    with pytest.raises(BankError) as exc:
        services.start_kyc(bank, categories=ALL)
    assert exc.value.kind == "provider"


def test_no_category_is_no_journey() -> None:
    with pytest.raises(ValueError, match="category"):
        services.new_transaction([])


# --- what comes back from the token endpoint --------------------------------------------------


@pytest.mark.parametrize(
    ("quirk", "kind"),
    [
        ({"token_type": "Bearer"}, "token"),
        ({"granted": [{"type": "corp_data", "categories": ["corp_officers"]}]}, "token"),
        ({"granted": "corp_profile"}, "token"),
        ({"id_token_claims": {"iss": "https://evil.example"}}, "id_token"),
        ({"id_token_claims": {"aud": "someone-else"}}, "id_token"),
        ({"id_token_claims": {"nonce": "replayed"}}, "id_token"),
        ({"id_token_claims": {"nonce": None}}, "id_token"),
        ({"id_token_claims": {"exp": 1}}, "id_token"),
        ({"id_token_claims": {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}}, "id_token"),
        ({"receipt_claims": {"iss": "https://evil.example"}}, "receipt"),
        ({"receipt_claims": {"client": {"client_id": "another-bank"}}}, "receipt"),
        ({"receipt_claims": {"client": None}}, "receipt"),
        ({"receipt_typ": "JWT"}, "receipt"),
        ({"data_status": 403}, "data"),
    ],
    ids=[
        "bearer-token",
        "granted-more-than-asked",
        "granted-not-a-list",
        "id-token-iss",
        "id-token-aud",
        "id-token-nonce",
        "id-token-no-nonce",
        "id-token-expired",
        "id-token-at-hash",
        "receipt-iss",
        "receipt-for-another-client",
        "receipt-names-no-client",
        "receipt-typ",
        "data-refused",
    ],
)
def test_token_response_checks(
    journey: Journey, provider: Provider, quirk: dict[str, Any], kind: str
) -> None:
    provider.quirks.update(quirk)
    with pytest.raises(BankError) as exc:
        journey(categories=["corp_profile"] if "granted" in quirk else ALL)
    assert exc.value.kind == kind


def test_a_receipt_signed_by_another_key_is_refused(
    journey: Journey, provider: Provider, keys: tuple[jwskate.Jwk, ...]
) -> None:
    stranger = jwskate.Jwk.generate(alg="ES256", kid="as-1")  # the published kid, another key
    provider.quirks["receipt_key"] = stranger
    with pytest.raises(BankError) as exc:
        journey()
    assert exc.value.kind == "receipt"


def test_receipt_algorithms(provider: Provider, keys: tuple[jwskate.Jwk, ...]) -> None:
    jwks = jwskate.JwkSet({"keys": [dict(keys[0].public_jwk())]})
    claims = {"iss": provider.issuer, "client": {"client_id": CLIENT_ID}}
    typ = {"typ": services.RECEIPT_TYP}
    check = {"jwks": jwks, "issuer": provider.issuer, "client_id": CLIENT_ID}
    hmac_key = jwskate.Jwk.generate(alg="HS256", kid="as-1")
    forged = str(jwskate.Jwt.sign(claims, hmac_key, alg="HS256", typ=services.RECEIPT_TYP))
    with pytest.raises(BankError, match="HS256"):
        services.verify_receipt(forged, **check)
    header = json.dumps({"alg": "none", "kid": "as-1", **typ}).encode()
    unsigned = ".".join([_b64(header), _b64(json.dumps(claims).encode()), ""])
    with pytest.raises(BankError):
        services.verify_receipt(unsigned, **check)
    with pytest.raises(BankError, match="not a JWT"):
        services.verify_receipt("not-a-jwt", **check)
    good = str(jwskate.Jwt.sign(claims, keys[0], alg="PS256", typ=services.RECEIPT_TYP))
    assert services.verify_receipt(good, **check)["claims"] == claims


# --- keys and presentation --------------------------------------------------------------------


def test_keys_are_made_once_private_and_registered_public(tmp_path: Any) -> None:
    client_key, dpop_key = services.ensure_keys(tmp_path)
    assert services.ensure_keys(tmp_path) == (client_key, dpop_key)
    assert services.load_keys(tmp_path) == (client_key, dpop_key)
    for name in (services.CLIENT_KEY_FILE, services.DPOP_KEY_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    (key,) = services.public_jwks(client_key)["keys"]
    assert not set(key) & {"d", "p", "q", "dp", "dq", "qi", "k"}
    assert key["kid"] == client_key.kid
    assert client_key != dpop_key


def test_missing_or_bad_keys_say_so(tmp_path: Any) -> None:
    with pytest.raises(BankError, match="idp demo") as exc:
        services.load_keys(tmp_path)
    assert exc.value.kind == "setup"
    (tmp_path / services.CLIENT_KEY_FILE).write_text("{}")
    with pytest.raises(BankError):
        services.ensure_keys(tmp_path)


def test_sections_read_provenance_beside_or_inside() -> None:
    data = {
        "categories": {
            "corp_address": {"formatted": "1 Queen's Road", "source": "CR", "as_of": "2026-01-01"},
            "corp_profile": {
                "values": {"br_number": "1"},
                "provenance": {"source": "CR"},
                "verified_claims": {"verification": {"trust_framework": "hk_cr"}},
            },
            "unknown": {"values": {}},
        }
    }
    profile, address = services.sections(data)
    assert (profile.category, profile.source, profile.as_of) == ("corp_profile", "CR", None)
    assert profile.trust_framework == "hk_cr"
    assert address.trust_framework is None
    assert address.values == {"formatted": "1 Queen's Road"}
    assert address.as_of == "2026-01-01"
    assert services.sections({}) == []
