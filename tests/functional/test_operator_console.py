"""The operator console through the live server: operator enrolment (``idp operator create``),
console sign-in with the key, relying parties (inert, validated), signing keys with four eyes
and step-up, companies, audit; and every authorization rule refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import select

from idp.admin.models import ApprovalStatus, KeyChangeRequest
from idp.audit.models import AuditEvent
from idp.clients.models import Client
from idp.extensions import db
from idp.keys.models import SigningKey
from tests.functional.conftest import Browser, KeyHolder, Live
from tests.functional.console_support import (
    OperatorHolder,
    age_assertions,
    console_sign_in,
    enrol_operator,
    path_of,
    post_form,
    step_up,
)
from tests.support import ceremony


def _operator(ctx: Live, browser: Callable[[], Browser], soft_key: Callable[..., Any],
              n: int = 1) -> OperatorHolder:
    return enrol_operator(ctx, browser(), soft_key(), email=f"ops{n}@corpid.example",
                          name=f"Operator {n}")


def test_cli_prints_a_single_use_operator_link(ctx: Live, browser: Callable[[], Browser],
                                                soft_key: Callable[..., Any]) -> None:
    from idp.cli import cli

    result = ctx.app.test_cli_runner().invoke(
        cli, ["operator", "create", "--email", "boss@corpid.example", "--json"])
    assert result.exit_code == 0, result.output
    link = json.loads(result.output)["enrol_url"]
    assert link.startswith(ctx.issuer + "/console/enrol/cio_")
    b = browser()
    page = b.go(link)
    assert page.status_code == 200
    assert ceremony.enrol(b.http, page, soft_key()).status_code == 200
    # The operator lands signed in on the console.
    assert b.go(ctx.url("/operator/")).status_code == 200
    # Single use: the link is dead now, for anyone.
    again = browser().go(link)
    assert again.status_code == 404
    db.session.rollback()
    tags = set(db.session.scalars(select(AuditEvent.tag)))
    assert {"admin:operator:invite", "admin:operator:create"} <= tags


def test_bad_operator_links_are_404(ctx: Live, browser: Callable[[], Browser]) -> None:
    b = browser()
    for token in ("cio_nope", "cii_" + "x" * 40, "x" * 300):
        assert b.go(ctx.url(f"/console/enrol/{token}")).status_code == 404


def test_console_needs_sign_in(ctx: Live, browser: Callable[[], Browser]) -> None:
    answer = browser().request("GET", ctx.url("/operator/clients"))
    assert answer.status_code == 303
    assert path_of(answer) == "/console/login"


def test_a_company_admin_is_not_an_operator(ctx: Live, enrolled: Callable[..., KeyHolder]
                                            ) -> None:
    admin = enrolled()
    b = admin.browser
    for path in ("/operator/", "/operator/clients", "/operator/keys", "/operator/companies",
                 "/operator/audit"):
        assert b.go(ctx.url(path)).status_code == 403, path
    page = b.go(ctx.url("/console/login"))  # any page with a CSRF token for this browser
    token = ceremony.ceremony_of(page)["csrf"]
    answer = b.request("POST", ctx.url("/operator/clients"),
                       data={"csrf_token": token, "name": "Evil", "auth_method": "none",
                             "redirect_uris": "https://evil.example/cb"})
    assert answer.status_code == 403
    answer = b.request("POST", ctx.url("/operator/keys/requests"),
                       data={"csrf_token": token, "action": "rotate"})
    assert answer.status_code == 403
    db.session.rollback()
    assert db.session.scalar(select(Client.id)) is None
    assert db.session.scalar(select(KeyChangeRequest.id)) is None


def test_console_sign_in_with_the_key(ctx: Live, browser: Callable[[], Browser],
                                      soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    fresh = browser()
    answer = console_sign_in(fresh, op.authenticator)
    assert answer.status_code == 200, answer.text
    assert answer.json()["next"] == "/console/"
    home = fresh.go(ctx.url("/console/"))
    assert "Operator 1" in home.text
    assert fresh.go(ctx.url("/operator/keys")).status_code == 200


def test_relying_party_created_inert_and_validated(ctx: Live, browser: Callable[[], Browser],
                                                   soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    form = b.go(ctx.url("/operator/clients/new"))
    # http on a non-loopback host is refused, nothing registered.
    refused = post_form(b, form, "/operator/clients", {
        "name": "Tax", "redirect_uris": "http://tax.example/cb",
        "auth_method": "client_secret_basic"})
    assert refused.status_code == 303
    assert "must use https" in b.follow(refused).text
    name = '<script>alert(1)</script> & "Tax"'
    made = post_form(b, form, "/operator/clients", {
        "name": name, "redirect_uris": "https://tax.example/cb\nhttp://127.0.0.1:8080/cb",
        "auth_method": "client_secret_basic"})
    assert made.status_code == 200
    assert made.headers["Cache-Control"] == "no-store"
    assert "<script>alert(1)</script>" not in made.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in made.text
    assert "cis_" in made.text  # the secret, shown this once
    db.session.rollback()
    client = db.session.scalars(select(Client)).one()
    assert client.redirect_uris == ["https://tax.example/cb", "http://127.0.0.1:8080/cb"]
    assert client.secret_hash is not None
    assert client.secret_hash not in made.text
    listing = b.go(ctx.url("/operator/clients"))
    assert "<script>alert" not in listing.text
    # Edit: redirect URIs and profile; an unsafe URI is refused.
    page = b.go(ctx.url(f"/operator/clients/{client.client_id}"))
    bad = post_form(b, page, f"/operator/clients/{client.client_id}",
                    {"redirect_uris": "javascript:alert(1)"})
    assert bad.status_code == 303
    saved = post_form(b, page, f"/operator/clients/{client.client_id}",
                      {"redirect_uris": "https://tax.example/new", "name": "Tax e-service"})
    assert saved.status_code == 303
    db.session.rollback()
    db.session.refresh(client)
    assert client.redirect_uris == ["https://tax.example/new"]
    rotated = post_form(b, page, "/rotate-secret")
    assert rotated.status_code == 200
    assert "cis_" in rotated.text
    disabled = post_form(b, page, "/disable")
    assert disabled.status_code == 303
    db.session.rollback()
    db.session.refresh(client)
    assert client.status.value == "disabled"
    tags = [t for t in db.session.scalars(select(AuditEvent.tag)) if t.startswith("clients:")]
    assert {"clients:client:create", "clients:client:update", "clients:client:rotate-secret",
            "clients:client:disable"} <= set(tags)


def test_forms_without_csrf_are_refused(ctx: Live, browser: Callable[[], Browser],
                                        soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    form = op.browser.go(ctx.url("/operator/clients/new"))
    answer = post_form(op.browser, form, "/operator/clients", {
        "name": "Tax", "redirect_uris": "https://tax.example/cb", "auth_method": "none"},
        csrf=False)
    assert answer.status_code == 400
    keys_page = op.browser.go(ctx.url("/operator/keys"))
    answer = post_form(op.browser, keys_page, "/operator/keys/requests", csrf=False)
    assert answer.status_code == 400
    db.session.rollback()
    assert db.session.scalar(select(Client.id)) is None
    assert db.session.scalar(select(KeyChangeRequest.id)) is None


def _kids() -> set[str]:
    db.session.rollback()
    return set(db.session.scalars(select(SigningKey.kid)))


def test_rotation_needs_a_second_operator_and_fresh_assertions(
        ctx: Live, browser: Callable[[], Browser], soft_key: Callable[..., Any]) -> None:
    first = _operator(ctx, browser, soft_key, 1)
    second = _operator(ctx, browser, soft_key, 2)
    before = _kids()
    page = first.browser.go(ctx.url("/operator/keys"))
    asked = post_form(first.browser, page, "/operator/keys/requests", {"alg": "ES256"},
                      match={"action": "rotate"})
    assert asked.status_code == 303
    assert path_of(asked) == "/operator/keys"
    db.session.rollback()
    change = db.session.scalars(select(KeyChangeRequest)).one()
    assert change.status is ApprovalStatus.PENDING
    assert _kids() == before  # nothing happens on one operator's word
    # The requester cannot approve their own request (no button, and the POST is refused).
    page = first.browser.go(ctx.url("/operator/keys"))
    assert f"/requests/{change.id}/approve" not in page.text
    token = ceremony.ceremony_of(first.browser.go(ctx.url("/console/login")))["csrf"]
    own = first.browser.request("POST", ctx.url(f"/operator/keys/requests/{change.id}/approve"),
                                data={"csrf_token": token})
    assert own.status_code == 403
    huge = first.browser.request("POST", ctx.url("/operator/keys/requests/99999999999/approve"),
                                 data={"csrf_token": token})
    assert huge.status_code == 303  # refused with a message, no 500
    # The second operator's assertion is stale: step-up first, the key untouched.
    age_assertions(second.person_id)
    page = second.browser.go(ctx.url("/operator/keys"))
    stale = post_form(second.browser, page, f"/requests/{change.id}/approve")
    assert stale.status_code == 303
    assert path_of(stale) == "/console/stepup"
    assert _kids() == before
    confirmed = step_up(second.browser, second.authenticator, next_path="/operator/keys")
    assert confirmed.status_code == 200
    assert confirmed.json()["next"] == "/operator/keys"
    approved = post_form(second.browser, page, f"/requests/{change.id}/approve")
    assert approved.status_code == 303
    db.session.rollback()
    db.session.refresh(change)
    assert change.status is ApprovalStatus.DONE, change.outcome
    assert change.decided_by_id == second.operator_id
    new = _kids() - before
    assert len(new) == 1
    assert next(iter(new)).startswith("es256-")
    # Done once: approving again is refused.
    again = post_form(second.browser, page, f"/requests/{change.id}/approve")
    assert again.status_code == 303
    assert "no longer pending" in second.browser.follow(again).text
    tags = list(db.session.scalars(select(AuditEvent.tag).where(
        AuditEvent.tag.startswith("admin:key-change"))))
    assert tags.count("admin:key-change:request") == 1
    assert tags.count("admin:key-change:approve") == 1


def test_a_stale_requester_must_step_up(ctx: Live, browser: Callable[[], Browser],
                                        soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    age_assertions(op.person_id)
    page = op.browser.go(ctx.url("/operator/keys"))
    answer = post_form(op.browser, page, "/operator/keys/requests", {"alg": "ES256"},
                      match={"action": "rotate"})
    assert answer.status_code == 303
    assert path_of(answer) == "/console/stepup"
    db.session.rollback()
    assert db.session.scalar(select(KeyChangeRequest.id)) is None


def test_step_up_with_someone_elses_key_is_refused(ctx: Live, browser: Callable[[], Browser],
                                                   soft_key: Callable[..., Any]) -> None:
    first = _operator(ctx, browser, soft_key, 1)
    second = _operator(ctx, browser, soft_key, 2)
    age_assertions(first.person_id)
    page = first.browser.go(ctx.url("/console/stepup?next=/operator/keys"))
    info, options = ceremony.options(first.browser.http, page)
    public_key = options.json()["publicKey"]
    public_key["allowCredentials"] = []  # the other operator's key answers anyway
    assertion = second.authenticator.get(public_key)
    answer = ceremony.post_json(first.browser.http, info["verify"],
                                {"h": info["handle"], "credential": assertion}, csrf=info["csrf"])
    assert answer.status_code == 400
    keys_page = first.browser.go(ctx.url("/operator/keys"))
    stale = post_form(first.browser, keys_page, "/operator/keys/requests", {"alg": "ES256"},
                      match={"action": "rotate"})
    assert path_of(stale) == "/console/stepup"


def test_retire_through_four_eyes_refused_for_the_only_key(
        ctx: Live, browser: Callable[[], Browser], soft_key: Callable[..., Any]) -> None:
    first = _operator(ctx, browser, soft_key, 1)
    second = _operator(ctx, browser, soft_key, 2)
    db.session.rollback()
    kid = db.session.scalars(select(SigningKey.kid).where(SigningKey.alg == "EdDSA")).first()
    page = first.browser.go(ctx.url("/operator/keys"))
    asked = post_form(first.browser, page, "/operator/keys/requests",
                      {"action": "retire", "kid": kid, "alg": ""})
    assert asked.status_code == 303
    db.session.rollback()
    change = db.session.scalars(select(KeyChangeRequest)).one()
    page = second.browser.go(ctx.url("/operator/keys"))
    post_form(second.browser, page, f"/requests/{change.id}/approve")
    db.session.rollback()
    db.session.refresh(change)
    assert change.status is ApprovalStatus.FAILED
    assert "only" in (change.outcome or "")
    assert kid in _kids()


def test_companies_search_appoint_and_status(ctx: Live, browser: Callable[[], Browser],
                                             soft_key: Callable[..., Any]) -> None:
    from idp.orgs import services as orgs
    from idp.orgs.models import Invitation

    orgs.create_company(br_number="23456789", name_en="Harbour Shipping Limited",
                        name_zh="海港航運有限公司", actor="tests")
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    by_br = b.go(ctx.url("/operator/companies?q=23456789"))
    assert "Harbour Shipping Limited" in by_br.text
    by_name = b.go(ctx.url("/operator/companies?q=harbour"))
    assert "Harbour Shipping Limited" in by_name.text
    page = b.go(ctx.url("/operator/companies/23456789"))
    assert page.status_code == 200
    appointed = post_form(b, page, "/admins", {"email": "boss@harbour.example"})
    assert appointed.status_code == 200
    assert "/enrol/cii_" in appointed.text
    db.session.rollback()
    invitation = db.session.scalars(select(Invitation)).one()
    assert invitation.roles == ["admin"]
    assert invitation.invited_by.startswith("operator:")
    age_assertions(op.person_id)
    stale = post_form(b, page, "/status", {"status": "dissolved"})
    assert path_of(stale) == "/console/stepup"
    step_up(b, op.authenticator)
    done = post_form(b, page, "/status", {"status": "dissolved"})
    assert done.status_code == 303
    db.session.rollback()
    assert orgs.get_company_by_br("23456789").status.value == "dissolved"
    assert b.go(ctx.url("/operator/companies/99999999")).status_code == 404
    assert b.go(ctx.url("/operator/companies?q=%00")).status_code == 400
    assert b.go(ctx.url("/operator/companies/abc")).status_code in (400, 404)


def test_audit_search(ctx: Live, browser: Callable[[], Browser],
                      soft_key: Callable[..., Any]) -> None:
    from idp.orgs import services as orgs

    orgs.create_company(br_number="34567890", name_en="Kowloon Bakery Limited", actor="tests")
    op = _operator(ctx, browser, soft_key)
    page = op.browser.go(ctx.url("/operator/audit?tag=admin:operator"))
    assert page.status_code == 200
    assert "admin:operator:create" in page.text
    assert "authn:session:start" not in page.text
    by_actor = op.browser.go(ctx.url("/operator/audit?actor=tests"))
    assert "orgs:company:create" in by_actor.text
    assert "admin:operator:create" not in by_actor.text
    by_company = op.browser.go(ctx.url("/operator/audit?br=34567890"))
    assert "orgs:company:create" in by_company.text
    assert "admin:operator" not in by_company.text
    assert op.browser.go(ctx.url("/operator/audit?br=00000000")).status_code == 404
    assert op.browser.go(ctx.url("/operator/audit?before=x")).status_code == 200
    assert op.browser.go(ctx.url("/operator/audit?tag=%00")).status_code == 400
    assert op.browser.go(ctx.url("/operator/audit?actor=" + "a" * 300)).status_code == 400
    zh = op.browser.request("GET", ctx.url("/operator/audit"),
                            headers={"Accept-Language": "zh-HK"})
    assert "審計紀錄" in zh.text


def test_next_never_leaves_the_site(ctx: Live, browser: Callable[[], Browser],
                                    soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"):
        b = browser()
        page = b.go(ctx.url("/console/login?" + urlencode({"next": target})))
        answer = ceremony.login(b.http, page, op.authenticator)
        assert answer.status_code == 200
        assert answer.json()["next"] == "/console/", target
        stepped = step_up(b, op.authenticator, next_path=quote(target, safe=""))
        assert stepped.json()["next"] == "/console/", target


def test_step_up_needs_a_session(ctx: Live, browser: Callable[[], Browser]) -> None:
    b = browser()
    assert b.request("GET", ctx.url("/console/stepup")).status_code == 303
    page = b.go(ctx.url("/console/login"))
    token = ceremony.ceremony_of(page)["csrf"]
    answer = ceremony.post_json(b.http, ctx.url("/console/stepup/options"), {"h": "stepup"},
                                csrf=token)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/json")


def test_audit_pages_reach_unsealed_events(ctx: Live, browser: Callable[[], Browser],
                                           soft_key: Callable[..., Any]) -> None:
    """Pages go by event id, so events not yet sealed into the chain (no seq) are listed and
    the "older" link still works."""
    import re

    from idp.audit.services import record

    op = _operator(ctx, browser, soft_key)
    for i in range(120):  # more than a page (100), none of them sealed (tests seal by hand)
        record("tests:paging:event", actor="tests", subject=f"n:{i:03d}")
    db.session.commit()
    first = op.browser.go(ctx.url("/operator/audit?tag=tests:paging"))
    assert first.status_code == 200
    assert "n:119" in first.text
    assert "n:019" not in first.text
    link = re.search(r'href="([^"]*before=\d+[^"]*)"', first.text)
    assert link is not None, "no link to older events"
    second = op.browser.go(ctx.url(link.group(1).replace("&amp;", "&")))
    assert "n:019" in second.text
    assert "n:000" in second.text
    assert "n:119" not in second.text


def test_console_ceremonies_use_the_webauthn_timeout(ctx: Live) -> None:
    """Operator enrolment asks the browser to wait IDP_WEBAUTHN_TIMEOUT_MS, like every other
    ceremony (not the challenge's lifetime)."""
    from idp.admin import services as admin

    _, token = admin.create_operator_invitation(email="ops9@corpid.example", created_by="tests")
    options = admin.begin_operator_enrolment(token=token, binding="b" * 43,
                                             display_name="Operator Nine")
    assert options["timeout"] == ctx.config()["WEBAUTHN_TIMEOUT_MS"]
    assert options["timeout"] != ctx.config()["WEBAUTHN_CHALLENGE_TTL"] * 1000
