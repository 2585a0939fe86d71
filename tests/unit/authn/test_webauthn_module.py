"""idp.authn.webauthn, the one door to py_webauthn, driven by the software authenticator.

No app needed: the module takes every security parameter as a keyword argument. Each
refusal comes out as ``WebAuthnError`` (never a py_webauthn exception, never a parse error).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import cbor2
import pytest

from idp.authn import webauthn as wa
from tests.support.authenticator import (
    EDDSA,
    ES256,
    SoftAuthenticator,
    b64url,
    make_attestation_ca,
)

ORIGIN = "https://id.example.hk"
RP_ID = "id.example.hk"


def _options(challenge: bytes, **kwargs: Any) -> dict[str, Any]:
    return wa.registration_options(
        rp_id=RP_ID,
        rp_name="Corp ID",
        user_id=b"subject-1",
        user_name="a@b.example",
        user_display_name="A B",
        challenge=challenge,
        exclude_credentials=kwargs.pop("exclude", []),
        timeout_ms=300_000,
    )


def _register(
    key: SoftAuthenticator, **create: Any
) -> tuple[bytes, dict[str, Any], wa.RegistrationFacts]:
    challenge = os.urandom(32)
    created = key.create(_options(challenge), **create)
    cred, facts = wa.read_registration(created)
    return challenge, cred, facts


def _verify_registration(
    challenge: bytes,
    cred: dict[str, Any],
    facts: wa.RegistrationFacts,
    roots: list[bytes] | None = None,
    **kw: Any,
) -> wa.VerifiedKey:
    params: dict[str, Any] = {
        "rp_id": RP_ID,
        "origin": ORIGIN,
        "fmt": facts.fmt,
        "root_certs": roots or [],
    }
    params.update(kw)
    return wa.verify_registration(credential=cred, challenge=challenge, **params)


def test_registration_options() -> None:
    options = _options(b"c" * 32, exclude=[(b"\x01\x02", ["usb", "bogus"])])
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["attestation"] == "direct"
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-7, -8, -257]
    assert options["excludeCredentials"] == [
        {"id": b64url(b"\x01\x02"), "type": "public-key", "transports": ["usb"]}
    ]


def test_authentication_options() -> None:
    options = wa.authentication_options(
        rp_id=RP_ID, challenge=b"c" * 32, allow_credentials=[], timeout_ms=1000
    )
    assert options["userVerification"] == "required"
    assert options["allowCredentials"] == []
    assert options["rpId"] == RP_ID


@pytest.mark.parametrize("alg", [ES256, EDDSA])
@pytest.mark.parametrize("attestation", ["none", "self"])
def test_registration_verified(alg: int, attestation: str) -> None:
    key = SoftAuthenticator(origin=ORIGIN, alg=alg)
    challenge, cred, facts = _register(key, attestation=attestation)
    assert facts.fmt == ("none" if attestation == "none" else "packed")
    assert facts.has_trust_path is False
    assert facts.challenge == challenge
    verified = _verify_registration(challenge, cred, facts)
    assert verified.credential_id == key.credentials[0].credential_id
    assert verified.aaguid == key.aaguid
    assert verified.transports == ["usb"]
    assert verified.backup_eligible is False


def test_packed_with_x5c_chained_to_the_given_root() -> None:
    ca = make_attestation_ca()
    key = SoftAuthenticator(origin=ORIGIN)
    challenge, cred, facts = _register(key, attestation="packed", attestation_ca=ca)
    assert facts.has_trust_path is True
    assert facts.fmt == "packed"
    assert _verify_registration(challenge, cred, facts, roots=[ca.root_pem]).fmt == "packed"


def test_packed_with_x5c_refused_against_another_root() -> None:
    ca, other = make_attestation_ca(), make_attestation_ca(name="Other")
    key = SoftAuthenticator(origin=ORIGIN)
    challenge, cred, facts = _register(key, attestation="packed", attestation_ca=ca)
    with pytest.raises(wa.WebAuthnError) as caught:
        _verify_registration(challenge, cred, facts, roots=[other.root_pem])
    assert caught.value.reason == "attestation"


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ({"origin": "https://evil.example"}, "origin"),
        ({"rp_id": "evil.example"}, "rp_id"),
        ({"uv": False}, "user_verification"),
        ({"up": False}, "user_presence"),
    ],
)
def test_registration_refusals(breakage: dict[str, Any], reason: str) -> None:
    key = SoftAuthenticator(origin=ORIGIN)
    challenge, cred, facts = _register(key, **breakage)
    with pytest.raises(wa.WebAuthnError) as caught:
        _verify_registration(challenge, cred, facts)
    assert caught.value.reason == reason


def test_registration_other_challenge_refused() -> None:
    key = SoftAuthenticator(origin=ORIGIN)
    _, cred, facts = _register(key)
    with pytest.raises(wa.WebAuthnError) as caught:
        _verify_registration(os.urandom(32), cred, facts)
    assert caught.value.reason == "challenge"


def test_read_registration_refuses_get_type_cross_origin_and_long_ids() -> None:
    key = SoftAuthenticator(origin=ORIGIN)
    opts = _options(os.urandom(32))
    with pytest.raises(wa.WebAuthnError, match="another kind"):
        wa.read_registration(key.create(opts, client_data_type="webauthn.get"))
    with pytest.raises(wa.WebAuthnError, match="another site"):
        wa.read_registration(key.create(opts, cross_origin=True))
    with pytest.raises(wa.WebAuthnError) as caught:
        wa.read_registration(key.create(opts, credential_id=b"\x00" * 1024))
    assert caught.value.reason == "credential_id"
    assert wa.read_registration(key.create(opts, credential_id=b"\x00" * 1023))[1]


def _garbage() -> list[Any]:
    return [
        None,
        5,
        "not json",
        "[]",
        {"response": 5},
        {"id": "a", "rawId": "a", "response": {}},
        {"id": "a", "rawId": "b", "response": {"clientDataJSON": b64url(b"{}")}},
    ]


@pytest.mark.parametrize("body", _garbage())
def test_read_registration_malformed(body: Any) -> None:
    with pytest.raises(wa.WebAuthnError):
        wa.read_registration(body)


@pytest.mark.parametrize(
    "value",
    [
        "%%%",
        b64url(b"\xff\x00"),
        b64url(cbor2.dumps([1, 2])),
        b64url(cbor2.dumps({"fmt": "none"})),
        b64url(cbor2.dumps({"fmt": "none", "authData": b"short", "attStmt": {}})),
        b64url(b"\xbf"),  # indefinite map, never closed
    ],
)
def test_malformed_attestation_object(value: str) -> None:
    key = SoftAuthenticator(origin=ORIGIN)
    created = key.create(_options(os.urandom(32)))
    created["response"]["attestationObject"] = value
    with pytest.raises(wa.WebAuthnError):
        wa.read_registration(created)


def test_attestation_statement_garbage_is_refused_not_raised() -> None:
    """A 'none' statement with content, and a packed one with an unparseable x5c: py_webauthn
    raises its own errors (some not Invalid*Response); we answer WebAuthnError."""
    key = SoftAuthenticator(origin=ORIGIN)
    challenge = os.urandom(32)
    created = key.create(_options(challenge), attestation="self")
    raw = base64.urlsafe_b64decode(created["response"]["attestationObject"] + "==")
    obj = cbor2.loads(raw)
    obj["attStmt"]["x5c"] = [b"not a certificate"]
    created["response"]["attestationObject"] = b64url(cbor2.dumps(obj))
    cred, facts = wa.read_registration(created)
    with pytest.raises(wa.WebAuthnError):
        _verify_registration(challenge, cred, facts, roots=[make_attestation_ca().root_pem])


# --- assertions ---------------------------------------------------------------------------------


def _enrolled(**create: Any) -> tuple[SoftAuthenticator, wa.VerifiedKey]:
    key = SoftAuthenticator(origin=ORIGIN, alg=create.pop("alg", ES256))
    challenge, cred, facts = _register(key, **create)
    return key, _verify_registration(challenge, cred, facts)


def _assert(key: SoftAuthenticator, stored: wa.VerifiedKey, **get: Any) -> wa.VerifiedAssertion:
    challenge = os.urandom(32)
    options = wa.authentication_options(
        rp_id=RP_ID, challenge=challenge, allow_credentials=[], timeout_ms=1000
    )
    cred, facts = wa.read_assertion(key.get(options, **get))
    assert facts.credential_id == key.credentials[0].credential_id
    return wa.verify_assertion(
        credential=cred,
        challenge=challenge,
        rp_id=RP_ID,
        origin=ORIGIN,
        public_key=stored.public_key,
    )


@pytest.mark.parametrize("alg", [ES256, EDDSA])
def test_assertion_verified(alg: int) -> None:
    key, stored = _enrolled(alg=alg)
    result = _assert(key, stored)
    assert result.sign_count == 1
    assert result.user_verified
    assert result.backup_eligible is False


def test_counter_left_to_the_caller() -> None:
    """py_webauthn is given 0: a regressed counter comes back for the caller to judge."""
    key, stored = _enrolled()
    assert _assert(key, stored, sign_count=0).sign_count == 0


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        ({"origin": "https://evil.example"}, "origin"),
        ({"rp_id": "evil.example"}, "rp_id"),
        ({"uv": False}, "user_verification"),
        ({"up": False}, "user_presence"),
        ({"challenge": b"\x07" * 32}, "challenge"),
    ],
)
def test_assertion_refusals(breakage: dict[str, Any], reason: str) -> None:
    key, stored = _enrolled()
    with pytest.raises(wa.WebAuthnError) as caught:
        _assert(key, stored, **breakage)
    assert caught.value.reason == reason


def test_assertion_with_another_key_refused() -> None:
    key, _ = _enrolled()
    _, other = _enrolled()
    with pytest.raises(wa.WebAuthnError) as caught:
        _assert(key, other)
    assert caught.value.reason == "signature"


def test_assertion_flags_reported() -> None:
    key, stored = _enrolled(be=True, bs=True)
    assert stored.backup_eligible is True
    result = _assert(key, stored, bs=True)
    assert result.backup_eligible is True
    assert result.backed_up is True


def test_backup_state_without_eligibility_is_refused() -> None:
    key, stored = _enrolled()
    with pytest.raises(wa.WebAuthnError):
        _assert(key, stored, be=False, bs=True)


def test_read_assertion_refuses_create_type_and_long_handles() -> None:
    key, _ = _enrolled()
    options = {"challenge": b64url(b"c" * 32), "rpId": RP_ID}
    with pytest.raises(wa.WebAuthnError, match="another kind"):
        wa.read_assertion(key.get(options, client_data_type="webauthn.create"))
    with pytest.raises(wa.WebAuthnError, match="too long"):
        wa.read_assertion(key.get(options, user_handle=b"u" * 65))
    _, facts = wa.read_assertion(key.get(options))
    assert facts.user_handle == b"subject-1"


@pytest.mark.parametrize("body", _garbage())
def test_read_assertion_malformed(body: Any) -> None:
    with pytest.raises(wa.WebAuthnError):
        wa.read_assertion(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("authenticatorData", "%%"),
        ("authenticatorData", b64url(b"short")),
        ("signature", "%%"),
        ("clientDataJSON", b64url(b"[]")),
        ("clientDataJSON", b64url(b'{"type": "webauthn.get", "challenge": 5, "origin": "x"}')),
    ],
)
def test_malformed_assertion_fields(field: str, value: str) -> None:
    key, stored = _enrolled()
    options = {"challenge": b64url(b"c" * 32), "rpId": RP_ID}
    assertion = key.get(options)
    assertion["response"][field] = value
    try:
        cred, _ = wa.read_assertion(assertion)
    except wa.WebAuthnError:
        return
    with pytest.raises(wa.WebAuthnError):
        wa.verify_assertion(
            credential=cred,
            challenge=b"c" * 32,
            rp_id=RP_ID,
            origin=ORIGIN,
            public_key=stored.public_key,
        )


def test_security_parameters_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        wa.verify_assertion({}, b"", RP_ID, ORIGIN, b"")  # type: ignore[misc]
