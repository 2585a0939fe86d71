"""The relying-party service: registration rules (each with a negative test), secrets, disabling."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import func, select

from idp.audit.models import AuditEvent
from idp.clients import services
from idp.clients.models import AuthMethod, Client, ClientStatus, SubjectType
from idp.db import utcnow
from idp.errors import ConflictError, NotFoundError, ValidationError
from idp.extensions import db
from idp.oauth.models import Grant
from idp.orgs.models import Company, Person
from idp.security import digest

pytestmark = pytest.mark.usefixtures("app_ctx")

RP = "https://tax.example.gov.hk/callback"


def make(**overrides: Any) -> tuple[Client, str | None]:
    settings: dict[str, Any] = {
        "name": "Tax e-service",
        "redirect_uris": [RP],
        "auth_method": "client_secret_basic",
    }
    settings.update(overrides)
    return services.create_client(**settings)


def public_jwk(kind: str = "ec", kid: str | None = "k1") -> dict[str, Any]:
    if kind == "ec":
        jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True)
    elif kind == "okp":
        jwk = OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key(), as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key(), as_dict=True)
    return {**jwk, "kid": kid} if kid else jwk


def private_jwk() -> dict[str, Any]:
    return {
        **ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True),
        "kid": "k1",
    }


def client_count() -> int:
    return int(db.session.scalar(select(func.count()).select_from(Client)) or 0)


def audit(tag: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.tag == tag)))


# --- creation -----------------------------------------------------------------------------------


def test_confidential_client_gets_a_prefixed_secret_stored_only_as_its_digest() -> None:
    client, secret = make()
    assert secret is not None
    assert secret.startswith("cis_")
    assert len(secret) > 40
    assert client.secret_hash == digest(secret)
    assert client.check_client_secret(secret)
    assert not client.check_client_secret(secret + "x")
    row = db.session.execute(select(Client.__table__).where(Client.id == client.id)).one()
    assert secret not in json.dumps([str(v) for v in row])


def test_defaults_follow_oidc_core() -> None:
    client, _ = make()
    assert client.scopes == ["openid", "profile", "email", "corp"]
    assert client.grant_types == ["authorization_code", "refresh_token"]
    assert client.id_token_alg == "RS256"
    assert client.subject_type is SubjectType.PUBLIC
    assert client.sector_identifier is None
    assert client.status is ClientStatus.ACTIVE
    assert client.is_active


def test_client_ids_are_random_url_safe_and_unique() -> None:
    ids = {make()[0].client_id for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20,64}", i) for i in ids)


def test_client_ids_never_start_like_a_command_line_option(monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = iter(["-starts-with-dash", "_starts-with-underscore", "Fine-id_0123456789ab"])
    monkeypatch.setattr(services, "new_public_id", lambda: next(candidates))
    assert services.new_client_id() == "Fine-id_0123456789ab"


def test_create_records_an_audit_event_without_the_secret() -> None:
    client, secret = make()
    [event] = audit("clients:client:create")
    assert event.subject == f"client:{client.client_id}"
    assert event.actor == "operator:cli"
    assert secret is not None
    assert secret not in json.dumps(event.details)
    assert client.secret_hash not in json.dumps(event.details)


@pytest.mark.parametrize("method", ["none", "private_key_jwt"])
def test_clients_without_secret_methods_get_no_secret(method: str) -> None:
    extra = {"jwks": {"keys": [public_jwk()]}} if method == "private_key_jwt" else {}
    client, secret = make(auth_method=method, **extra)
    assert secret is None
    assert client.secret_hash is None
    assert client.auth_method is AuthMethod(method)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_secret_methods_get_a_secret(method: str) -> None:
    client, secret = make(auth_method=method)
    assert secret
    assert client.check_client_secret(secret)


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:8080/cb",
        "http://[::1]/cb",
        "http://localhost:3000/callback",
        "http://127.0.0.1/cb",
    ],
)
def test_http_is_allowed_on_loopback_hosts(uri: str) -> None:
    client, _ = make(redirect_uris=[uri])
    assert client.redirect_uris == [uri]


def test_redirect_uris_are_stored_as_exact_strings() -> None:
    uri = "https://Tax.Example.gov.hk:443/cb/?lang=en"
    client, _ = make(redirect_uris=[uri])
    assert client.redirect_uris == [uri]
    assert client.check_redirect_uri(uri)
    assert not client.check_redirect_uri("https://tax.example.gov.hk/cb/?lang=en")
    assert not client.check_redirect_uri(uri.rstrip("n"))


@pytest.mark.parametrize(
    "jwks",
    [
        {"keys": [public_jwk("ec")]},
        {"keys": [public_jwk("okp")]},
        {"keys": [public_jwk("rsa")]},
        {"keys": [public_jwk("ec", "a"), public_jwk("rsa", "b")]},
    ],
)
def test_private_key_jwt_with_public_jwks(jwks: dict[str, Any]) -> None:
    client, _ = make(auth_method="private_key_jwt", jwks=jwks)
    assert client.jwks == jwks
    assert client.jwks_uri is None


def test_private_key_jwt_with_jwks_uri() -> None:
    client, _ = make(auth_method="private_key_jwt", jwks_uri="https://rp.example/jwks.json")
    assert client.jwks_uri == "https://rp.example/jwks.json"
    assert client.jwks is None


def test_pairwise_sector_is_the_redirect_host() -> None:
    client, _ = make(
        subject_type="pairwise",
        redirect_uris=["https://bank.example.hk/a", "https://bank.example.hk/b"],
    )
    assert client.subject_type is SubjectType.PAIRWISE
    assert client.sector_identifier == "bank.example.hk"


def test_client_credentials_only_client_needs_no_redirect_uri() -> None:
    client, _ = make(redirect_uris=[], grant_types=["client_credentials"], scopes=["corp"])
    assert client.redirect_uris == []
    assert client.grant_types == ["client_credentials"]


@pytest.mark.parametrize("alg", ["ES256", "PS256", "EdDSA", "RS256"])
def test_id_token_alg_can_be_chosen(alg: str) -> None:
    assert make(id_token_alg=alg)[0].id_token_alg == alg


def test_fapi2_client_defaults_to_ps256() -> None:
    client, secret = make(
        profile="fapi2", auth_method="private_key_jwt", jwks={"keys": [public_jwk()]}
    )
    assert client.id_token_alg == "PS256"
    assert secret is None


def test_logout_uris_are_stored() -> None:
    client, _ = make(
        post_logout_redirect_uris=["https://tax.example.gov.hk/bye"],
        backchannel_logout_uri="https://tax.example.gov.hk/bcl",
    )
    assert client.post_logout_redirect_uris == ["https://tax.example.gov.hk/bye"]
    assert client.backchannel_logout_uri == "https://tax.example.gov.hk/bcl"


# --- validation: every rule refuses ---------------------------------------------------------

BAD_URIS = [
    pytest.param("/callback", id="relative"),
    pytest.param("tax.example.gov.hk/cb", id="no-scheme"),
    pytest.param("https://tax.example.gov.hk/cb#frag", id="fragment"),
    pytest.param("https://tax.example.gov.hk/cb#", id="empty-fragment"),
    pytest.param("http://tax.example.gov.hk/cb", id="http-not-loopback"),
    pytest.param("http://127.0.0.1.evil.example/cb", id="http-loopback-lookalike"),
    pytest.param("http://localhost.evil.example/cb", id="http-localhost-lookalike"),
    pytest.param("com.example.app:/callback", id="custom-scheme"),
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("https://user:pw@tax.example.gov.hk/cb", id="credentials"),
    pytest.param("https://*.example.gov.hk/cb", id="wildcard"),
    pytest.param("https://tax.example.gov.hk/c b", id="space"),
    pytest.param("https://tax.example.gov.hk/\ncb", id="newline"),
    pytest.param("https://tax.example.gov.hk:99999/cb", id="bad-port"),
    pytest.param("https:///cb", id="no-host"),
    pytest.param("https://tax.example.gov.hk/" + "a" * 2000, id="too-long"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_redirect_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="redirect_uris"):
        make(redirect_uris=[RP, uri])
    assert client_count() == 0


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_post_logout_redirect_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="post_logout_redirect_uris"):
        make(post_logout_redirect_uris=[uri])


@pytest.mark.parametrize("uri", BAD_URIS)
def test_bad_backchannel_logout_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="backchannel_logout_uri"):
        make(backchannel_logout_uri=uri)


def test_redirect_uris_must_be_a_list() -> None:
    with pytest.raises(ValidationError, match="list"):
        make(redirect_uris=RP)


def test_authorization_code_needs_a_redirect_uri() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        make(redirect_uris=[])


@pytest.mark.parametrize("method", ["client_secret_jwt", "tls_client_auth", "", "NONE"])
def test_unknown_auth_method_is_refused(method: str) -> None:
    with pytest.raises(ValidationError, match="auth_method"):
        make(auth_method=method)


def test_private_key_jwt_needs_keys() -> None:
    with pytest.raises(ValidationError, match="jwks"):
        make(auth_method="private_key_jwt")


def test_jwks_and_jwks_uri_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        make(
            auth_method="private_key_jwt",
            jwks={"keys": [public_jwk()]},
            jwks_uri="https://rp.example/jwks.json",
        )


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "k"])
def test_jwks_with_a_private_member_is_refused(member: str) -> None:
    key = {**public_jwk(), member: "AQAB"}
    with pytest.raises(ValidationError, match="private"):
        make(auth_method="private_key_jwt", jwks={"keys": [key]})


def test_jwks_with_a_full_private_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="private"):
        make(auth_method="private_key_jwt", jwks={"keys": [private_jwk()]})


def test_symmetric_jwk_is_refused() -> None:
    with pytest.raises(ValidationError, match="symmetric"):
        make(auth_method="private_key_jwt", jwks={"keys": [{"kty": "oct", "kid": "s"}]})


@pytest.mark.parametrize(
    "jwks",
    [
        pytest.param({"keys": []}, id="empty"),
        pytest.param({"kty": "EC"}, id="not-a-set"),
        pytest.param([{"kty": "EC"}], id="list"),
        pytest.param({"keys": ["x"]}, id="key-not-object"),
        pytest.param({"keys": [{"kty": "EC", "crv": "P-256", "x": "zz", "y": "zz"}]}, id="bad-ec"),
        pytest.param({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, id="bad-rsa"),
        pytest.param({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA"}]}, id="x25519"),
        pytest.param({"keys": [{"kty": "XYZ"}]}, id="unknown-kty"),
        pytest.param({"keys": [public_jwk("ec", None), public_jwk("ec", None)]}, id="no-kids"),
        pytest.param(
            {"keys": [public_jwk("ec", "same"), public_jwk("ec", "same")]}, id="duplicate-kids"
        ),
        pytest.param({"keys": [public_jwk("ec", str(i)) for i in range(21)]}, id="too-many"),
    ],
)
def test_malformed_jwks_is_refused(jwks: Any) -> None:
    with pytest.raises(ValidationError, match="jwks"):
        make(auth_method="private_key_jwt", jwks=jwks)


def test_short_rsa_key_is_refused() -> None:
    short = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505
        as_dict=True,
    )
    with pytest.raises(ValidationError, match="2048"):
        make(auth_method="private_key_jwt", jwks={"keys": [short]})


@pytest.mark.parametrize(
    "uri",
    [
        "http://rp.example/jwks.json",
        "http://127.0.0.1/jwks.json",
        "https://rp.example/jwks.json#x",
        "jwks.json",
    ],
)
def test_jwks_uri_must_be_https(uri: str) -> None:
    with pytest.raises(ValidationError, match="jwks_uri"):
        make(auth_method="private_key_jwt", jwks_uri=uri)


def test_public_client_cannot_use_client_credentials() -> None:
    with pytest.raises(ValidationError, match="client_credentials"):
        make(auth_method="none", grant_types=["authorization_code", "client_credentials"])


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "RS512", "ES384", "", "rs256"])
def test_bad_id_token_alg_is_refused(alg: str) -> None:
    with pytest.raises(ValidationError, match="id_token_alg"):
        make(id_token_alg=alg)


def test_unknown_subject_type_is_refused() -> None:
    with pytest.raises(ValidationError, match="subject_type"):
        make(subject_type="sectorial")


def test_pairwise_redirect_uris_must_share_a_host() -> None:
    with pytest.raises(ValidationError, match="one host"):
        make(
            subject_type="pairwise",
            redirect_uris=["https://a.example.hk/cb", "https://b.example.hk/cb"],
        )


def test_pairwise_needs_a_redirect_uri() -> None:
    with pytest.raises(ValidationError, match="pairwise"):
        make(subject_type="pairwise", redirect_uris=[], grant_types=["client_credentials"])


@pytest.mark.parametrize("scopes", [["openid", "admin"], ["phone"], []])
def test_scopes_must_be_supported(scopes: list[str]) -> None:
    with pytest.raises(ValidationError, match="scopes"):
        make(scopes=scopes)


@pytest.mark.parametrize(
    "grants", [["implicit"], ["password"], ["authorization_code", "device"], []]
)
def test_grant_types_must_be_supported(grants: list[str]) -> None:
    with pytest.raises(ValidationError, match="grant_types"):
        make(grant_types=grants)


def test_refresh_token_alone_is_refused() -> None:
    with pytest.raises(ValidationError, match="refresh_token"):
        make(grant_types=["refresh_token"])


def test_fapi2_needs_private_key_jwt() -> None:
    with pytest.raises(ValidationError, match="fapi2"):
        make(profile="fapi2")


def test_fapi2_refuses_rs256() -> None:
    with pytest.raises(ValidationError, match="fapi2"):
        make(
            profile="fapi2",
            auth_method="private_key_jwt",
            jwks={"keys": [public_jwk()]},
            id_token_alg="RS256",
        )


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValidationError, match="profile"):
        make(profile="fapi1")


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "Tax\x00", None])
def test_bad_name_is_refused(name: Any) -> None:
    with pytest.raises(ValidationError, match="name"):
        make(name=name)


# --- lookup -----------------------------------------------------------------------------------


def test_get_and_query_client() -> None:
    client, _ = make()
    assert services.get_client(client.client_id) is client
    assert services.query_client(client.client_id) is client
    with pytest.raises(NotFoundError):
        services.get_client("no-such-client")


@pytest.mark.parametrize(
    "value", ["nope", "", None, 42, "x" * 65, "abc\x00", "abc def", "ab/c", "\ud800"]
)
def test_query_client_returns_none_for_unknown_or_malformed(value: Any) -> None:
    make()
    assert services.query_client(value) is None


def test_disabled_clients_are_still_found() -> None:
    client, _ = make()
    services.disable_client(client.client_id)
    assert services.query_client(client.client_id) is client
    assert services.get_client(client.client_id).status is ClientStatus.DISABLED


def test_list_clients_oldest_first() -> None:
    first, _ = make(name="First")
    second, _ = make(name="Second")
    assert [c.client_id for c in services.list_clients()] == [first.client_id, second.client_id]


def test_client_as_dict_has_no_secret() -> None:
    client, secret = make()
    data = services.client_as_dict(client)
    assert "secret_hash" not in data
    assert "client_secret" not in data
    text = json.dumps(data)
    assert secret is not None
    assert secret not in text
    assert client.secret_hash not in text
    assert data["client_id"] == client.client_id
    assert data["has_secret"] is True
    assert data["auth_method"] == "client_secret_basic"
    assert data["status"] == "active"


# --- update -----------------------------------------------------------------------------------


def test_update_changes_settings_and_audits_names_of_fields() -> None:
    client, _ = make()
    updated = services.update_client(
        client.client_id, name="Tax portal", redirect_uris=[RP, "https://tax.example.gov.hk/cb2"]
    )
    assert updated.name == "Tax portal"
    assert len(updated.redirect_uris) == 2
    [event] = audit("clients:client:update")
    assert event.details == {"changed": ["name", "redirect_uris"]}


def test_update_applies_every_rule() -> None:
    client, _ = make()
    with pytest.raises(ValidationError, match="fragment"):
        services.update_client(client.client_id, redirect_uris=["https://x.example/cb#f"])
    db.session.rollback()
    assert services.get_client(client.client_id).redirect_uris == [RP]


def test_update_checks_the_combined_result() -> None:
    client, _ = make(grant_types=["client_credentials"], redirect_uris=[])
    with pytest.raises(ValidationError, match="client_credentials"):
        services.update_client(client.client_id, auth_method="none")


@pytest.mark.parametrize("field", ["secret_hash", "status", "client_id", "id", "sector_identifier"])
def test_update_refuses_fields_that_are_not_settings(field: str) -> None:
    client, _ = make()
    with pytest.raises(ValidationError, match="cannot change"):
        services.update_client(client.client_id, **{field: "x"})


def test_update_unknown_client() -> None:
    with pytest.raises(NotFoundError):
        services.update_client("nope", name="x")


def test_switching_away_from_a_secret_method_drops_the_secret() -> None:
    client, secret = make()
    services.update_client(
        client.client_id, auth_method="private_key_jwt", jwks={"keys": [public_jwk()]}
    )
    assert client.secret_hash is None
    assert secret is not None
    assert not client.check_client_secret(secret)


def test_update_recomputes_the_pairwise_sector() -> None:
    client, _ = make(subject_type="pairwise")
    services.update_client(client.client_id, redirect_uris=["https://new.example.hk/cb"])
    assert client.sector_identifier == "new.example.hk"


# --- secrets ----------------------------------------------------------------------------------


def test_rotate_secret_replaces_the_old_one() -> None:
    client, old = make()
    new = services.rotate_secret(client.client_id)
    assert new != old
    assert new.startswith("cis_")
    assert client.check_client_secret(new)
    assert old is not None
    assert not client.check_client_secret(old)
    [event] = audit("clients:client:rotate-secret")
    assert new not in json.dumps(event.details)


@pytest.mark.parametrize("method", ["none", "private_key_jwt"])
def test_rotate_secret_refuses_clients_without_secrets(method: str) -> None:
    extra = {"jwks": {"keys": [public_jwk()]}} if method == "private_key_jwt" else {}
    client, _ = make(auth_method=method, **extra)
    with pytest.raises(ConflictError):
        services.rotate_secret(client.client_id)
    assert client.secret_hash is None


def test_rotate_secret_unknown_client() -> None:
    with pytest.raises(NotFoundError):
        services.rotate_secret("nope")


def test_secret_method_after_public_needs_rotate() -> None:
    client, _ = make(auth_method="none")
    services.update_client(client.client_id, auth_method="client_secret_post")
    assert client.secret_hash is None
    secret = services.rotate_secret(client.client_id)
    assert client.check_client_secret(secret)


# --- disabling --------------------------------------------------------------------------------


def _grant(
    client: Client, *, revoked: dt.datetime | None = None, reason: str | None = None
) -> Grant:
    person = Person(display_name="Chan Tai Man", email="chan@example.hk")
    company = db.session.scalar(select(Company).where(Company.br_number == "11111111"))
    if company is None:
        company = Company(br_number="11111111", name_en="Acme Limited")
    db.session.add_all([person, company])
    db.session.flush()
    now = utcnow()
    grant = Grant(
        gid=f"g-{person.id}-{client.id}",
        client_id=client.id,
        person_id=person.id,
        company_id=company.id,
        scope="openid",
        auth_time=now,
        expires_at=now + dt.timedelta(days=1),
        revoked_at=revoked,
        revoked_reason=reason,
    )
    db.session.add(grant)
    db.session.commit()
    return grant


def test_disable_revokes_live_grants_of_that_client_only() -> None:
    client, secret = make()
    other, _ = make(name="Bank")
    live = _grant(client)
    earlier = utcnow() - dt.timedelta(hours=1)
    old = _grant(client, revoked=earlier, reason="logout")
    untouched = _grant(other)

    services.disable_client(client.client_id)
    db.session.expire_all()

    assert services.get_client(client.client_id).status is ClientStatus.DISABLED
    assert live.revoked_at is not None
    assert live.revoked_reason == "client_disabled"
    assert old.revoked_reason == "logout"
    assert old.revoked_at == earlier
    assert untouched.revoked_at is None
    assert secret is not None
    assert not client.check_client_secret(secret)
    assert not client.check_endpoint_auth_method("client_secret_basic", "token")
    [event] = audit("clients:client:disable")
    assert event.details == {"grants_revoked": 1}


def test_disable_is_idempotent_and_unknown_is_not_found() -> None:
    client, _ = make()
    services.disable_client(client.client_id)
    services.disable_client(client.client_id)
    assert client.status is ClientStatus.DISABLED
    with pytest.raises(NotFoundError):
        services.disable_client("nope")
