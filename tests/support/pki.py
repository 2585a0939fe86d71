"""A test PKI (tests only): root CAs, intermediates, attestation certificates and signed FIDO
Metadata Service (MDS3) BLOBs, all made with ``cryptography`` and PyJWT.

``make_ca()`` gives a CA that can issue intermediates (``ca.intermediate()``), packed
attestation leaves (``ca.attestation(aaguid=...)``, WebAuthn §8.2.1 requirements) and MDS BLOB
signing certificates (``ca.leaf()``); ``make_blob(entries, signer=...)`` signs a BLOB with the
signer's key and its chain in the JWS ``x5c`` header.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# FIDO's id-fido-gen-ce-aaguid extension, carried by packed attestation certificates.
AAGUID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.45724.1.1.4")
TEST_AAGUID = "2fc0579f-8113-47ea-b116-bb5a8db9202a"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Issued:
    """A certificate, its private key, and the chain above it (issuer first, root excluded)."""

    cert: x509.Certificate
    key: Any
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def leaf_key(self) -> Any:
        """The private key, under the name ``SoftAuthenticator.create(attestation_ca=...)``
        uses: an attestation ``Issued`` stands in for its ``AttestationCA``."""
        return self.key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def x5c(self) -> list[bytes]:
        """DER certificates, this one first, as in an attestation statement."""
        return [self.der] + [c.public_bytes(serialization.Encoding.DER) for c in self.chain]

    @property
    def x5c_b64(self) -> list[str]:
        """The JWS ``x5c`` header value (RFC 7515: standard base64 DER)."""
        return [base64.b64encode(c).decode() for c in self.x5c]

    def _issue(
        self,
        *,
        subject: x509.Name,
        ca: bool,
        days: int = 3650,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        extra: list[x509.ExtensionType] | None = None,
        san: str | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(days=1))
            .not_valid_after(not_after or now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(_key_usage(ca=ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
            )
        for ext in extra or []:
            builder = builder.add_extension(ext, critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert, key, self._chain_for_child())

    def intermediate(self, name: str = "Test Intermediate CA", **kwargs: Any) -> Issued:
        """A CA certificate issued by this one."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return self._issue(subject=subject, ca=True, **kwargs)

    def leaf(self, name: str = "mds.example", **kwargs: Any) -> Issued:
        """An end-entity certificate (e.g. the MDS BLOB signer) issued by this one."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        return self._issue(subject=subject, ca=False, san=name, **kwargs)

    def attestation(
        self, *, aaguid: str = TEST_AAGUID, name: str = "Corp ID Test Key", **kwargs: Any
    ) -> Issued:
        """A packed attestation certificate (WebAuthn §8.2.1: C, O, OU "Authenticator
        Attestation", CN; not a CA; the AAGUID extension)."""
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "HK"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Authenticator Attestation"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Attestation"),
            ]
        )
        extension = x509.UnrecognizedExtension(AAGUID_OID, b"\x04\x10" + uuid.UUID(aaguid).bytes)
        return self._issue(subject=subject, ca=False, extra=[extension], **kwargs)

    def _chain_for_child(self) -> list[x509.Certificate]:
        # The chain a child presents: its issuers up to, not including, the root.
        if _is_root(self):
            return []
        return [self.cert, *self.chain]


def _is_root(issued: Issued) -> bool:
    return issued.cert.issuer == issued.cert.subject


def make_ca(
    name: str = "Corp ID Test Root CA",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed root CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key, [])


def entry(
    aaguid: str = TEST_AAGUID,
    *,
    description: str | None = "Corp ID Test Key",
    roots: list[bytes] | None = None,
    statuses: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """An MDS3 BLOB payload entry. ``roots``: DER certificates; ``statuses``: (status, date)."""
    statement: dict[str, Any] = {
        "aaguid": aaguid,
        "attestationRootCertificates": [base64.b64encode(r).decode() for r in roots or []],
        "protocolFamily": "fido2",
        "schema": 3,
    }
    if description is not None:
        statement["description"] = description
    reports = statuses if statuses is not None else [("FIDO_CERTIFIED_L1", "2024-01-01")]
    return {
        "aaguid": aaguid,
        "metadataStatement": statement,
        "statusReports": [{"status": s, "effectiveDate": d} for s, d in reports],
        "timeOfLastStatusChange": reports[-1][1] if reports else "2024-01-01",
    }


def make_blob(
    entries: list[dict[str, Any]],
    *,
    signer: Issued,
    number: int = 1,
    next_update: dt.date | None = None,
    x5c: list[str] | None = None,
    header: dict[str, Any] | None = None,
) -> bytes:
    """A signed MDS3 BLOB (a compact JWS, ES256) with ``signer``'s chain in ``x5c``."""
    payload = {
        "legalHeader": "Test metadata, not FIDO's.",
        "no": number,
        "nextUpdate": (next_update or (_now().date() + dt.timedelta(days=30))).isoformat(),
        "entries": entries,
    }
    headers: dict[str, Any] = {"typ": "JWT", "x5c": x5c if x5c is not None else signer.x5c_b64}
    headers.update(header or {})
    return jwt.encode(payload, signer.key, algorithm="ES256", headers=headers).encode()
