"""The one door to py_webauthn: option building and response verification (WebAuthn L3 §7).

Nothing else imports ``webauthn``. Every security parameter is keyword-only. Whatever
py_webauthn raises — its ``Invalid*Response`` errors, the other ``WebAuthnException``
subclasses it does not wrap, and plain parse errors (JSON, CBOR, base64url) — leaves this module
as ``WebAuthnError``, a 400 with a person-readable message, never a 500.

What py_webauthn leaves to us is done by the callers (``idp.authn.ceremonies``): challenge
storage and binding, credential lookup and uniqueness, the user handle, the BE flag, the sign
counter. The checks that need the raw response are here: ``crossOrigin`` and ``topOrigin`` are
refused, the credential ID length is bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    aaguid_to_string,
    options_to_json_dict,
    parse_attestation_object,
    parse_authenticator_data,
    parse_client_data_json,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AttestationFormat,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from idp.errors import IdpError

# WebAuthn L3 §5.1: a credential ID is at most 1023 bytes.
MAX_CREDENTIAL_ID_BYTES = 1023
# A user handle is at most 64 bytes (§5.4.3).
MAX_USER_HANDLE_BYTES = 64
# ES256, EdDSA, RS256, in the order of preference sent to the authenticator.
ALGORITHMS = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
TRANSPORTS = frozenset(t.value for t in AuthenticatorTransport)
CREATE = "webauthn.create"
MALFORMED = "The security key's response is malformed."
GET = "webauthn.get"


class WebAuthnError(IdpError):
    """The security key's response cannot be accepted."""

    status = 400
    code = "webauthn_refused"

    def __init__(self, message: str = "", *, reason: str = "invalid", **details: Any) -> None:
        super().__init__(message or "The security key's response cannot be accepted.", **details)
        self.reason = reason


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: object, *, what: str = "value") -> bytes:
    """Strict base64url (no padding needed, nothing else allowed). Raises ``WebAuthnError``."""
    if not isinstance(value, str) or len(value) > 64 * 1024:
        raise WebAuthnError(f"The {what} is not base64url.", reason="malformed")
    try:
        raw = value.encode("ascii")
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise WebAuthnError(f"The {what} is not base64url.", reason="malformed") from None


@dataclass(frozen=True)
class ClientData:
    """The parts of clientDataJSON the caller needs before verifying (to find the challenge)."""

    type: str
    challenge: bytes


@dataclass(frozen=True)
class RegistrationFacts:
    """What a registration response claims, read before verification (for the policy)."""

    challenge: bytes
    credential_id: bytes
    fmt: str
    aaguid: str
    has_trust_path: bool
    backup_eligible: bool
    transports: list[str]


@dataclass(frozen=True)
class VerifiedKey:
    """A verified new credential, ready to store."""

    credential_id: bytes
    public_key: bytes
    sign_count: int
    aaguid: str
    fmt: str
    backup_eligible: bool
    transports: list[str]


@dataclass(frozen=True)
class AssertionFacts:
    """What an assertion claims, read before verification (to find challenge and credential)."""

    challenge: bytes
    credential_id: bytes
    user_handle: bytes | None


@dataclass(frozen=True)
class VerifiedAssertion:
    """A verified assertion: the counter and flags it carried."""

    credential_id: bytes
    sign_count: int
    backup_eligible: bool
    backed_up: bool
    user_verified: bool


# --- options -----------------------------------------------------------------------------------


def _descriptors(credentials: list[tuple[bytes, list[str]]]) -> list[PublicKeyCredentialDescriptor]:
    return [
        PublicKeyCredentialDescriptor(
            id=cid, transports=[AuthenticatorTransport(t) for t in transports if t in TRANSPORTS]
        )
        for cid, transports in credentials
    ]


def registration_options(
    *,
    rp_id: str,
    rp_name: str,
    user_id: bytes,
    user_name: str,
    user_display_name: str,
    challenge: bytes,
    exclude_credentials: list[tuple[bytes, list[str]]],
    timeout_ms: int,
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptions (JSON form): discoverable credential and user
    verification required, direct attestation, ES256/EdDSA/RS256."""
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name=rp_name,
        user_id=user_id,
        user_name=user_name,
        user_display_name=user_display_name,
        challenge=challenge,
        timeout=timeout_ms,
        attestation=AttestationConveyancePreference.DIRECT,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=_descriptors(exclude_credentials),
        supported_pub_key_algs=list(ALGORITHMS),
    )
    return dict(options_to_json_dict(options))


def authentication_options(
    *,
    rp_id: str,
    challenge: bytes,
    allow_credentials: list[tuple[bytes, list[str]]],
    timeout_ms: int,
) -> dict[str, Any]:
    """PublicKeyCredentialRequestOptions (JSON form), user verification required; an empty
    ``allow_credentials`` lets the authenticator offer its discoverable credentials."""
    options = generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=timeout_ms,
        allow_credentials=_descriptors(allow_credentials),
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return dict(options_to_json_dict(options))


# --- parsing before verification ---------------------------------------------------------------


def _object(credential: object) -> dict[str, Any]:
    if isinstance(credential, str | bytes):
        try:
            credential = json.loads(credential)
        except (ValueError, UnicodeDecodeError):
            raise WebAuthnError("The response is not JSON.", reason="malformed") from None
    if not isinstance(credential, dict) or not isinstance(credential.get("response"), dict):
        raise WebAuthnError("The response is not a WebAuthn credential.", reason="malformed")
    return credential


def _credential_id(credential: dict[str, Any]) -> bytes:
    raw = b64url_decode(credential.get("rawId"), what="credential ID")
    if credential.get("id") != credential.get("rawId"):
        raise WebAuthnError("The credential's id and rawId differ.", reason="malformed")
    if not raw or len(raw) > MAX_CREDENTIAL_ID_BYTES:
        raise WebAuthnError(
            "The credential ID is empty or longer than 1023 bytes.", reason="credential_id"
        )
    return raw


def client_data(credential: dict[str, Any], *, expected_type: str) -> ClientData:
    """Parse clientDataJSON; refuse another ceremony's type and cross-origin use."""
    raw = b64url_decode(credential["response"].get("clientDataJSON"), what="clientDataJSON")
    try:
        parsed = json.loads(raw)
        collected = parse_client_data_json(raw)
    except (WebAuthnException, ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        raise WebAuthnError("The client data is malformed.", reason="malformed") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("challenge"), str):
        raise WebAuthnError("The client data is malformed.", reason="malformed")
    if collected.type != expected_type:
        raise WebAuthnError(
            "The response belongs to another kind of ceremony.", reason="ceremony_type"
        )
    # py_webauthn ignores these: the ceremony must run in our own top-level page.
    if parsed.get("crossOrigin") is True or "topOrigin" in parsed:
        raise WebAuthnError("The security key was used from another site.", reason="origin")
    return ClientData(type=str(collected.type), challenge=bytes(collected.challenge))


def read_registration(credential: object) -> tuple[dict[str, Any], RegistrationFacts]:
    """Parse a RegistrationResponseJSON enough to apply the policy and find the challenge.

    Returns ``(credential_dict, facts)``. Raises ``WebAuthnError``."""
    cred = _object(credential)
    data = client_data(cred, expected_type=CREATE)
    credential_id = _credential_id(cred)
    raw = b64url_decode(cred["response"].get("attestationObject"), what="attestation object")
    try:
        attestation = parse_attestation_object(raw)
    except (WebAuthnException, ValueError, TypeError, KeyError, IndexError):
        raise WebAuthnError("The attestation object is malformed.", reason="malformed") from None
    attested = attestation.auth_data.attested_credential_data
    if attested is None:
        raise WebAuthnError("The response carries no new credential.", reason="malformed")
    if attested.credential_id != credential_id:
        raise WebAuthnError("The credential ID does not match the attestation.", reason="malformed")
    transports = cred["response"].get("transports")
    if not isinstance(transports, list):
        transports = []
    facts = RegistrationFacts(
        challenge=data.challenge,
        credential_id=credential_id,
        fmt=str(getattr(attestation.fmt, "value", attestation.fmt)),
        aaguid=aaguid_to_string(attested.aaguid),
        has_trust_path=bool(attestation.att_stmt.x5c),
        backup_eligible=bool(attestation.auth_data.flags.be),
        transports=sorted({t for t in transports if isinstance(t, str) and t in TRANSPORTS}),
    )
    return cred, facts


def read_assertion(credential: object) -> tuple[dict[str, Any], AssertionFacts]:
    """Parse an AuthenticationResponseJSON enough to find the challenge and the credential.

    Returns ``(credential_dict, facts)``. Raises ``WebAuthnError``."""
    cred = _object(credential)
    data = client_data(cred, expected_type=GET)
    credential_id = _credential_id(cred)
    handle = cred["response"].get("userHandle")
    user_handle = None
    if handle is not None and handle != "":
        user_handle = b64url_decode(handle, what="user handle")
        if len(user_handle) > MAX_USER_HANDLE_BYTES:
            raise WebAuthnError("The user handle is too long.", reason="malformed")
    return cred, AssertionFacts(data.challenge, credential_id, user_handle)


# --- verification ------------------------------------------------------------------------------


def verify_registration(
    *,
    credential: dict[str, Any],
    challenge: bytes,
    rp_id: str,
    origin: str,
    fmt: str,
    root_certs: list[bytes],
) -> VerifiedKey:
    """WebAuthn L3 §7.1 as py_webauthn does it (type, challenge, origin, RP ID hash, UP, UV,
    algorithm, attestation statement; the trust path against ``root_certs`` when given).

    Raises ``WebAuthnError``."""
    roots: dict[AttestationFormat, list[bytes]] | None = None
    if root_certs:
        try:
            roots = {AttestationFormat(fmt): list(root_certs)}
        except ValueError:
            raise WebAuthnError("Unsupported attestation format.", reason="attestation") from None
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_presence=True,
            require_user_verification=True,
            supported_pub_key_algs=list(ALGORITHMS),
            pem_root_certs_bytes_by_fmt=roots,
        )
        flags = parse_attestation_object(
            b64url_decode(credential["response"]["attestationObject"])
        ).auth_data.flags
    except WebAuthnException as exc:
        raise WebAuthnError(_describe(exc), reason=_reason(exc)) from None
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
        raise WebAuthnError(
            "The security key's response is malformed.", reason="malformed"
        ) from None
    transports = credential["response"].get("transports")
    return VerifiedKey(
        credential_id=bytes(verified.credential_id),
        public_key=bytes(verified.credential_public_key),
        sign_count=int(verified.sign_count),
        aaguid=str(verified.aaguid),
        fmt=str(getattr(verified.fmt, "value", verified.fmt)),
        backup_eligible=bool(flags.be),
        transports=sorted(
            {t for t in (transports or []) if isinstance(t, str) and t in TRANSPORTS}
        ),
    )


def verify_assertion(
    *,
    credential: dict[str, Any],
    challenge: bytes,
    rp_id: str,
    origin: str,
    public_key: bytes,
) -> VerifiedAssertion:
    """WebAuthn L3 §7.2 as py_webauthn does it (type, challenge, origin, RP ID hash, UP, UV,
    signature). The counter is *not* judged here: py_webauthn is given 0, so the caller sees
    the new count after the signature was verified and decides (compare-and-set, clone marking).

    Raises ``WebAuthnError``."""
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=public_key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
        flags = parse_authenticator_data(
            b64url_decode(credential["response"]["authenticatorData"])
        ).flags
    except WebAuthnException as exc:
        raise WebAuthnError(_describe(exc), reason=_reason(exc)) from None
    except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
        raise WebAuthnError(
            "The security key's response is malformed.", reason="malformed"
        ) from None
    return VerifiedAssertion(
        credential_id=bytes(verified.credential_id),
        sign_count=int(verified.new_sign_count),
        backup_eligible=bool(flags.be),
        backed_up=bool(flags.bs),
        user_verified=bool(verified.user_verified),
    )


def _reason(exc: Exception) -> str:
    text = str(exc).lower()
    for needle, reason in (
        ("origin", "origin"),
        ("rp id", "rp_id"),
        ("user verification", "user_verification"),
        ("user was not present", "user_presence"),
        ("user presence", "user_presence"),
        ("challenge", "challenge"),
        ("signature", "signature"),
        ("certificate", "attestation"),
        ("attestation", "attestation"),
        ("alg", "algorithm"),
        ("backup", "flags"),
    ):
        if needle in text:
            return reason
    return "invalid"


_MESSAGES = {
    "origin": "The security key was used for another site.",
    "rp_id": "The security key answered for another site.",
    "user_verification": "The security key did not verify you (PIN or fingerprint). "
    "Set up a PIN on the key and try again.",
    "user_presence": "The security key was not touched.",
    "challenge": "The sign-in request does not match. Start again.",
    "signature": "The security key's signature is not valid.",
    "attestation": "The security key's attestation could not be verified.",
    "algorithm": "The security key uses an algorithm Corp ID does not accept.",
    "flags": "The security key's response is malformed.",
}


def _describe(exc: Exception) -> str:
    return _MESSAGES.get(_reason(exc), "The security key's response cannot be accepted.")
