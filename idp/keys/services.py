"""The key service: every signing key's life, from generation to removal.

States follow from timestamps so that every worker agrees without coordination:

- ``next``: generated and published in JWKS, not yet signing (``now < activates_at``);
- ``active``: the newest active key of an algorithm signs;
- ``retired``: no longer signs, still published until every token it signed has expired;
- ``removed``: no longer published (``removed_at`` set, or retired long enough ago).

Private keys are stored encrypted with AES-256-GCM under a key-encryption key (KEK) derived
from ``IDP_SECRET_KEY`` or read from ``keys/kek.key``. Decrypted keys are cached per process
and never logged; the JWKS never carries private members.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import Flask, current_app
from jwt import algorithms as jwk_algorithms
from sqlalchemy import select

from idp.audit.services import record
from idp.db import utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.keys.models import SigningKey

SUPPORTED_ALGS = ("RS256", "PS256", "ES256", "EdDSA")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


# --- secrets derived from IDP_SECRET_KEY or kept under keys/ ---------------------------------


def derive_secret(config: dict[str, Any], purpose: str) -> bytes:
    """Return 32 bytes for ``purpose`` ("kek", "flask", "pairwise"...).

    From ``IDP_SECRET_KEY`` by HKDF when set (so many machines agree), else from a random file
    ``keys/<purpose>.key`` created on first use with mode 0600.
    """
    secret = config.get("SECRET_KEY") or ""
    if secret:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"corp-id",
            info=f"corp-id/{purpose}/v1".encode(),
        ).derive(secret.encode())
    folder = Path(config["KEYS_DIR"])
    path = folder / f"{purpose}.key"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        data = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            data = path.read_bytes()
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    if len(data) != 32:
        raise RuntimeError(f"{path} must hold exactly 32 bytes")
    return data


# --- process caches ---------------------------------------------------------------------------


class _Cache:
    """Per-process caches. Holds only what any worker can rebuild from the database."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.private: dict[str, PrivateKey] = {}
        self.public: dict[str, tuple[float, str, Any]] = {}
        self.signing: dict[str, tuple[float, str]] = {}
        self.jwks: tuple[float, bytes] | None = None

    def clear(self) -> None:
        with self.lock:
            self.private.clear()
            self.public.clear()
            self.signing.clear()
            self.jwks = None


_cache = _Cache()


def clear_caches() -> None:
    """Forget cached keys and documents (after a rotation in this process, and in tests)."""
    _cache.clear()


def init_app(app: Flask) -> None:
    app.extensions["idp.kek"] = AESGCM(derive_secret(app.config["IDP"], "kek"))
    clear_caches()


# --- generation and encryption ----------------------------------------------------------------


def _generate(alg: str) -> PrivateKey:
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValidationError(f"unsupported algorithm {alg!r}")


def public_jwk(key: PublicKey, *, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of ``key``; never any private member."""
    if isinstance(key, rsa.RSAPublicKey):
        jwk = jwk_algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = jwk_algorithms.ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = jwk_algorithms.OKPAlgorithm.to_jwk(key, as_dict=True)
    public = {k: v for k, v in jwk.items() if k in ("kty", "crv", "n", "e", "x", "y")}
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


def _kek() -> AESGCM:
    kek: AESGCM = current_app.extensions["idp.kek"]
    return kek


def _encrypt(private: PrivateKey, *, kid: str) -> bytes:
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    nonce = secrets.token_bytes(12)
    return nonce + _kek().encrypt(nonce, der, kid.encode())


def _decrypt(blob: bytes, *, kid: str) -> PrivateKey:
    der = _kek().decrypt(blob[:12], blob[12:], kid.encode())
    # The DER was written by _encrypt from a key we generated, and AES-GCM has just
    # authenticated it (kid as associated data): re-validating an RSA key costs ~1 s of CPU
    # for 3072 bits, paid by every worker's first signature.
    key = serialization.load_der_private_key(
        der, password=None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise RuntimeError(f"key {kid} has an unsupported type")
    return key


# --- state ------------------------------------------------------------------------------------


def _max_token_lifetime() -> int:
    cfg = current_app.config["IDP"]
    return int(max(cfg["ACCESS_TOKEN_TTL"], cfg["ID_TOKEN_TTL"])) + int(cfg["CLOCK_SKEW"])


def key_state(key: SigningKey, now: dt.datetime | None = None) -> str:
    now = now or utcnow()
    if key.removed_at is not None and key.removed_at <= now:
        return "removed"
    if now < key.activates_at:
        return "next"
    if key.retired_at is not None and key.retired_at <= now:
        if key.retired_at + dt.timedelta(seconds=_max_token_lifetime()) <= now:
            return "removed"
        return "retired"
    return "active"


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    state: str
    created_at: dt.datetime
    activates_at: dt.datetime
    retired_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "alg": self.alg,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "activates_at": self.activates_at.isoformat(),
            "retired_at": self.retired_at.isoformat() if self.retired_at else None,
        }


def list_keys(*, include_removed: bool = False) -> list[KeyInfo]:
    """Every key with its state, newest first."""
    now = utcnow()
    keys = db.session.scalars(select(SigningKey).order_by(SigningKey.created_at.desc())).all()
    infos = [
        KeyInfo(k.kid, k.alg, key_state(k, now), k.created_at, k.activates_at, k.retired_at)
        for k in keys
    ]
    return [i for i in infos if include_removed or i.state != "removed"]


def create_key(
    alg: str, *, activates_at: dt.datetime | None = None, actor: str = "system"
) -> SigningKey:
    """Generate a key for ``alg`` and store it encrypted. Returns the new key (committed)."""
    if alg not in SUPPORTED_ALGS:
        raise ValidationError(f"unsupported algorithm {alg!r}; use one of {SUPPORTED_ALGS}")
    private = _generate(alg)
    kid = f"{alg.lower()}-{utcnow():%Y%m%d}-{secrets.token_hex(4)}"
    key = SigningKey(
        kid=kid,
        alg=alg,
        public_jwk=public_jwk(private.public_key(), kid=kid, alg=alg),
        private_key_encrypted=_encrypt(private, kid=kid),
        activates_at=activates_at or utcnow(),
    )
    db.session.add(key)
    record(
        "keys:key:create",
        actor=actor,
        subject=f"key:{kid}",
        details={"alg": alg, "activates_at": key.activates_at.isoformat()},
    )
    db.session.commit()
    clear_caches()
    return key


def ensure_keys(actor: str = "system") -> list[str]:
    """Create an active key for every supported algorithm that has none. Returns new kids."""
    now = utcnow()
    existing = db.session.scalars(select(SigningKey)).all()
    have = {k.alg for k in existing if key_state(k, now) in ("active", "next")}
    return [create_key(alg, actor=actor).kid for alg in SUPPORTED_ALGS if alg not in have]


def rotate(
    alg: str | None = None, *, overlap: int | None = None, actor: str = "system"
) -> list[SigningKey]:
    """Start a rotation for ``alg`` (every algorithm if None).

    The new key is published at once and signs from ``now + overlap`` seconds; the key it
    replaces retires at that moment and stays published until its tokens have expired.
    """
    if overlap is None:
        overlap = int(current_app.config["IDP"]["KEY_ROTATION_OVERLAP"])
    if overlap < 0:
        raise ValidationError("overlap must not be negative")
    algs = [alg] if alg else list(SUPPORTED_ALGS)
    now = utcnow()
    activates_at = now + dt.timedelta(seconds=overlap)
    created = []
    for a in algs:
        if a not in SUPPORTED_ALGS:
            raise ValidationError(f"unsupported algorithm {a!r}")
        current = [
            k
            for k in db.session.scalars(select(SigningKey).where(SigningKey.alg == a))
            if key_state(k, now) in ("active", "next")
        ]
        new = create_key(a, activates_at=activates_at, actor=actor)
        for old in current:
            old.retired_at = activates_at
            record(
                "keys:key:retire",
                actor=actor,
                subject=f"key:{old.kid}",
                details={"retires_at": activates_at.isoformat(), "replaced_by": new.kid},
            )
        db.session.commit()
        created.append(new)
    clear_caches()
    return created


def retire(kid: str, *, actor: str = "system") -> SigningKey:
    """Stop signing with ``kid`` now; it stays published until its tokens have expired.

    Raises ``NotFoundError`` for an unknown key and ``ConflictError`` when it is the only key
    able to sign its algorithm (rotate first).
    """
    key = db.session.get(SigningKey, kid)
    now = utcnow()
    if key is None:
        raise NotFoundError(f"no key {kid!r}")
    if key_state(key, now) in ("retired", "removed"):
        raise ConflictError(f"key {kid} is already {key_state(key, now)}")
    others = [
        k
        for k in db.session.scalars(select(SigningKey).where(SigningKey.alg == key.alg))
        if k.kid != kid and key_state(k, now) in ("active", "next")
    ]
    if not others:
        raise ConflictError(f"{kid} is the only {key.alg} key; rotate before retiring it")
    key.retired_at = now
    record("keys:key:retire", actor=actor, subject=f"key:{kid}", details={"alg": key.alg})
    db.session.commit()
    clear_caches()
    return key


# --- use --------------------------------------------------------------------------------------


def _cache_ttl() -> float:
    return float(current_app.config["IDP"]["JWKS_CACHE_TTL"])


def signing_key(alg: str) -> tuple[str, PrivateKey]:
    """Return ``(kid, private key)`` of the key that signs ``alg`` now."""
    now_mono = time.monotonic()
    cached = _cache.signing.get(alg)
    if cached is None or cached[0] <= now_mono:
        now = utcnow()
        candidates = [
            k
            for k in db.session.scalars(select(SigningKey).where(SigningKey.alg == alg))
            if key_state(k, now) == "active"
        ]
        if not candidates:
            raise RuntimeError(f"no active {alg} signing key; run `idp init` or `idp keys rotate`")
        best = max(candidates, key=lambda k: k.activates_at)
        _cache.signing[alg] = (now_mono + _cache_ttl(), best.kid)
        if best.kid not in _cache.private:
            _cache.private[best.kid] = _decrypt(best.private_key_encrypted, kid=best.kid)
        kid = best.kid
    else:
        kid = cached[1]
        if kid not in _cache.private:
            row = db.session.get(SigningKey, kid)
            if row is None:
                raise RuntimeError(f"signing key {kid} disappeared")
            _cache.private[kid] = _decrypt(row.private_key_encrypted, kid=kid)
    return kid, _cache.private[kid]


def published_keys() -> list[dict[str, Any]]:
    now = utcnow()
    keys = db.session.scalars(select(SigningKey).order_by(SigningKey.created_at)).all()
    return [dict(k.public_jwk) for k in keys if key_state(k, now) != "removed"]


def jwks_document() -> bytes:
    """The JWKS as bytes, serialised once per cache period."""
    now_mono = time.monotonic()
    cached = _cache.jwks
    if cached is not None and cached[0] > now_mono:
        return cached[1]
    body = json.dumps({"keys": published_keys()}, separators=(",", ":")).encode()
    _cache.jwks = (now_mono + _cache_ttl(), body)
    return body


def verification_key(kid: str) -> tuple[str, PublicKey] | None:
    """``(alg, public key)`` of a published key, for checking our own tokens; None if unknown."""
    now_mono = time.monotonic()
    cached = _cache.public.get(kid)
    if cached is not None and cached[0] > now_mono:
        return cached[1], cached[2]
    row = db.session.get(SigningKey, kid)
    if row is None or key_state(row) == "removed":
        return None
    algorithm = jwk_algorithms.get_default_algorithms()[row.alg]
    key = algorithm.from_jwk(json.dumps(row.public_jwk))
    _cache.public[kid] = (now_mono + _cache_ttl(), row.alg, key)
    return row.alg, key


def cached_jwks() -> bytes | None:
    """The cached JWKS bytes if still fresh, without touching the database."""
    cached = _cache.jwks
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return None
