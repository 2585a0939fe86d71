"""The purge job (``idp purge``, ``idp.oauth.tokens.purge_expired``): expired WebAuthn
challenges and settled back-channel logout records go; what may still be needed stays."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from idp import cli as idp_cli
from idp.authn.models import WebAuthnChallenge
from idp.clients import services as clients
from idp.db import utcnow
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.models import BackchannelDelivery
from idp.security import digest

pytestmark = pytest.mark.usefixtures("app_ctx")


def challenge(name: str, *, expires_in: float, used: bool = False) -> None:
    now = utcnow()
    db.session.add(
        WebAuthnChallenge(
            challenge_hash=digest(name),
            ceremony="login",
            binding_hash=digest("binding"),
            data={},
            created_at=now - dt.timedelta(minutes=5),
            expires_at=now + dt.timedelta(seconds=expires_in),
            used_at=now if used else None,
        )
    )


def delivery(client_id: int, sid: str, **times: dt.timedelta | None) -> None:
    now = utcnow()
    values = {k: (now - v if v is not None else None) for k, v in times.items()}
    db.session.add(
        BackchannelDelivery(
            client_id=client_id,
            sid=sid,
            sub="subject",
            attempts=1,
            created_at=now - dt.timedelta(days=3),
            **values,
        )
    )


def seed() -> None:
    challenge("expired", expires_in=-1)
    challenge("expired-used", expires_in=-60, used=True)
    challenge("live", expires_in=120)
    challenge("live-used", expires_in=120, used=True)
    client, _ = clients.create_client(
        name="Tax e-service",
        redirect_uris=["https://tax.example.gov.hk/callback"],
        auth_method="client_secret_basic",
        backchannel_logout_uri="https://tax.example.gov.hk/bcl",
    )
    day = dt.timedelta(days=1)
    delivery(client.id, "delivered-old", delivered_at=2 * day, next_attempt_at=None)
    delivery(client.id, "gave-up-old", gave_up_at=2 * day, next_attempt_at=None)
    delivery(client.id, "delivered-recent", delivered_at=dt.timedelta(hours=1))
    delivery(client.id, "gave-up-recent", gave_up_at=dt.timedelta(hours=1))
    # Still owed (a retry due later, or long overdue because no cron ran): never purged.
    delivery(client.id, "retrying", next_attempt_at=-dt.timedelta(minutes=10))
    delivery(client.id, "overdue", next_attempt_at=10 * day)
    db.session.commit()


def remaining_challenges() -> set[str]:
    names = ("expired", "expired-used", "live", "live-used")
    by_hash = {digest(n): n for n in names}
    return {by_hash[h] for h in db.session.scalars(select(WebAuthnChallenge.challenge_hash))}


def remaining_deliveries() -> set[str]:
    return set(db.session.scalars(select(BackchannelDelivery.sid)))


def test_purge_deletes_expired_challenges_and_settled_deliveries() -> None:
    seed()
    counts = tokens.purge_expired()
    assert counts["webauthn_challenges"] == 2
    assert counts["backchannel_deliveries"] == 2
    assert remaining_challenges() == {"live", "live-used"}
    assert remaining_deliveries() == {
        "delivered-recent",
        "gave-up-recent",
        "retrying",
        "overdue",
    }
    again = tokens.purge_expired()
    assert again["webauthn_challenges"] == 0
    assert again["backchannel_deliveries"] == 0


def test_purge_command(runner: FlaskCliRunner) -> None:
    seed()
    result = runner.invoke(idp_cli.cli, ["purge", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert counts["webauthn_challenges"] == 2
    assert counts["backchannel_deliveries"] == 2
    assert {"authorization_codes", "pending_authorizations", "cache_entries"} <= set(counts)
    db.session.rollback()
    assert remaining_deliveries() == {"delivered-recent", "gave-up-recent", "retrying", "overdue"}
    human = runner.invoke(idp_cli.cli, ["purge"])
    assert human.exit_code == 0, human.output
    assert "webauthn_challenges: 0 deleted" in human.stdout
