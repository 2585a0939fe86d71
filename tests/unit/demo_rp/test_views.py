"""The demo relying party exists only in demo mode, and its pages never 500 on bad input."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask


def test_not_served_outside_demo_mode(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/demo-rp/").status_code == 404
    assert client.get("/demo-rp/callback?code=x&state=y").status_code == 404


def test_home_in_demo_mode(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-rp/")
    assert response.status_code == 200
    assert b"Login with Corp ID" in response.data
    assert response.headers["Cache-Control"] == "no-store"


def test_a_tampered_cookie_is_ignored(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    client.set_cookie("corpid_demo_rp", "eyJsb2dpbiI6e319.forged.signature", path="/demo-rp/")
    response = client.get("/demo-rp/")
    assert response.status_code == 200
    assert b"Login with Corp ID" in response.data


def test_callback_without_a_transaction_is_refused(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-rp/callback?code=x&state=y&iss=http://localhost:5000")
    assert response.status_code == 400
    assert b"The login did not complete" in response.data


def test_login_without_the_demo_client_says_so(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    response = client.get("/demo-rp/login")
    assert response.status_code == 502
    assert b"idp demo" in response.data


def test_logout_needs_csrf(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    assert client.post("/demo-rp/logout").status_code == 400
