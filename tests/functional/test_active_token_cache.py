"""The active-token cache (idp.oauth.active_cache): a worker answers a token it found active
from memory only while the shared revocation epoch is unchanged, so a revocation made by any
worker ends the token at once everywhere. Needs Redis (``IDP_REDIS_URL``): without it nothing
is cached, which the last test checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from idp.clients import services as clients
from idp.extensions import db
from idp.oauth import active_cache, tokens
from idp.orgs.models import Company, Membership, MembershipStatus, Person


@pytest.fixture
def two_workers(
    make_app: Callable[..., Flask], redis_url: str | None
) -> Iterator[tuple[Flask, Flask]]:
    if not redis_url:
        pytest.skip("needs IDP_REDIS_URL")
    active_cache.forget_all()
    yield make_app(), make_app()
    active_cache.forget_all()


def _client_token(app: Flask) -> str:
    with app.app_context():
        client, _ = clients.create_client(
            name="Tax back-end",
            redirect_uris=["https://tax.example/cb"],
            auth_method="client_secret_basic",
            scopes=["corp"],
            grant_types=["client_credentials"],
        )
        token, _ = tokens.issue_access_token(client=client, scope="corp", principal=None)
        db.session.commit()
        return token


def _check(app: Flask, token: str) -> dict[str, Any] | None:
    with app.app_context():
        return tokens.check_access_token(token)


def test_token_is_remembered_then_forgotten_when_another_worker_revokes(
    two_workers: tuple[Flask, Flask],
) -> None:
    a, b = two_workers
    token = _client_token(a)
    claims = _check(a, token)
    assert claims is not None
    with a.app_context():
        assert active_cache.recall(token, active_cache.current_epoch()) == claims
    with b.app_context():
        tokens.revoke_access_token(claims)  # commits: the epoch moves
    assert _check(a, token) is None
    with a.app_context():
        assert active_cache.recall(token, active_cache.current_epoch()) is None


def test_membership_suspended_elsewhere_ends_a_remembered_user_token(
    two_workers: tuple[Flask, Flask],
) -> None:
    a, b = two_workers
    with a.app_context():
        client, _ = clients.create_client(
            name="Bank", redirect_uris=["https://bank.example/cb"], auth_method="none"
        )
        person = Person(display_name="Chan Tai Man")
        company = Company(br_number="12345678", name_en="Acme Ltd")
        db.session.add_all([person, company])
        db.session.flush()
        db.session.add(Membership(person_id=person.id, company_id=company.id, roles=["admin"]))
        db.session.flush()
        import datetime as dt

        grant = tokens.create_grant(
            client=client,
            person=person,
            company=company,
            scope="openid",
            session_id=None,
            security_key_id=None,
            auth_time=dt.datetime.now(dt.UTC),
            acr=None,
            amr=[],
            claims_request=None,
        )
        principal = tokens.principal_for_grant(grant)
        assert principal is not None
        token, _ = tokens.issue_access_token(client=client, scope="openid", principal=principal)
        db.session.commit()
        person_id, company_id = person.id, company.id
    assert _check(a, token) is not None
    with b.app_context():
        membership = (
            db.session.query(Membership).filter_by(person_id=person_id, company_id=company_id).one()
        )
        membership.status = MembershipStatus.SUSPENDED
        db.session.commit()
    assert _check(a, token) is None


def test_answer_read_before_a_revocation_is_never_reused(two_workers: tuple[Flask, Flask]) -> None:
    """The epoch is read before the database: a revocation committed after that read (the
    race) leaves the remembered answer under an old epoch."""
    a, b = two_workers
    token = _client_token(a)
    with a.app_context():
        epoch = active_cache.current_epoch()
        claims = tokens.decode_access_token(token)
        assert claims is not None
        assert tokens.is_access_token_live(claims)
    with b.app_context():
        tokens.revoke_access_token(claims)
    with a.app_context():
        active_cache.remember(token, epoch, claims)
        assert active_cache.recall(token, active_cache.current_epoch()) is None
    assert _check(a, token) is None


def test_rolled_back_write_does_not_move_the_epoch(two_workers: tuple[Flask, Flask]) -> None:
    a, _ = two_workers
    token = _client_token(a)
    claims = _check(a, token)
    assert claims is not None
    with a.app_context():
        before = active_cache.current_epoch()
        db.session.add(Company(br_number="87654321", name_en="Other Ltd"))
        db.session.flush()
        db.session.query(Company).filter_by(br_number="87654321").update({"name_en": "X"})
        db.session.rollback()
        db.session.commit()
        assert active_cache.current_epoch() == before


def test_lost_epoch_key_never_matches_an_old_answer(two_workers: tuple[Flask, Flask]) -> None:
    a, _ = two_workers
    token = _client_token(a)
    assert _check(a, token) is not None
    with a.app_context():
        old = active_cache.current_epoch()
        a.extensions["idp.redis"].flushdb()  # Redis restarted: the key is gone
        new = active_cache.current_epoch()
        assert new is not None
        assert new != old
        assert active_cache.recall(token, new) is None


def test_nothing_is_remembered_without_redis(make_app: Callable[..., Flask]) -> None:
    active_cache.forget_all()
    app = make_app(REDIS_URL="")
    token = _client_token(app)
    assert _check(app, token) is not None
    with app.app_context():
        assert active_cache.current_epoch() is None
    assert active_cache._entries == {}


def test_disabled_by_setting(make_app: Callable[..., Flask], redis_url: str | None) -> None:
    if not redis_url:
        pytest.skip("needs IDP_REDIS_URL")
    active_cache.forget_all()
    app = make_app(ACTIVE_TOKEN_CACHE_TTL=0)
    token = _client_token(app)
    assert _check(app, token) is not None
    assert active_cache._entries == {}


def test_a_broken_redis_connection_means_no_memory_then_a_new_one(
    two_workers: tuple[Flask, Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch is read on a connection each thread keeps: when it fails, that request is
    answered from the database (no epoch) and the next read opens a new connection."""
    import redis

    a, _ = two_workers
    token = _client_token(a)
    assert _check(a, token) is not None
    with a.app_context():
        assert active_cache.current_epoch() is not None
        broken = active_cache._connection()[0]

        def fail(*args: object, **kwargs: object) -> None:
            raise redis.ConnectionError("gone")

        monkeypatch.setattr(broken, "send_packed_command", fail)
        assert active_cache.current_epoch() is None
        assert active_cache.recall(token, active_cache.current_epoch()) is not None
        assert active_cache._connection()[0] is not broken


def test_short_lived_threads_do_not_use_up_the_redis_pool(
    two_workers: tuple[Flask, Flask],
) -> None:
    """A threaded development server runs each request in a new thread: the connections the
    epoch reads keep are outside the pool's count, so the pool never runs dry."""
    import threading

    a, _ = two_workers
    pool = a.extensions["idp.redis"].connection_pool
    epochs: list[bytes | None] = []

    def read() -> None:
        with a.app_context():
            epochs.append(active_cache.current_epoch())

    for _ in range(pool.max_connections + 20):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert None not in epochs
    with a.app_context():
        assert a.extensions["idp.redis"].ping()
