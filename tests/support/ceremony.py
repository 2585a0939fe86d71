"""Drive Corp ID's WebAuthn pages over HTTP with the software authenticator, as the page's
script (static/webauthn.js) would: read the ``#webauthn`` element's data attributes, POST the
options request with the CSRF header, answer with the authenticator, POST the response.

These helpers take a ``requests.Session`` (the browser's cookie jar) and return raw responses,
so negative tests can break any step.
"""

from __future__ import annotations

from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import requests

from tests.support.authenticator import SoftAuthenticator


class _Ceremony(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id") == "webauthn" and self.attrs is None:
            self.attrs = {k[5:]: v for k, v in a.items() if k.startswith("data-")}


def ceremony_of(page: requests.Response) -> dict[str, str]:
    """The ``data-*`` attributes of the page's ``#webauthn`` element (URLs made absolute)."""
    parser = _Ceremony()
    parser.feed(page.text)
    assert parser.attrs is not None, f"no #webauthn element on {page.url}: {page.text[:300]}"
    found = dict(parser.attrs)
    for name in ("options", "verify"):
        found[name] = urljoin(page.url, found[name])
    return found


def post_json(
    http: requests.Session, url: str, body: Any, *, csrf: str | None, **kwargs: Any
) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if csrf is not None:
        headers["X-CSRFToken"] = csrf
    headers.update(kwargs.pop("headers", {}))
    data = body if isinstance(body, str | bytes) else _dumps(body)
    return http.post(url, data=data, headers=headers, allow_redirects=False, timeout=15, **kwargs)


def _dumps(body: Any) -> str:
    import json

    return json.dumps(body)


def options(
    http: requests.Session, page: requests.Response, **fields: Any
) -> tuple[dict[str, str], requests.Response]:
    """POST the page's options request. Returns ``(ceremony, response)``."""
    info = ceremony_of(page)
    body = dict(fields)
    if info.get("handle"):
        body.setdefault("h", info["handle"])
    return info, post_json(http, info["options"], body, csrf=info.get("csrf"))


def login(
    http: requests.Session,
    page: requests.Response,
    authenticator: SoftAuthenticator,
    *,
    tamper: Callable[[dict[str, Any]], Any] | None = None,
    **get_kwargs: Any,
) -> requests.Response:
    """Run the sign-in ceremony from the login page; the verify response (not followed).

    ``get_kwargs`` go to ``authenticator.get``; ``tamper`` may change the assertion dict (or
    return a replacement body)."""
    info, answer = options(http, page)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    assertion = authenticator.get(answer.json()["publicKey"], **get_kwargs)
    credential: Any = assertion
    if tamper is not None:
        replaced = tamper(assertion)
        credential = assertion if replaced is None else replaced
    return post_json(
        http, info["verify"], {"h": info["handle"], "credential": credential}, csrf=info["csrf"]
    )


def enrol(
    http: requests.Session,
    page: requests.Response,
    authenticator: SoftAuthenticator,
    *,
    display_name: str | None = "Chan Tai Man",
    key_name: str = "Blue key",
    tamper: Callable[[dict[str, Any]], Any] | None = None,
    **create_kwargs: Any,
) -> requests.Response:
    """Run the enrolment ceremony from the enrolment page; the verify response."""
    fields: dict[str, Any] = {"key_name": key_name}
    if display_name is not None:
        fields["display_name"] = display_name
    info, answer = options(http, page, **fields)
    assert answer.status_code == 200, (answer.status_code, answer.text[:300])
    created = authenticator.create(answer.json()["publicKey"], **create_kwargs)
    credential: Any = created
    if tamper is not None:
        replaced = tamper(created)
        credential = created if replaced is None else replaced
    return post_json(http, info["verify"], {"credential": credential}, csrf=info["csrf"])
