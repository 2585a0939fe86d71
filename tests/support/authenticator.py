"""A software WebAuthn authenticator, for tests only.

It builds real registration (``navigator.credentials.create``) and assertion
(``navigator.credentials.get``) responses, in the JSON form browsers send (WebAuthn Level 3
``toJSON()``), from the options JSON a relying party hands out:

- ES256 (P-256) and EdDSA (Ed25519) credential keys, discoverable (resident) or not;
- UP / UV / BE / BS flags and the signature counter settable per ceremony;
- attestation ``none``, ``packed`` self attestation, and ``packed`` with an ``x5c`` chain given
  an attestation certificate and key (``make_attestation_ca`` builds a test CA);
- anything a negative test needs to break: origin, RP ID, challenge, client data type, user
  handle, credential ID.

    auth = SoftAuthenticator(origin="http://127.0.0.1:5000")
    credential = auth.create(options)            # options: the dict the server returned
    assertion = auth.get(request_options)
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID, ObjectIdentifier

ES256 = -7
EDDSA = -8

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_BE = 0x08
FLAG_BS = 0x10
FLAG_AT = 0x40

# FIDO's id-fido-gen-ce-aaguid extension, carried by packed attestation certificates.
AAGUID_OID = ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
DEFAULT_AAGUID = "6d44ba9b-f6ec-2e49-b930-0c8fe920cb73"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    """A credential the authenticator holds."""

    credential_id: bytes
    alg: int
    private_key: Any
    rp_id: str
    user_handle: bytes
    resident: bool = True
    sign_count: int = 0
    backup_eligible: bool = False

    def cose_public_key(self) -> bytes:
        public = self.private_key.public_key()
        if self.alg == ES256:
            numbers = public.public_numbers()
            return cbor2.dumps(
                {
                    1: 2,
                    3: ES256,
                    -1: 1,
                    -2: numbers.x.to_bytes(32, "big"),
                    -3: numbers.y.to_bytes(32, "big"),
                }
            )
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cbor2.dumps({1: 1, 3: EDDSA, -1: 6, -2: raw})

    def sign(self, data: bytes) -> bytes:
        if self.alg == ES256:
            return bytes(self.private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return bytes(self.private_key.sign(data))


def new_private_key(alg: int) -> Any:
    if alg == ES256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg == EDDSA:
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg}")


@dataclass
class AttestationCA:
    """A test attestation CA: a root, and a leaf certificate + key for ``packed`` attestation."""

    root_cert: x509.Certificate
    root_key: Any
    leaf_cert: x509.Certificate
    leaf_key: Any

    @property
    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def x5c(self) -> list[bytes]:
        return [self.leaf_cert.public_bytes(serialization.Encoding.DER)]


def make_attestation_ca(
    *, aaguid: str = DEFAULT_AAGUID, name: str = "Corp ID Test Attestation"
) -> AttestationCA:
    """A root CA and a leaf certificate meeting the packed-attestation requirements
    (WebAuthn §8.2.1: C, O, OU "Authenticator Attestation", CN; not a CA; AAGUID extension)."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "HK"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Key"),
        ]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(root_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # The value is a DER OCTET STRING of the 16 AAGUID bytes.
            x509.UnrecognizedExtension(AAGUID_OID, b"\x04\x10" + uuid.UUID(aaguid).bytes),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return AttestationCA(root, root_key, leaf, leaf_key)


@dataclass
class SoftAuthenticator:
    """A roaming security key in software. ``origin`` is what the browser would report."""

    origin: str
    aaguid: str = DEFAULT_AAGUID
    alg: int = ES256
    credentials: list[Credential] = field(default_factory=list)
    transports: list[str] = field(default_factory=lambda: ["usb"])

    # --- registration -------------------------------------------------------------------------

    def create(
        self,
        options: dict[str, Any],
        *,
        alg: int | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: bytes | None = None,
        client_data_type: str = "webauthn.create",
        up: bool = True,
        uv: bool = True,
        be: bool = False,
        bs: bool = False,
        sign_count: int = 0,
        resident: bool = True,
        credential_id: bytes | None = None,
        attestation: str = "none",
        attestation_ca: AttestationCA | None = None,
        aaguid: str | None = None,
        cross_origin: bool = False,
        keep: bool = True,
    ) -> dict[str, Any]:
        """Make a credential for ``options`` (the publicKey creation options, JSON form).

        ``attestation``: ``"none"``, ``"self"`` (packed, no x5c) or ``"packed"`` (x5c from
        ``attestation_ca``). Returns the RegistrationResponseJSON dict."""
        if attestation == "packed" and attestation_ca is None:
            raise ValueError("packed attestation with x5c needs attestation_ca")
        opts = options.get("publicKey", options)
        rp_id = rp_id or opts.get("rp", {}).get("id") or urlsplit(self.origin).hostname or ""
        user_handle = unb64url(opts["user"]["id"])
        chosen_alg = alg if alg is not None else self._pick_alg(opts)
        key = new_private_key(chosen_alg)
        cred = Credential(
            credential_id=credential_id if credential_id is not None else os.urandom(32),
            alg=chosen_alg,
            private_key=key,
            rp_id=rp_id,
            user_handle=user_handle,
            resident=resident,
            sign_count=sign_count,
            backup_eligible=be,
        )
        client_data = self._client_data(
            client_data_type,
            challenge if challenge is not None else unb64url(opts["challenge"]),
            origin,
            cross_origin,
        )
        flags = FLAG_AT | (FLAG_UP if up else 0) | (FLAG_UV if uv else 0)
        flags |= (FLAG_BE if be else 0) | (FLAG_BS if bs else 0)
        guid = uuid.UUID(aaguid or self.aaguid).bytes
        attested = (
            guid
            + struct.pack(">H", len(cred.credential_id))
            + cred.credential_id
            + cred.cose_public_key()
        )
        auth_data = self._auth_data(rp_id, flags, sign_count) + attested
        signed = auth_data + hashlib.sha256(client_data).digest()
        if attestation == "none":
            fmt, stmt = "none", {}
        elif attestation == "self":
            fmt, stmt = "packed", {"alg": chosen_alg, "sig": cred.sign(signed)}
        elif attestation == "packed":
            assert attestation_ca is not None
            sig = attestation_ca.leaf_key.sign(signed, ec.ECDSA(hashes.SHA256()))
            fmt, stmt = "packed", {"alg": ES256, "sig": sig, "x5c": attestation_ca.x5c}
        else:
            raise ValueError(f"unknown attestation {attestation!r}")
        attestation_object = cbor2.dumps({"fmt": fmt, "attStmt": stmt, "authData": auth_data})
        if keep:
            self.credentials.append(cred)
        return {
            "id": b64url(cred.credential_id),
            "rawId": b64url(cred.credential_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation_object),
                "transports": list(self.transports),
            },
        }

    # --- authentication -----------------------------------------------------------------------

    def get(
        self,
        options: dict[str, Any],
        *,
        credential: Credential | None = None,
        origin: str | None = None,
        rp_id: str | None = None,
        challenge: bytes | None = None,
        client_data_type: str = "webauthn.get",
        up: bool = True,
        uv: bool = True,
        be: bool | None = None,
        bs: bool = False,
        sign_count: int | None = None,
        user_handle: bytes | None = None,
        credential_id: bytes | None = None,
        cross_origin: bool = False,
    ) -> dict[str, Any]:
        """Answer ``options`` (the publicKey request options, JSON form) with ``credential``
        (default: the first allowed one, or the first discoverable one for the RP ID).

        The counter goes up by one unless ``sign_count`` is given. Returns the
        AuthenticationResponseJSON dict."""
        opts = options.get("publicKey", options)
        rp_id = rp_id or opts.get("rpId") or urlsplit(self.origin).hostname or ""
        cred = credential or self._choose(opts)
        if sign_count is None:
            cred.sign_count += 1
            count = cred.sign_count
        else:
            count = sign_count
        client_data = self._client_data(
            client_data_type,
            challenge if challenge is not None else unb64url(opts["challenge"]),
            origin,
            cross_origin,
        )
        backup = cred.backup_eligible if be is None else be
        flags = (FLAG_UP if up else 0) | (FLAG_UV if uv else 0)
        flags |= (FLAG_BE if backup else 0) | (FLAG_BS if bs else 0)
        auth_data = self._auth_data(rp_id, flags, count)
        signature = cred.sign(auth_data + hashlib.sha256(client_data).digest())
        handle = cred.user_handle if user_handle is None else user_handle
        raw_id = cred.credential_id if credential_id is None else credential_id
        return {
            "id": b64url(raw_id),
            "rawId": b64url(raw_id),
            "type": "public-key",
            "authenticatorAttachment": "cross-platform",
            "clientExtensionResults": {},
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(handle) if cred.resident or user_handle else None,
            },
        }

    # --- helpers ------------------------------------------------------------------------------

    def _pick_alg(self, opts: dict[str, Any]) -> int:
        offered = [p.get("alg") for p in opts.get("pubKeyCredParams", [])]
        if self.alg in offered or not offered:
            return self.alg
        for alg in offered:
            if alg in (ES256, EDDSA):
                return int(alg)
        raise ValueError(f"no supported algorithm in {offered}")

    def _choose(self, opts: dict[str, Any]) -> Credential:
        allowed = [unb64url(c["id"]) for c in opts.get("allowCredentials") or []]
        rp_id = opts.get("rpId")
        for cred in self.credentials:
            if allowed and cred.credential_id in allowed:
                return cred
            if not allowed and cred.resident and (rp_id is None or cred.rp_id == rp_id):
                return cred
        raise LookupError("NotAllowedError: no credential for these options")

    def _client_data(
        self, kind: str, challenge: bytes, origin: str | None, cross_origin: bool
    ) -> bytes:
        body = {
            "type": kind,
            "challenge": b64url(challenge),
            "origin": origin or self.origin,
            "crossOrigin": cross_origin,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def _auth_data(rp_id: str, flags: int, sign_count: int) -> bytes:
        return (
            hashlib.sha256(rp_id.encode()).digest() + bytes([flags]) + struct.pack(">I", sign_count)
        )
