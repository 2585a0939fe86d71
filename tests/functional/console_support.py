"""Helpers for the company admin pages and the operator console tests: operators enrolled
through the real ceremony, console sign-in and step-up with the software key, forms."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from sqlalchemy import select, update

from idp.extensions import db
from tests.functional.conftest import Browser, Live, parse_forms
from tests.support import ceremony


@dataclass
class OperatorHolder:
    person_id: int
    operator_id: int
    authenticator: Any
    browser: Browser


def enrol_operator(live: Live, browser: Browser, authenticator: Any, *,
                   email: str = "ops@corpid.example", name: str = "Operator One"
                   ) -> OperatorHolder:
    """Invite an operator (as ``idp operator create`` does) and enrol them in ``browser``."""
    from idp.admin import services as admin
    from idp.admin.models import OperatorInvitation

    _, token = admin.create_operator_invitation(email=email, created_by="operator:cli")
    page = browser.go(admin.operator_enrol_url(token))
    assert page.status_code == 200, page.text[:300]
    answer = ceremony.enrol(browser.http, page, authenticator, display_name=name)
    assert answer.status_code == 200, answer.text[:300]
    db.session.rollback()
    invitation = db.session.scalars(
        select(OperatorInvitation).where(OperatorInvitation.token_hash.isnot(None))
        .order_by(OperatorInvitation.id.desc())).first()
    assert invitation is not None
    assert invitation.used_by_person_id is not None
    operator = admin.find_operator(invitation.used_by_person_id)
    assert operator is not None
    return OperatorHolder(invitation.used_by_person_id, operator.id, authenticator, browser)


def console_sign_in(browser: Browser, authenticator: Any) -> requests.Response:
    """Sign in to the console with the key (the verify answer)."""
    page = browser.go(browser.live.url("/console/login"))
    assert page.status_code == 200, page.text[:300]
    return ceremony.login(browser.http, page, authenticator)


def step_up(browser: Browser, authenticator: Any, *, next_path: str = "/console/"
            ) -> requests.Response:
    """Confirm with the key (the step-up verify answer)."""
    page = browser.go(browser.live.url(f"/console/stepup?next={next_path}"))
    assert page.status_code == 200, (page.status_code, page.url)
    return ceremony.login(browser.http, page, authenticator)


def age_assertions(person_id: int, seconds: int = 600) -> None:
    """Make every sign-in and step-up of ``person_id`` ``seconds`` old (stale)."""
    from idp.admin.models import FreshAssertion
    from idp.authn.models import LoginSession

    db.session.rollback()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
    session_ids = [s.id for s in db.session.scalars(
        select(LoginSession).where(LoginSession.person_id == person_id))]
    db.session.execute(update(LoginSession).where(LoginSession.person_id == person_id)
                       .values(auth_time=past))
    if session_ids:
        db.session.execute(update(FreshAssertion)
                           .where(FreshAssertion.session_id.in_(session_ids))
                           .values(asserted_at=past))
    db.session.commit()


def form_on(page: requests.Response, action_suffix: str,
            match: dict[str, str] | None = None) -> Any:
    """The first form of ``page`` whose action ends with ``action_suffix`` (and whose fields
    hold ``match``)."""
    for form in parse_forms(page.text):
        if form.action.endswith(action_suffix) and all(
                form.value(k) == v for k, v in (match or {}).items()):
            return form
    raise AssertionError(f"no form for {action_suffix} on {page.url}: {page.text[:500]}")


def post_form(browser: Browser, page: requests.Response, action_suffix: str,
              fields: dict[str, Any] | None = None, *, csrf: bool = True,
              match: dict[str, str] | None = None) -> requests.Response:
    """Submit the page's form for ``action_suffix`` with its hidden fields plus ``fields``
    (lists repeat the name); ``csrf=False`` drops the token. The raw answer."""
    form = form_on(page, action_suffix, match)
    data: list[tuple[str, str]] = [(k, v) for k, v in form.fields
                                   if (csrf or k != "csrf_token") and k not in (fields or {})]
    for key, value in (fields or {}).items():
        for item in value if isinstance(value, list) else [value]:
            data.append((key, item))
    return browser.request("POST", urljoin(page.url, form.action), data=data)


def path_of(response: requests.Response) -> str:
    location = response.headers.get("Location", "")
    return urlsplit(location).path
