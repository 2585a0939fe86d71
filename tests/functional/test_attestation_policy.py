"""The attestation policy at the real enrolment endpoints (issue 3, "Attestation policy").

The live server runs in mode ``none``; these tests give it a ``trusted`` policy of their own
(``idp.authn.attestation.current_policy()`` reads ``app.extensions["idp.attestation"]``) over a
key folder holding a test vendor root, a test MDS root and a signed MDS3 BLOB
(``tests/support/pki.py``). A refused key leaves nothing written: no person, no key, the
invitation unused, no session cookie.
"""

from __future__ import annotations

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
from tests.functional.conftest import LOGIN_COOKIE, Browser, Live
from tests.support import ceremony, pki
from tests.support.authenticator import DEFAULT_AAGUID, SoftAuthenticator

MODEL = "Corp ID Test Key 5 NFC"
COMPROMISED_AAGUID = "cb69481e-8ff7-4039-93ec-0a2729a154a8"


@pytest.fixture(scope="module")
def vendor_root() -> pki.Issued:
    return pki.make_ca("Test Vendor Attestation Root")


@pytest.fixture(scope="module")
def vendor_intermediate(vendor_root: pki.Issued) -> pki.Issued:
    return vendor_root.intermediate("Test Vendor Attestation CA 1")


@pytest.fixture
def trusted(
    live: Live, tmp_path: Path, vendor_root: pki.Issued, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., attestation.Policy]:
    """Switch the live server to a trusted policy: ``trusted(folder_roots=True, blob=True,
    allowlist=None)``. The BLOB names DEFAULT_AAGUID's model and roots, and lists
    COMPROMISED_AAGUID with a compromise status."""
    keys_dir = tmp_path / "keys"
    (keys_dir / "attestation-roots").mkdir(parents=True)
    mds_root = pki.make_ca("Test MDS Root")
    (keys_dir / "mds-root.pem").write_bytes(mds_root.pem)
    signer = mds_root.intermediate("Test MDS CA").leaf("mds.example")

    def install(
        *, folder_roots: bool = False, blob: bool = True, allowlist: str = ""
    ) -> attestation.Policy:
        if folder_roots:
            (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(vendor_root.pem)
        if blob:
            entries = [
                pki.entry(DEFAULT_AAGUID, description=MODEL, roots=[vendor_root.der]),
                pki.entry(
                    COMPROMISED_AAGUID,
                    description="Leaky Key",
                    roots=[vendor_root.der],
                    statuses=[("USER_VERIFICATION_BYPASS", "2024-03-01")],
                ),
            ]
            (keys_dir / "mds3.jwt").write_bytes(pki.make_blob(entries, signer=signer))
        settings = dict(live.app.config["IDP"])
        settings.update(
            KEYS_DIR=str(keys_dir),
            WEBAUTHN_ATTESTATION="trusted",
            WEBAUTHN_AAGUID_ALLOWLIST=allowlist,
        )
        policy = attestation.build_policy(settings)
        monkeypatch.setitem(live.app.extensions, "idp.attestation", policy)
        return policy

    return install


@pytest.fixture
def start(
    invite: Callable[..., str], browser: Callable[[], Browser], soft_key: Callable[..., Any]
) -> Callable[..., tuple[Browser, requests.Response, SoftAuthenticator]]:
    def factory(**invite_kwargs: Any) -> tuple[Browser, requests.Response, SoftAuthenticator]:
        b = browser()
        page = b.go(invite(**invite_kwargs))
        assert page.status_code == 200, page.text[:300]
        return b, page, soft_key()

    return factory


def _counts() -> tuple[int, int, int]:
    db.session.rollback()
    people = db.session.scalar(select(func.count(Person.id))) or 0
    keys = db.session.scalar(select(func.count(SecurityKey.id))) or 0
    used = (
        db.session.scalar(select(func.count(Invitation.id)).where(Invitation.used_at.is_not(None)))
        or 0
    )
    return int(people), int(keys), int(used)


def _refused(answer: requests.Response, b: Browser, reason: str) -> str:
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["error"] == "attestation_refused"
    assert body["error_description"] in {en for en, _ in attestation.REASONS.values()} | {
        zh for _, zh in attestation.REASONS.values()
    }
    assert body["error_description"] in attestation.REASONS[reason]
    assert _counts() == (0, 0, 0)
    assert LOGIN_COOKIE not in b.http.cookies
    return str(body["error_description"])


# --- accepted ---------------------------------------------------------------------------------


def test_packed_attestation_chained_to_a_blob_root_is_accepted(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(folder_roots=False, blob=True)  # the only roots: the BLOB's, for this AAGUID
    b, page, key = start()
    cert = vendor_intermediate.attestation(aaguid=key.aaguid)
    answer = ceremony.enrol(b.http, page, key, attestation="packed", attestation_ca=cert)
    assert answer.status_code == 200, answer.text[:300]
    db.session.rollback()
    stored = db.session.scalars(select(SecurityKey)).one()
    assert stored.aaguid == DEFAULT_AAGUID
    assert stored.model_name == MODEL
    assert stored.backup_eligible is False
    assert _counts() == (1, 1, 1)
    assert LOGIN_COOKIE in answer.cookies
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.tag == "webauthn:key:register")
    ).one()
    assert event.details["aaguid"] == DEFAULT_AAGUID
    assert event.details["model_name"] == MODEL
    done = b.go(ctx.url(answer.json()["next"]))
    assert done.status_code == 200


def test_folder_root_alone_accepts_an_unlisted_model(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(folder_roots=True, blob=False)
    b, page, key = start()
    other = "11111111-2222-3333-4444-555555555555"
    cert = vendor_intermediate.attestation(aaguid=other)
    answer = ceremony.enrol(
        b.http, page, key, attestation="packed", attestation_ca=cert, aaguid=other
    )
    assert answer.status_code == 200, answer.text[:300]
    db.session.rollback()
    stored = db.session.scalars(select(SecurityKey)).one()
    assert (stored.aaguid, stored.model_name) == (other, None)


def test_none_mode_stores_the_model_name(
    start: Callable[..., Any], ctx: Live, trusted: Callable[..., Any]
) -> None:
    policy = trusted(blob=True)
    policy.mode = "none"  # same files, mode none: any authenticator, named from the BLOB
    b, page, key = start()
    answer = ceremony.enrol(b.http, page, key, attestation="none", be=True)
    assert answer.status_code == 200, answer.text[:300]
    db.session.rollback()
    stored = db.session.scalars(select(SecurityKey)).one()
    assert (stored.aaguid, stored.model_name, stored.backup_eligible) == (
        DEFAULT_AAGUID,
        MODEL,
        True,
    )


# --- refused ----------------------------------------------------------------------------------


def test_self_attestation_refused(
    start: Callable[..., Any], ctx: Live, trusted: Callable[..., Any]
) -> None:
    trusted(folder_roots=True)
    b, page, key = start()
    answer = ceremony.enrol(b.http, page, key, attestation="self")
    message = _refused(answer, b, "self_attestation")
    assert "certificate" in message


def test_no_attestation_refused(
    start: Callable[..., Any], ctx: Live, trusted: Callable[..., Any]
) -> None:
    trusted(folder_roots=True)
    b, page, key = start()
    _refused(ceremony.enrol(b.http, page, key, attestation="none"), b, "format")


def test_chain_to_an_unknown_root_refused(
    start: Callable[..., Any], ctx: Live, trusted: Callable[..., Any]
) -> None:
    trusted(folder_roots=True)
    b, page, key = start()
    stranger = pki.make_ca("Test Vendor Attestation Root").intermediate()  # same names
    cert = stranger.attestation(aaguid=key.aaguid)
    answer = ceremony.enrol(b.http, page, key, attestation="packed", attestation_ca=cert)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["error"]  # refused by py_webauthn's chain check (through our door)
    assert _counts() == (0, 0, 0)
    assert LOGIN_COOKIE not in b.http.cookies


def test_model_without_roots_refused(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(folder_roots=False, blob=True)
    b, page, key = start()
    other = "11111111-2222-3333-4444-555555555555"
    cert = vendor_intermediate.attestation(aaguid=other)
    answer = ceremony.enrol(
        b.http, page, key, attestation="packed", attestation_ca=cert, aaguid=other
    )
    _refused(answer, b, "untrusted")


def test_synced_credential_refused(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(blob=True)
    b, page, key = start()
    cert = vendor_intermediate.attestation(aaguid=key.aaguid)
    answer = ceremony.enrol(
        b.http, page, key, attestation="packed", attestation_ca=cert, be=True, bs=True
    )
    assert "passkey" in _refused(answer, b, "synced")


def test_compromised_model_refused(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(blob=True)
    b, page, key = start()
    cert = vendor_intermediate.attestation(aaguid=COMPROMISED_AAGUID)
    answer = ceremony.enrol(
        b.http, page, key, attestation="packed", attestation_ca=cert, aaguid=COMPROMISED_AAGUID
    )
    _refused(answer, b, "compromised")


def test_model_outside_the_allowlist_refused(
    start: Callable[..., Any],
    ctx: Live,
    trusted: Callable[..., Any],
    vendor_intermediate: pki.Issued,
) -> None:
    trusted(blob=True, allowlist="11111111-2222-3333-4444-555555555555")
    b, page, key = start()
    cert = vendor_intermediate.attestation(aaguid=key.aaguid)
    answer = ceremony.enrol(b.http, page, key, attestation="packed", attestation_ca=cert)
    _refused(answer, b, "aaguid_not_allowed")


def test_refusal_in_traditional_chinese(
    start: Callable[..., Any], ctx: Live, trusted: Callable[..., Any]
) -> None:
    trusted(folder_roots=True)
    b, page, key = start()
    b.http.headers["Accept-Language"] = "zh-HK"
    answer = ceremony.enrol(b.http, page, key, attestation="self")
    assert _refused(answer, b, "self_attestation") == attestation.REASONS["self_attestation"][1]
