"""DPoP (RFC 9449): the one place proofs of possession are checked, and server nonces.

A proof is a JWS the client signs with a key it holds and names in the header (``jwk``).
``check_proof`` applies §4.3 to it: one ``DPoP`` header, compact JWS, ``typ`` dpop+jwt, an
asymmetric algorithm from our list, a public ``jwk`` without private members, the signature,
``jti``, ``htm``, ``htu`` (against our issuer, ignoring query and fragment), ``iat`` within
``IDP_DPOP_IAT_WINDOW``, ``ath`` at resource endpoints and ``nonce`` when required; the
``jti`` is then marked used (keyed by the key's thumbprint) across every worker.

Nonces (§8, §9) are stateless so that any worker accepts any worker's: an HMAC over a time
slot of ``IDP_DPOP_NONCE_LIFETIME`` seconds; the current and the previous slot's are accepted.

Client-signed JWTs are verified with joserfc (as ``idp.oauth.grants.PrivateKeyJWT`` does).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import current_app
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from idp import cache
from idp.oauth.discovery import DPOP_SIGNING_ALGS

PROOF_TYP = "dpop+jwt"
# FAPI 2.0 Security Profile §5.4.1: no RS256 for bank clients.
FAPI2_DPOP_ALGS = ("ES256", "PS256", "EdDSA")
# Members only private or symmetric JWKs carry (RFC 7517, RFC 7518 §6).
PRIVATE_MEMBERS = frozenset(("d", "p", "q", "dp", "dq", "qi", "k", "oth"))
# An RSA-4096 proof is about 2.5 KB; nothing longer is parsed.
MAX_PROOF_LENGTH = 4096
MAX_JTI_LENGTH = 256
MAX_NONCE_LENGTH = 128
KEY_TYPE_FOR_ALG = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}


class DPoPError(OAuth2Error):
    """A DPoP proof was refused: ``invalid_dpop_proof``, or ``use_dpop_nonce`` (then
    ``nonce`` is the value the client must put in its next proof, sent as ``DPoP-Nonce``)."""

    status_code = 400

    def __init__(self, error: str, description: str, *, nonce: str | None = None) -> None:
        super().__init__(description=description)
        self.error = error
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = list(super().get_headers())
        if self.nonce:
            headers.append(("DPoP-Nonce", self.nonce))
        return headers


def invalid(description: str) -> DPoPError:
    return DPoPError("invalid_dpop_proof", description)


@dataclass(frozen=True)
class Proof:
    """A checked proof: the key's RFC 7638 thumbprint (``jkt``) and the proof's claims."""

    jkt: str
    alg: str
    claims: dict[str, Any]


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]


# --- thumbprints and hashes -------------------------------------------------------------------


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def access_token_hash(access_token: str) -> str:
    """``ath``: base64url of the SHA-256 of the access token (RFC 9449 §4.2)."""
    return b64u(hashlib.sha256(access_token.encode("ascii")).digest())


def is_jkt(value: object) -> bool:
    """Whether ``value`` looks like a base64url SHA-256 JWK thumbprint (43 characters)."""
    if not isinstance(value, str) or len(value) != 43:
        return False
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


# --- nonces -----------------------------------------------------------------------------------


def _nonce_key() -> bytes:
    key = current_app.extensions.get("idp.dpop_nonce_key")
    if key is None:
        from idp.keys.services import derive_secret

        key = derive_secret(current_app.config["IDP"], "dpop-nonce")
        current_app.extensions["idp.dpop_nonce_key"] = key
    return bytes(key)


def _nonce_for_slot(slot: int) -> str:
    mac = hmac.new(_nonce_key(), b"dpop-nonce\x00" + str(slot).encode(), hashlib.sha256)
    return b64u(mac.digest())


def _slot(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // max(1, int(_cfg("DPOP_NONCE_LIFETIME"))))


def current_nonce() -> str:
    """The nonce to hand out now (``DPoP-Nonce``); any worker accepts it for one to two
    nonce lifetimes."""
    return _nonce_for_slot(_slot())


def is_valid_nonce(nonce: object) -> bool:
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH:
        return False
    slot = _slot()
    return any(
        hmac.compare_digest(nonce.encode(), _nonce_for_slot(s).encode()) for s in (slot, slot - 1)
    )


# --- the proof --------------------------------------------------------------------------------


class _ProofRegistry(JWSRegistry):
    """joserfc's registry restricted to the allowed algorithms, without the library's
    warning on the "EdDSA" name (superseded by RFC 9864, still what DPoP clients send), and
    with room in the header for an RSA ``jwk``."""

    max_header_length = 2048
    max_payload_length = 1024
    max_signature_length = 1024

    def get_alg(self, name: str) -> Any:
        if name not in (self.allowed or ()) or name not in self.algorithms:
            raise invalid(f"The DPoP proof algorithm {name!r} is not accepted.")
        return self.algorithms[name]


def proof_header_value(headers: Any) -> str | None:
    """The one ``DPoP`` header's value, None when there is none; ``DPoPError`` when it is
    repeated (WSGI servers join repeated headers with commas, which a compact JWS never has)
    or too large."""
    values = headers.getlist("DPoP") if hasattr(headers, "getlist") else [headers.get("DPoP")]
    values = [v for v in values if v is not None]
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise invalid("Send exactly one DPoP header.")
    value = str(values[0]).strip()
    if len(value) > MAX_PROOF_LENGTH:
        raise invalid("The DPoP proof is too large.")
    if not value:
        raise invalid("The DPoP header is empty.")
    return value


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("The DPoP proof is not a compact JWS.") from None
    if not isinstance(data, dict):
        raise invalid("The DPoP proof is not a compact JWS.")
    return data


def _public_key(header: dict[str, Any], alg: str) -> Any:
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise invalid("The DPoP proof header must carry the public key as 'jwk'.")
    private = PRIVATE_MEMBERS.intersection(jwk)
    if private:
        raise invalid("The DPoP proof 'jwk' must be a public key (it has private members).")
    kty = jwk.get("kty")
    expected = KEY_TYPE_FOR_ALG.get(alg, ("RSA", None))
    if kty != expected[0] or (expected[1] is not None and jwk.get("crv") != expected[1]):
        raise invalid(f"The DPoP proof 'jwk' does not fit the algorithm {alg}.")
    key_class: Any = {"EC": ECKey, "OKP": OKPKey, "RSA": RSAKey}[kty]
    try:
        key = key_class.import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError):
        raise invalid("The DPoP proof 'jwk' is not a valid public key.") from None
    if kty == "RSA" and not 2048 <= key.raw_value.key_size <= 4096:
        raise invalid("The DPoP proof RSA key must be 2048 to 4096 bits.")
    return key


def normalise_url(url: str) -> str | None:
    """``scheme://host[:port]/path`` of ``url`` (RFC 3986 §6.2.2-6.2.3: case of scheme and
    host, default port, empty path), without query and fragment; None if it is not http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


def check_proof(
    value: str,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    require_nonce: bool = False,
    algs: tuple[str, ...] = DPOP_SIGNING_ALGS,
) -> Proof:
    """Check the proof ``value`` for a ``method`` request to ``url`` (our issuer's URL of the
    endpoint), with ``ath`` for ``access_token`` when given. Marks its ``jti`` used.

    Returns the ``Proof``; raises ``DPoPError`` (``use_dpop_nonce`` with a fresh nonce when
    ``require_nonce`` and the proof has no valid nonce, or when its nonce is stale)."""
    if len(value) > MAX_PROOF_LENGTH:
        raise invalid("The DPoP proof is too large.")
    if value.count(".") != 2:
        raise invalid("The DPoP proof is not a compact JWS.")
    header = _segment_json(value.split(".", 1)[0])
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() != PROOF_TYP:
        raise invalid("The DPoP proof 'typ' must be 'dpop+jwt'.")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algs:
        raise invalid(f"The DPoP proof algorithm must be one of {', '.join(algs)}.")
    key = _public_key(header, alg)
    try:
        signed = jws.deserialize_compact(
            value, key, registry=_ProofRegistry(algorithms=[alg], strict_check_header=False)
        )
    except DPoPError:
        raise
    except (JoseError, ValueError, TypeError, KeyError):
        raise invalid("The DPoP proof signature is not valid.") from None
    try:
        claims = json.loads(signed.payload)
    except (ValueError, UnicodeDecodeError):
        raise invalid("The DPoP proof claims are not JSON.") from None
    if not isinstance(claims, dict):
        raise invalid("The DPoP proof claims are not a JSON object.")
    jkt = str(key.thumbprint())
    _check_claims(claims, method=method, url=url, access_token=access_token)
    nonce = claims.get("nonce")
    if nonce is not None and not is_valid_nonce(nonce):
        raise DPoPError("use_dpop_nonce", "The DPoP nonce is stale.", nonce=current_nonce())
    if require_nonce:
        _require_nonce(claims)
    ttl = int(_cfg("DPOP_IAT_WINDOW")) + int(_cfg("DPOP_IAT_LEEWAY")) + 5
    if not cache.use_once("dpop-jti", f"{jkt}\x00{claims['jti']}", ttl=ttl):
        raise invalid("The DPoP proof was already used ('jti' replayed).")
    return Proof(jkt=jkt, alg=alg, claims=claims)


def _require_nonce(claims: dict[str, Any]) -> None:
    if claims.get("nonce") is None:
        raise DPoPError(
            "use_dpop_nonce", "Put the server's DPoP-Nonce in the proof.", nonce=current_nonce()
        )


def require(proof: Proof, *, algs: tuple[str, ...], nonce: bool) -> None:
    """Stricter rules for an already checked ``proof`` (a fapi2 client's): its algorithm in
    ``algs``, and a server nonce when ``nonce``. Raises ``DPoPError``."""
    if proof.alg not in algs:
        raise invalid(f"The DPoP proof algorithm must be one of {', '.join(algs)}.")
    if nonce:
        _require_nonce(proof.claims)


def _check_claims(
    claims: dict[str, Any], *, method: str, url: str, access_token: str | None
) -> None:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise invalid("The DPoP proof needs a 'jti' string of at most 256 characters.")
    if claims.get("htm") != method:
        raise invalid(f"The DPoP proof 'htm' must be {method!r}.")
    htu = claims.get("htu")
    expected = normalise_url(url)
    if not isinstance(htu, str) or len(htu) > 2048 or normalise_url(htu) != expected:
        raise invalid(f"The DPoP proof 'htu' must be {expected}.")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise invalid("The DPoP proof needs a numeric 'iat'.")
    now = time.time()
    if iat < now - int(_cfg("DPOP_IAT_WINDOW")):
        raise invalid("The DPoP proof is too old ('iat').")
    if iat > now + int(_cfg("DPOP_IAT_LEEWAY")):
        raise invalid("The DPoP proof is issued in the future ('iat').")
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(
            ath.encode(), access_token_hash(access_token).encode()
        ):
            raise invalid("The DPoP proof 'ath' must be the hash of the access token.")


def request_proof(
    flask_request: Any,
    url: str,
    *,
    access_token: str | None = None,
    require_nonce: bool = False,
    algs: tuple[str, ...] = DPOP_SIGNING_ALGS,
) -> Proof | None:
    """The checked proof of this Flask request for ``url``, None when it has no DPoP header;
    ``DPoPError`` when the proof is refused."""
    value = proof_header_value(flask_request.headers)
    if value is None:
        return None
    return check_proof(
        value,
        method=flask_request.method,
        url=url,
        access_token=access_token,
        require_nonce=require_nonce,
        algs=algs,
    )


def proof_jkt_at(flask_request: Any, url: str, *, require_nonce: bool = False) -> str | None:
    """For PAR (RFC 9449 §10.1): the ``jkt`` of the POST proof at ``url`` (no ``ath``),
    None when no DPoP header was sent; raises ``DPoPError`` otherwise."""
    proof = request_proof(flask_request, url, require_nonce=require_nonce)
    return proof.jkt if proof else None


def endpoint_url(flask_request: Any) -> str:
    """The URL of the current endpoint under our issuer (not the URL the WSGI server saw,
    which is http behind a TLS-terminating proxy)."""
    return str(_cfg("ISSUER")) + str(flask_request.path)
