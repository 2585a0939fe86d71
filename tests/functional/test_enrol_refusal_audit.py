"""A key refused at enrolment is audited (``webauthn:key:refused``): by the attestation policy
or by the registration checks. The event is committed on its own while the enrolment itself
writes nothing; it names the reason, the AAGUID and format the key claimed, and holds no
secret (no challenge, credential ID, public key, invitation token or attestation)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from idp.audit.models import AuditEvent
from idp.authn import attestation
from idp.authn.models import SecurityKey
from idp.extensions import db
from idp.orgs.models import Invitation, Person
from tests.functional.conftest import Browser, KeyHolder, Live
from tests.support import ceremony, pki
from tests.support.authenticator import DEFAULT_AAGUID, SoftAuthenticator, b64url

REFUSED = "webauthn:key:refused"


@pytest.fixture
def start(invite: Callable[..., str], browser: Callable[[], Browser],
          soft_key: Callable[..., SoftAuthenticator]
          ) -> Callable[..., tuple[Browser, requests.Response, SoftAuthenticator, str]]:
    """A fresh browser on a fresh invitation's enrolment page, a software key, the link."""

    def factory(**invite_kwargs: Any
                ) -> tuple[Browser, requests.Response, SoftAuthenticator, str]:
        b = browser()
        link = invite(**invite_kwargs)
        page = b.go(link)
        assert page.status_code == 200, page.text[:300]
        return b, page, soft_key(), link

    return factory


@pytest.fixture
def trusted(live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., pki.Issued]:
    """Switch the live server to a trusted policy over a folder root; returns the root."""

    def install(*, allowlist: str = "") -> pki.Issued:
        root = pki.make_ca("Test Vendor Attestation Root")
        keys_dir = tmp_path / "keys"
        (keys_dir / "attestation-roots").mkdir(parents=True, exist_ok=True)
        (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(root.pem)
        settings = dict(live.app.config["IDP"])
        settings.update(KEYS_DIR=str(keys_dir), WEBAUTHN_ATTESTATION="trusted",
                        WEBAUTHN_MDS_BLOB="", WEBAUTHN_AAGUID_ALLOWLIST=allowlist)
        monkeypatch.setitem(live.app.extensions, "idp.attestation",
                            attestation.build_policy(settings))
        return root

    return install


def refusals() -> list[AuditEvent]:
    db.session.rollback()
    return list(db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == REFUSED).order_by(AuditEvent.id)))


def nothing_written() -> None:
    db.session.rollback()
    assert db.session.scalar(select(func.count(Person.id))) == 0
    assert db.session.scalar(select(func.count(SecurityKey.id))) == 0
    assert db.session.scalar(
        select(func.count(Invitation.id)).where(Invitation.used_at.is_not(None))) == 0


def assert_no_secret(event: AuditEvent, *secrets: str) -> None:
    text = json.dumps(event.details) + (event.actor or "") + (event.subject or "")
    for secret in secrets:
        assert secret not in text


def test_key_refused_by_the_attestation_policy_is_audited(
        start: Callable[..., Any], ctx: Live, trusted: Callable[..., pki.Issued]) -> None:
    trusted()
    b, page, key, link = start()
    answer = ceremony.enrol(b.http, page, key, attestation="self")
    assert answer.status_code == 400
    assert answer.json()["error"] == "attestation_refused"
    nothing_written()
    [event] = refusals()
    invitation = db.session.scalars(select(Invitation)).one()
    assert event.details == {
        "reason": "self_attestation",
        "aaguid": DEFAULT_AAGUID,
        "fmt": "packed",
        "backup_eligible": False,
        "invitation_id": invitation.id,
    }
    assert event.actor == f"invitation:{invitation.id}"
    assert event.subject == f"invitation:{invitation.id}"
    assert event.company_id == invitation.company_id
    assert event.ip_address
    cred = key.credentials[-1]
    assert_no_secret(event, link.rsplit("/", 1)[1], b64url(cred.credential_id))


def test_key_outside_the_allowlist_is_audited_with_its_aaguid(
        start: Callable[..., Any], ctx: Live, trusted: Callable[..., pki.Issued]) -> None:
    root = trusted(allowlist="11111111-2222-3333-4444-555555555555")
    b, page, key, _link = start()
    cert = root.intermediate("Test Vendor Attestation CA 1").attestation(aaguid=key.aaguid)
    answer = ceremony.enrol(b.http, page, key, attestation="packed", attestation_ca=cert)
    assert answer.status_code == 400
    nothing_written()
    [event] = refusals()
    assert event.details["reason"] == "aaguid_not_allowed"
    assert event.details["aaguid"] == key.aaguid


@pytest.mark.parametrize(("breakage", "reason"), [
    ({"uv": False}, "user_verification"),
    ({"origin": "https://evil.example"}, "origin"),
    ({"challenge": b"\x00" * 32}, "challenge"),
])
def test_failed_registration_verification_is_audited(
        start: Callable[..., Any], ctx: Live, breakage: dict[str, Any], reason: str) -> None:
    b, page, key, _link = start()
    answer = ceremony.enrol(b.http, page, key, **breakage)
    assert answer.status_code == 400
    nothing_written()
    [event] = refusals()
    assert event.details["reason"] == reason
    assert event.details["aaguid"] == DEFAULT_AAGUID


def test_malformed_response_is_audited_without_aaguid(
        start: Callable[..., Any], ctx: Live) -> None:
    b, page, key, _link = start()

    def tamper(created: dict[str, Any]) -> None:
        created["response"]["attestationObject"] = "not*base64url"

    answer = ceremony.enrol(b.http, page, key, tamper=tamper)
    assert answer.status_code == 400
    nothing_written()
    [event] = refusals()
    assert event.details["reason"] == "malformed"
    assert event.details["aaguid"] is None


def test_signed_in_person_adding_a_refused_key_is_the_actor(
        enrolled: Callable[..., KeyHolder], ctx: Live, invite: Callable[..., str],
        soft_key: Callable[..., SoftAuthenticator]) -> None:
    holder = enrolled()
    b = holder.browser
    page = b.go(invite(email=holder.person.email))
    assert page.status_code == 200, page.text[:300]
    answer = ceremony.enrol(b.http, page, soft_key(), display_name=None, uv=False)
    assert answer.status_code == 400
    [event] = refusals()
    assert event.actor == f"person:{holder.person.subject}"
    assert event.details["reason"] == "user_verification"


def test_accepted_key_is_not_a_refusal(start: Callable[..., Any], ctx: Live) -> None:
    b, page, key, _link = start()
    assert ceremony.enrol(b.http, page, key).status_code == 200
    assert refusals() == []
