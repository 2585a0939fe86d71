"""Request-object checks (RFC 9101 with the FAPI 2.0 rules), one negative test per rule, and
the PAR helpers that need no server."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwskate
import pytest

from idp.clients.models import AuthMethod, Client, ClientProfile
from idp.oauth.request_object import InvalidRequestObject, verify_request_object

ISSUER = "https://id.example.hk"
_KEYS: dict[str, jwskate.Jwk] = {}


def key(alg: str) -> jwskate.Jwk:
    if alg not in _KEYS:
        _KEYS[alg] = jwskate.Jwk.generate(alg=alg, kid=alg.lower())
    return _KEYS[alg]


def client(profile: ClientProfile = ClientProfile.FAPI2, *algs: str) -> Client:
    keys = [key(a).public_jwk().to_dict() for a in (algs or ("ES256",))]
    return Client(
        client_id="bank-1",
        name="Bank",
        auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks={"keys": keys},
        profile=profile,
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": "bank-1",
        "aud": ISSUER,
        "client_id": "bank-1",
        "response_type": "code",
        "redirect_uri": "https://bank.example/cb",
        "scope": "openid corp_profile",
        "nbf": now,
        "exp": now + 300,
        "max_age": 600,
        "claims": {"id_token": {"acr": None}},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def sign(
    body: dict[str, Any],
    alg: str = "ES256",
    typ: str | None = "oauth-authz-req+jwt",
    signer: jwskate.Jwk | None = None,
) -> str:
    return str(jwskate.Jwt.sign(body, signer or key(alg), alg=alg, typ=typ))


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def verify(token: str, c: Client | None = None) -> dict[str, str]:
    return verify_request_object(token, client=c or client(), issuer=ISSUER, max_length=8192)


def test_valid_object_gives_string_parameters() -> None:
    params = verify(sign(claims()))
    assert params["scope"] == "openid corp_profile"
    assert params["max_age"] == "600"
    assert json.loads(params["claims"]) == {"id_token": {"acr": None}}
    assert not {"iss", "aud", "nbf", "exp"} & set(params)


def test_typ_may_be_absent() -> None:
    assert verify(sign(claims(), typ=None))["client_id"] == "bank-1"


# nbf/exp given as offsets from the moment the test runs (not from collection).
@pytest.mark.parametrize(
    ("name", "token_changes"),
    [
        ("missing exp", {"exp": None}),
        ("missing nbf", {"nbf": None}),
        ("nbf not a number", {"nbf": "now"}),
        ("nbf too old", {"nbf": -3700, "exp": 60}),
        ("nbf in the future", {"nbf": 300, "exp": 600}),
        ("exp - nbf over 60 min", {"nbf": 0, "exp": 3601}),
        ("expired", {"nbf": -600, "exp": -120}),
        ("wrong aud", {"aud": ISSUER + "/token"}),
        ("missing aud", {"aud": None}),
        ("wrong iss", {"iss": "other"}),
        ("wrong client_id", {"client_id": "other"}),
        ("missing client_id", {"client_id": None}),
        ("nested request", {"request": "a.b.c"}),
        ("nested request_uri", {"request_uri": "urn:x"}),
    ],
)
def test_claim_rules(name: str, token_changes: dict[str, Any]) -> None:
    now = int(time.time())
    changes = {
        k: now + v if k in ("nbf", "exp") and isinstance(v, int) else v
        for k, v in token_changes.items()
    }
    with pytest.raises(InvalidRequestObject):
        verify(sign(claims(**changes)))


def test_bad_signature() -> None:
    other = jwskate.Jwk.generate(alg="ES256")
    with pytest.raises(InvalidRequestObject, match="signature"):
        verify(sign(claims(), signer=other))


def test_alg_none_is_refused() -> None:
    with pytest.raises(InvalidRequestObject):
        verify(f"{b64({'alg': 'none'})}.{b64(claims())}.")


def test_hmac_is_refused_even_with_the_public_key_as_secret() -> None:
    public = key("ES256").public_jwk().to_dict()
    secret = jwskate.Jwk({"kty": "oct", "k": b64(public)})
    with pytest.raises(InvalidRequestObject, match="HS256"):
        verify(sign(claims(), alg="HS256", signer=secret))


def test_key_in_the_header_is_never_used() -> None:
    attacker = jwskate.Jwk.generate(alg="ES256")
    token = str(
        jwskate.Jwt.sign(
            claims(), attacker, alg="ES256", extra_headers={"jwk": attacker.public_jwk().to_dict()}
        )
    )
    with pytest.raises(InvalidRequestObject):
        verify(token)


def test_wrong_typ() -> None:
    with pytest.raises(InvalidRequestObject, match="typ"):
        verify(sign(claims(), typ="JWT"))


def test_fapi2_needs_ps256_or_es256_basic_may_use_rs256() -> None:
    with pytest.raises(InvalidRequestObject, match="PS256, ES256"):
        verify(sign(claims(), alg="RS256"), client(ClientProfile.FAPI2, "RS256"))
    basic = client(ClientProfile.BASIC, "RS256")
    assert verify(sign(claims(), alg="RS256"), basic)["response_type"] == "code"


def test_oversized_and_malformed_objects() -> None:
    for token in ("e" * 9000, "", "a.b", "a.b.c", "!!.??.**", None, 42):
        with pytest.raises(InvalidRequestObject):
            verify(token)  # type: ignore[arg-type]


def test_client_without_keys() -> None:
    bare = Client(
        client_id="bank-1",
        name="Bank",
        auth_method=AuthMethod.PRIVATE_KEY_JWT,
        profile=ClientProfile.FAPI2,
    )
    with pytest.raises(InvalidRequestObject, match="keys"):
        verify(sign(claims()), bare)


# --- PAR helpers ------------------------------------------------------------------------------


def test_dpop_jkt_must_match_the_proof() -> None:
    from idp.oauth.par import PushError, _bind_dpop

    jkt = "A" * 43
    params = {"dpop_jkt": jkt}
    _bind_dpop(params, jkt)
    assert params["dpop_jkt"] == jkt
    with pytest.raises(PushError) as raised:
        _bind_dpop({"dpop_jkt": jkt}, "B" * 43)
    assert raised.value.error == "invalid_dpop_proof"
    assert raised.value.status == 400
    bound: dict[str, str] = {}
    _bind_dpop(bound, "C" * 43)
    assert bound == {"dpop_jkt": "C" * 43}


@pytest.mark.parametrize("ttl", [0, 600, 3600])
def test_par_ttl_must_stay_under_600_seconds(ttl: int) -> None:
    from idp.config import DEFAULTS, validate_config

    config = {**DEFAULTS, "ISSUER": ISSUER, "PAR_TTL": ttl}
    with pytest.raises(ValueError, match="PAR_TTL"):
        validate_config(config)
