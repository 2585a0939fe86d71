"""A pending authorization ends once (idp.oauth.authorize.complete): of two requests racing
to end it (two tabs sending the same consent, a double click), one goes on to its code and the
other is refused, wherever it is kept (the database, or Redis with IDP_REDIS_URL)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import update

from idp.clients.services import create_client
from idp.extensions import db
from idp.oauth import authorize as flow
from idp.oauth.models import PendingAuthorization

pytestmark = pytest.mark.usefixtures("app_ctx")


def started() -> tuple[str, flow.Pending]:
    client, _ = create_client(
        name="Shop",
        redirect_uris=["https://shop.example/cb"],
        auth_method="none",
        actor="tests",
        scopes=["openid", "corp"],
    )
    out = flow.start(
        {
            "response_type": ["code"],
            "client_id": [client.client_id],
            "redirect_uri": ["https://shop.example/cb"],
            "scope": ["openid corp"],
            "state": ["s"],
            "code_challenge": ["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGUQjPy9rA"],
            "code_challenge_method": ["S256"],
        }
    )
    assert not isinstance(out, flow.ClientRedirect)
    db.session.commit()
    return out


def test_a_pending_authorization_ends_once() -> None:
    handle, pending = started()
    flow.complete(pending)
    db.session.commit()
    with pytest.raises(flow.AuthorizationPageError) as caught:
        flow.find_pending(handle)
    assert "already used" in caught.value.description


def test_the_second_of_two_racing_requests_is_refused_in_redis() -> None:
    handle, pending = started()
    if not isinstance(pending, flow.SharedPending):
        pytest.skip("Redis only: the database row's race is the next test")
    # Two requests read the pending authorization before either ends it.
    first = flow.find_pending(handle)
    second = dataclasses.replace(first)
    flow.complete(first)
    with pytest.raises(flow.AuthorizationPageError) as caught:
        flow.complete(second)
    assert "already used" in caught.value.description


def test_a_row_another_request_ended_is_not_ended_again() -> None:
    _, pending = started()
    if isinstance(pending, flow.SharedPending):
        pytest.skip("the database row only")
    # Another worker ended it after this request read it (a committed UPDATE in PostgreSQL
    # makes the conditional UPDATE below match nothing; SQLite's write lock orders the two).
    db.session.execute(
        update(PendingAuthorization)
        .where(PendingAuthorization.id == pending.id)
        .values(completed_at=flow.utcnow())
        .execution_options(synchronize_session=False)
    )
    assert pending.completed_at is None
    with pytest.raises(flow.AuthorizationPageError):
        flow.complete(pending)
