"""Importing the company register from the operator console (``/operator/companies/import``):
the report (counts, first rejects, audit event), step-up, operators only, CSRF, bad files
answered with a readable 400, the per-route size limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import requests
from sqlalchemy import select

from idp.audit.models import AuditEvent
from idp.extensions import db
from idp.orgs.models import Company
from tests.functional.conftest import Browser, KeyHolder, Live
from tests.functional.console_support import (
    OperatorHolder,
    age_assertions,
    enrol_operator,
    form_on,
    path_of,
    step_up,
)
from tests.support import ceremony

IMPORT = "/operator/companies/import"
GOOD = (
    "br_number,name_en,name_zh,status\n"
    "31000001,Kowloon Ferries Limited,九龍渡輪有限公司,live\n"
    "31000002,Kowloon Tea House Limited,,dormant\n"
    "123,Bad Number Limited,,live\n"
    "31000003,,,live\n"
).encode()


def _operator(ctx: Live, browser: Callable[[], Browser], soft_key: Callable[..., Any]
              ) -> OperatorHolder:
    return enrol_operator(ctx, browser(), soft_key(), email="ops@corpid.example",
                          name="Operator One")


def _upload(b: Browser, page: requests.Response, data: bytes, *, name: str = "register.csv",
            csrf: bool = True) -> requests.Response:
    form = form_on(page, IMPORT)
    fields = [(k, v) for k, v in form.fields if csrf or k != "csrf_token"]
    return b.request("POST", urljoin(page.url, form.action), data=fields,
                     files={"file": (name, data, "text/csv")})


def _companies() -> dict[str, str]:
    db.session.rollback()
    return {c.br_number: c.name_en for c in db.session.scalars(select(Company))}


def test_import_shows_the_report_and_the_rejects(ctx: Live, browser: Callable[[], Browser],
                                                 soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    listing = b.go(ctx.url("/operator/companies"))
    assert f'href="{IMPORT}"' in listing.text
    page = b.go(ctx.url(IMPORT))
    assert page.status_code == 200
    answer = _upload(b, page, GOOD)
    assert answer.status_code == 200, answer.text[:500]
    assert 'id="import-inserted">2<' in answer.text
    assert 'id="import-rejected">2<' in answer.text
    assert "bad_br_number" in answer.text
    assert "missing_name" in answer.text
    assert "orgs:register:import" in answer.text
    assert _companies() == {"31000001": "Kowloon Ferries Limited",
                            "31000002": "Kowloon Tea House Limited"}
    event = db.session.scalars(select(AuditEvent).where(
        AuditEvent.tag == "orgs:register:import")).one()
    assert event.actor.startswith(f"operator:{op.operator_id}:person:")
    assert event.details["inserted"] == 2
    assert event.details["rejected"] == 2
    assert event.details["file"] == "register.csv"
    # Again: idempotent, the rows are updates now.
    again = _upload(b, b.go(ctx.url(IMPORT)), GOOD)
    assert 'id="import-updated">2<' in again.text
    assert 'id="import-inserted">0<' in again.text
    # The companies page finds them by name prefix.
    found = b.go(ctx.url("/operator/companies?q=kowloon"))
    assert "Kowloon Ferries Limited" in found.text
    assert "Kowloon Tea House Limited" in found.text


def test_import_page_in_chinese(ctx: Live, browser: Callable[[], Browser],
                                soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    answer = op.browser.request("GET", ctx.url(IMPORT),
                                headers={"Accept-Language": "zh-HK,zh;q=0.9"})
    assert answer.status_code == 200
    assert "匯入公司登記冊" in answer.text
    assert "<script>" not in answer.text


def test_import_needs_a_fresh_assertion(ctx: Live, browser: Callable[[], Browser],
                                        soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    page = b.go(ctx.url(IMPORT))
    age_assertions(op.person_id)
    stale = _upload(b, page, GOOD)
    assert stale.status_code == 303
    assert path_of(stale) == "/console/stepup"
    assert _companies() == {}
    # The form itself asks for the step-up first, and comes back.
    form = b.request("GET", ctx.url(IMPORT))
    assert path_of(form) == "/console/stepup"
    assert "next=%2Foperator%2Fcompanies%2Fimport" in form.headers["Location"]
    confirmed = step_up(b, op.authenticator, next_path=IMPORT)
    assert confirmed.json()["next"] == IMPORT
    done = _upload(b, b.go(ctx.url(IMPORT)), GOOD)
    assert done.status_code == 200
    assert set(_companies()) == {"31000001", "31000002"}


def test_only_operators_import(ctx: Live, browser: Callable[[], Browser],
                               enrolled: Callable[..., KeyHolder]) -> None:
    admin = enrolled()
    b = admin.browser
    assert b.go(ctx.url(IMPORT)).status_code == 403
    page = b.go(ctx.url("/console/login"))  # any page with a CSRF token for this browser
    token = ceremony.ceremony_of(page)["csrf"]
    answer = b.request("POST", ctx.url(IMPORT), data={"csrf_token": token},
                       files={"file": ("register.csv", GOOD, "text/csv")})
    assert answer.status_code == 403
    assert not {"31000001", "31000002"} & set(_companies())
    # Not signed in at all: to the sign-in page.
    anonymous = browser().request("GET", ctx.url(IMPORT))
    assert path_of(anonymous) == "/console/login"


def test_import_without_csrf_is_refused(ctx: Live, browser: Callable[[], Browser],
                                        soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    answer = _upload(op.browser, op.browser.go(ctx.url(IMPORT)), GOOD, csrf=False)
    assert answer.status_code == 400
    assert _companies() == {}


def test_bad_files_are_a_readable_400(ctx: Live, browser: Callable[[], Browser],
                                      soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    cases = [
        (b"br_number,name_en,status\n31000009,Caf\xe9 Limited,live\n", "register.csv",
         "not UTF-8"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "register.csv", "not UTF-8"),
        (GOOD, "register.xlsx", "CSV file"),
        (b"", "register.csv", "empty"),
        (b"name,colour\nx,y\n", "register.csv", "lacks the column"),
        (b"br_number,name_en,status\n\x00\n", "register.csv", "NUL"),
    ]
    for data, name, message in cases:
        answer = _upload(b, b.go(ctx.url(IMPORT)), data, name=name)
        assert answer.status_code == 400, (name, data[:20], answer.status_code)
        assert "text/html" in answer.headers["Content-Type"]
        assert message in answer.text, (message, answer.text[:800])
        assert 'id="import-error"' in answer.text
    # No file chosen at all.
    page = b.go(ctx.url(IMPORT))
    form = form_on(page, IMPORT)
    none = b.request("POST", urljoin(page.url, form.action), data=form.fields,
                     files={"other": ("x.csv", b"x", "text/csv")})
    assert none.status_code == 400
    assert _companies() == {}


def test_upload_limit_is_per_route(ctx: Live, browser: Callable[[], Browser],
                                   soft_key: Callable[..., Any]) -> None:
    op = _operator(ctx, browser, soft_key)
    b = op.browser
    # Bigger than the app's 64 KiB body limit, within REGISTER_UPLOAD_MAX_BYTES.
    rows = "".join(f"{40000000 + i},Big Register Company {i} Limited,live\n"
                   for i in range(2500))
    big = ("br_number,name_en,status\n" + rows).encode()
    assert 64 * 1024 < len(big) < ctx.app.config["IDP"]["REGISTER_UPLOAD_MAX_BYTES"]
    answer = _upload(b, b.go(ctx.url(IMPORT)), big)
    assert answer.status_code == 200, answer.text[:500]
    assert 'id="import-inserted">2500<' in answer.text
    # Beyond the route's limit: 413, nothing written.
    limit = ctx.app.config["IDP"]["REGISTER_UPLOAD_MAX_BYTES"]
    huge = big + b"x" * (limit - len(big) + 1)
    refused = _upload(b, b.go(ctx.url(IMPORT)), huge)
    assert refused.status_code == 413
    # Other routes keep the app's limit.
    page = b.go(ctx.url("/operator/clients/new"))
    token = form_on(page, "/operator/clients").value("csrf_token")
    other = b.request("POST", ctx.url("/operator/clients"),
                      data={"csrf_token": token, "name": "x" * (70 * 1024)})
    assert other.status_code == 413
