"""Security-relevant actions leave typed audit events; secrets never reach the audit trail or
the logs (SECURITY.md), even with the idp logger at DEBUG."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import requests
from sqlalchemy import select

from idp.extensions import db
from tests.functional.conftest import (
    RP,
    Browser,
    CodeResult,
    Live,
    PersonInfo,
    assertion_for,
    post,
    redeem,
)

SignedIn = Callable[..., tuple[PersonInfo, Browser]]


def audit_events(live: Live) -> list[tuple[str, str, str | None, dict[str, object]]]:
    from idp.audit.models import AuditEvent

    db.session.rollback()
    rows = db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    return [(r.tag, r.actor, r.subject, dict(r.details or {})) for r in rows]


def test_security_events_are_audited(ctx: Live, signed_in: SignedIn,
                                     make_client: Callable[..., RP],
                                     get_code: Callable[..., CodeResult]) -> None:
    from idp.authn.models import LoginSession
    from idp.authn.services import end_session
    from idp.consent.models import Consent
    from idp.consent.services import revoke_consent

    _, b = signed_in()
    rp = make_client()
    # Code reuse and refresh-token reuse each revoke a family.
    result = get_code(b, rp, scope="openid corp")
    tokens = redeem(ctx, result).json()
    redeem(ctx, result)
    second = redeem(ctx, get_code(b, rp, scope="openid corp")).json()
    post(ctx, "/token", rp, {"grant_type": "refresh_token",
                             "refresh_token": second["refresh_token"]})
    post(ctx, "/token", rp, {"grant_type": "refresh_token",
                             "refresh_token": second["refresh_token"]})
    # A client revokes an access token.
    third = redeem(ctx, get_code(b, rp, scope="openid corp")).json()
    post(ctx, "/revoke", rp, {"token": third["access_token"]})
    consent = db.session.scalars(select(Consent).where(Consent.client_id == rp.id)).one()
    revoke_consent(consent, actor="tests")
    session = db.session.get(LoginSession, b.session_id)
    assert session is not None
    end_session(session, reason="logout", actor="tests")

    events = audit_events(ctx)
    tags = [e[0] for e in events]
    for tag in ("clients:client:create", "authn:session:start", "consent:consent:grant",
                "oauth:grant:revoke", "oauth:token:revoke", "consent:consent:revoke",
                "authn:session:end"):
        assert tag in tags, (tag, tags)
    reasons = {e[3].get("reason") for e in events if e[0] == "oauth:grant:revoke"}
    assert {"code_reuse", "refresh_token_reuse"} <= reasons, reasons
    assert tokens  # the first family existed before its code came back


def test_token_issuance_and_failed_client_auth_are_audited(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult]) -> None:
    _, b = signed_in()
    rp = make_client()
    assert redeem(ctx, get_code(b, rp)).status_code == 200
    requests.post(ctx.url("/token"), data={"grant_type": "client_credentials"},
                  auth=(rp.client_id, "cis_wrong"), timeout=10)
    tags = [e[0] for e in audit_events(ctx)]
    assert any(t.startswith("oauth:token:") and t != "oauth:token:revoke" for t in tags), tags
    assert any("auth" in t and "fail" in t for t in tags), tags


def test_no_secret_reaches_the_audit_trail_or_the_logs(
        ctx: Live, signed_in: SignedIn, make_client: Callable[..., RP],
        get_code: Callable[..., CodeResult], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="idp")
    _, b = signed_in()
    secret_rp = make_client("client_secret_post")
    keyed = make_client("private_key_jwt", grant_types=["authorization_code", "refresh_token",
                                                        "client_credentials"], scopes=[
        "openid", "corp"])
    secrets: list[str] = [str(secret_rp.secret)]
    result = get_code(b, secret_rp, scope="openid corp")
    secrets += [result.code, result.verifier]
    tokens = redeem(ctx, result).json()
    secrets += [tokens["access_token"], tokens["refresh_token"], tokens["id_token"]]
    refreshed = post(ctx, "/token", secret_rp, {"grant_type": "refresh_token",
                                                "refresh_token": tokens["refresh_token"]})
    secrets += [refreshed.json()["refresh_token"], refreshed.json()["access_token"]]
    # Failures log too: a wrong secret, a replayed code, a bad assertion.
    wrong = "cis_" + "W" * 43
    requests.post(ctx.url("/token"), timeout=10, data={
        "grant_type": "client_credentials", "client_id": secret_rp.client_id,
        "client_secret": wrong})
    secrets.append(wrong)
    redeem(ctx, result)
    assertion = assertion_for(keyed, aud=ctx.issuer)
    requests.post(ctx.url("/token"), timeout=10, data={
        "grant_type": "client_credentials", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    requests.post(ctx.url("/token"), timeout=10, data={
        "grant_type": "client_credentials", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    secrets.append(assertion)
    post(ctx, "/revoke", secret_rp, {"token": refreshed.json()["access_token"]})
    cookie = b.http.cookies.get("corpid_session")
    assert cookie
    secrets.append(cookie)

    def signature(token: str) -> str:
        # For JWTs the signature part is what must not leak (header/claims are not secret).
        return token.rsplit(".", 1)[-1] if token.count(".") == 2 else token

    needles = [signature(s) for s in secrets if s]
    audit_text = json.dumps([e for e in audit_events(ctx)], default=str)
    idp_logs = "\n".join(r.getMessage() for r in caplog.records)
    for needle in needles:
        assert needle not in audit_text, needle[:12]
        assert needle not in idp_logs, needle[:12]
