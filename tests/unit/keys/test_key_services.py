"""The signing-key service: generation, states from timestamps, rotation, retirement, JWKS,
encryption at rest."""

from __future__ import annotations

import datetime as dt
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask
from sqlalchemy import select

from idp.db import utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.keys import services as keys
from idp.keys.models import SigningKey

pytestmark = pytest.mark.usefixtures("app_ctx")

PUBLIC_MEMBERS = {"kty", "crv", "n", "e", "x", "y", "kid", "alg", "use"}


def row(kid: str) -> SigningKey:
    key = db.session.get(SigningKey, kid)
    assert key is not None
    return key


def travel(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make the key service see a later time (states follow from timestamps)."""
    later = utcnow() + dt.timedelta(seconds=seconds)
    monkeypatch.setattr(keys, "utcnow", lambda: later)
    keys.clear_caches()


# --- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kty", "crv", "key_type"),
    [
        ("RS256", "RSA", None, rsa.RSAPrivateKey),
        ("PS256", "RSA", None, rsa.RSAPrivateKey),
        ("ES256", "EC", "P-256", ec.EllipticCurvePrivateKey),
        ("EdDSA", "OKP", "Ed25519", ed25519.Ed25519PrivateKey),
    ],
)
def test_create_key_per_algorithm(alg: str, kty: str, crv: str | None, key_type: type) -> None:
    created = keys.create_key(alg, actor="tests")
    assert created.kid.startswith(alg.lower() + "-")
    assert created.public_jwk["kty"] == kty
    assert created.public_jwk.get("crv") == crv
    assert created.public_jwk["alg"] == alg
    assert created.public_jwk["kid"] == created.kid
    assert created.public_jwk["use"] == "sig"
    kid, private = keys.signing_key(alg)  # the newest active key of its algorithm
    assert kid == created.kid
    assert isinstance(private, key_type)
    if isinstance(private, rsa.RSAPrivateKey):
        assert private.key_size == 3072
    assert keys.public_jwk(private.public_key(), kid=kid, alg=alg) == created.public_jwk


@pytest.mark.parametrize("alg", ["HS256", "none", "RS512", ""])
def test_create_key_refuses_other_algorithms(alg: str) -> None:
    with pytest.raises(ValidationError):
        keys.create_key(alg)


def test_ensure_keys_is_idempotent() -> None:
    assert {k.alg for k in keys.list_keys() if k.state == "active"} == set(keys.SUPPORTED_ALGS)
    assert keys.ensure_keys() == []


def test_ensure_keys_creates_one_per_missing_algorithm() -> None:
    db.session.execute(SigningKey.__table__.delete().where(SigningKey.alg == "ES256"))
    db.session.commit()
    created = keys.ensure_keys(actor="tests")
    assert len(created) == 1
    assert row(created[0]).alg == "ES256"


# --- states -----------------------------------------------------------------------------------


def _key(
    now: dt.datetime,
    *,
    activates: float = -60,
    retired: float | None = None,
    removed: float | None = None,
) -> SigningKey:
    def at(offset: float | None) -> dt.datetime | None:
        return None if offset is None else now + dt.timedelta(seconds=offset)

    return SigningKey(
        kid="k",
        alg="ES256",
        public_jwk={},
        private_key_encrypted=b"",
        created_at=now,
        activates_at=at(activates),
        retired_at=at(retired),
        removed_at=at(removed),
    )


def test_states_follow_from_timestamps(app: Flask) -> None:
    now = utcnow()
    lifetime = (
        max(app.config["IDP"]["ACCESS_TOKEN_TTL"], app.config["IDP"]["ID_TOKEN_TTL"])
        + app.config["IDP"]["CLOCK_SKEW"]
    )
    assert keys.key_state(_key(now, activates=60), now) == "next"
    assert keys.key_state(_key(now), now) == "active"
    assert keys.key_state(_key(now, retired=60), now) == "active"
    assert keys.key_state(_key(now, retired=-1), now) == "retired"
    assert keys.key_state(_key(now, retired=-(lifetime - 1)), now) == "retired"
    assert keys.key_state(_key(now, retired=-lifetime), now) == "removed"
    assert keys.key_state(_key(now, removed=-1), now) == "removed"
    assert keys.key_state(_key(now, removed=60), now) == "active"
    assert keys.key_state(_key(now, activates=60, removed=-1), now) == "removed"


# --- rotation ---------------------------------------------------------------------------------


def test_rotation_publishes_the_new_key_before_it_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    old_kid, _ = keys.signing_key("ES256")
    [new] = keys.rotate("ES256", overlap=3600, actor="tests")

    published = {k["kid"] for k in json.loads(keys.jwks_document())["keys"]}
    assert new.kid in published
    assert old_kid in published
    assert keys.key_state(new) == "next"
    assert keys.signing_key("ES256")[0] == old_kid
    assert row(old_kid).retired_at == new.activates_at
    assert keys.verification_key(new.kid) is not None

    travel(monkeypatch, 3601)
    assert keys.signing_key("ES256")[0] == new.kid
    states = {k.kid: k.state for k in keys.list_keys()}
    assert states[new.kid] == "active"
    assert states[old_kid] == "retired"
    assert old_kid in {k["kid"] for k in json.loads(keys.jwks_document())["keys"]}

    travel(monkeypatch, 3600 + 24 * 3600)
    assert old_kid not in {k["kid"] for k in json.loads(keys.jwks_document())["keys"]}
    assert keys.verification_key(old_kid) is None
    assert old_kid not in {k.kid for k in keys.list_keys()}
    assert old_kid in {k.kid for k in keys.list_keys(include_removed=True)}


def test_rotation_without_overlap_signs_at_once() -> None:
    old_kid, _ = keys.signing_key("EdDSA")
    [new] = keys.rotate("EdDSA", overlap=0)
    assert keys.signing_key("EdDSA")[0] == new.kid
    assert keys.key_state(row(old_kid)) == "retired"


def test_rotation_of_every_algorithm() -> None:
    created = keys.rotate(overlap=60)
    assert sorted(k.alg for k in created) == sorted(keys.SUPPORTED_ALGS)


def test_rotation_refuses_bad_input() -> None:
    with pytest.raises(ValidationError):
        keys.rotate("HS256")
    with pytest.raises(ValidationError):
        keys.rotate("ES256", overlap=-1)


# --- retirement -------------------------------------------------------------------------------


def test_retire_refuses_the_only_key_of_an_algorithm() -> None:
    kid, _ = keys.signing_key("RS256")
    with pytest.raises(ConflictError, match="only"):
        keys.retire(kid)
    assert keys.key_state(row(kid)) == "active"


def test_retire_after_rotation_and_not_twice() -> None:
    old_kid, _ = keys.signing_key("ES256")
    keys.rotate("ES256", overlap=3600)
    retired = keys.retire(old_kid)
    assert keys.key_state(retired) == "retired"
    assert old_kid in {k["kid"] for k in keys.published_keys()}
    with pytest.raises(ConflictError, match="already"):
        keys.retire(old_kid)


def test_retire_unknown_key() -> None:
    with pytest.raises(NotFoundError):
        keys.retire("no-such-kid")


def test_no_active_key_is_an_error() -> None:
    for key in db.session.scalars(select(SigningKey).where(SigningKey.alg == "PS256")):
        key.removed_at = utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    keys.clear_caches()
    with pytest.raises(RuntimeError, match="no active PS256"):
        keys.signing_key("PS256")


# --- publication ------------------------------------------------------------------------------


def test_jwks_has_only_public_members() -> None:
    keys.rotate(overlap=60)
    document = json.loads(keys.jwks_document())
    assert len(document["keys"]) == 2 * len(keys.SUPPORTED_ALGS)
    for jwk in document["keys"]:
        assert set(jwk) <= PUBLIC_MEMBERS, jwk
        assert jwk["kty"] != "oct"
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)


# --- encryption at rest -----------------------------------------------------------------------


def test_private_key_is_stored_encrypted(app: Flask) -> None:
    kid, private = keys.signing_key("ES256")
    stored = row(kid).private_key_encrypted
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert der not in stored
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.private_numbers().private_value.to_bytes(32, "big") not in stored
    assert len(stored) == 12 + len(der) + 16  # nonce, ciphertext, GCM tag


def test_private_key_decrypts_only_with_the_right_kek(make_app: Callable[..., Flask]) -> None:
    kid, _ = keys.signing_key("ES256")
    other = make_app(SECRET_KEY="another-secret-key-for-another-deployment")
    with other.app_context(), pytest.raises(InvalidTag):
        keys.signing_key("ES256")
    same = make_app()
    with same.app_context():
        assert keys.signing_key("ES256")[0] == kid


def test_ciphertext_is_bound_to_its_kid() -> None:
    es_kid, _ = keys.signing_key("ES256")
    ed_kid, _ = keys.signing_key("EdDSA")
    row(ed_kid).private_key_encrypted = row(es_kid).private_key_encrypted
    db.session.commit()
    keys.clear_caches()
    with pytest.raises(InvalidTag):
        keys.signing_key("EdDSA")


def test_secrets_derive_from_secret_key_or_a_private_file(tmp_path: Path) -> None:
    config = {"SECRET_KEY": "one-secret", "KEYS_DIR": str(tmp_path / "unused")}
    assert keys.derive_secret(config, "kek") == keys.derive_secret(config, "kek")
    assert keys.derive_secret(config, "kek") != keys.derive_secret(config, "flask")
    assert not (tmp_path / "unused").exists()

    folder = {"SECRET_KEY": "", "KEYS_DIR": str(tmp_path / "keys")}
    first = keys.derive_secret(folder, "kek")
    assert len(first) == 32
    assert keys.derive_secret(folder, "kek") == first
    mode = stat.S_IMODE((tmp_path / "keys" / "kek.key").stat().st_mode)
    assert mode == 0o600
