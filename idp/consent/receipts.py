"""Signed consent receipts: a JWT (``typ: consent-receipt+jwt``) we sign, through
``idp.keys.jws``, for every grant and revocation of a consent.

The relying party receives the latest in the token response (``consent_receipt``) and can
list its receipts at ``POST /consent/receipts``; the company's admins see and download them.
Anyone can verify a receipt against our JWKS.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, select

from idp.clients.models import Client
from idp.consent.models import Consent, ConsentReceipt
from idp.db import new_public_id
from idp.extensions import db
from idp.keys import jws
from idp.oauth.claims import subject_for
from idp.orgs.models import Company, Person

RECEIPT_TYP = "consent-receipt+jwt"
GRANTED, REVOKED = "granted", "revoked"
PAGE_SIZE = 100


def _ts(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def receipt_claims(consent: Consent, *, event: str, jti: str) -> dict[str, Any]:
    """The claims of a receipt for ``consent`` as it stands now."""
    company = db.session.get(Company, consent.company_id)
    client = db.session.get(Client, consent.client_id)
    person = db.session.get(Person, consent.person_id)
    if company is None or client is None or person is None:
        raise LookupError("the consent's company, client or person is gone")
    claims: dict[str, Any] = {
        "iss": current_app.config["IDP"]["ISSUER"],
        "iat": int(time.time()),
        "jti": jti,
        "consent_id": consent.consent_id,
        "event": event,
        "company": {"br_number": company.br_number, "name": company.name_en},
        "client": {"client_id": client.client_id, "name": client.name},
        "sub": subject_for(client, person),
        "scopes": consent.scopes.split(),
        "authorization_details": consent.authorization_details or [],
        "purpose": consent.purpose,
        "granted_at": _ts(consent.updated_at if event == GRANTED else consent.created_at),
        "expires_at": _ts(consent.expires_at),
    }
    if event == REVOKED:
        claims["revoked_at"] = _ts(consent.revoked_at)
        claims["revoked_by"] = consent.revoked_by
    return claims


def issue(consent: Consent, *, event: str) -> ConsentReceipt:
    """Sign and store a receipt for ``consent`` (flushed, not committed)."""
    jti = new_public_id()
    claims = receipt_claims(consent, event=event, jti=jti)
    alg = str(current_app.config["IDP"]["ACCESS_TOKEN_ALG"])
    token = jws.sign(claims, alg=alg, typ=RECEIPT_TYP)
    row = ConsentReceipt(consent_id=consent.id, event=event, jti=jti, receipt=token)
    db.session.add(row)
    db.session.flush()
    return row


# Built once: every token response under a consent carries its latest receipt.
_LATEST = (
    select(ConsentReceipt.receipt)
    .where(ConsentReceipt.consent_id == bindparam("consent_id"))
    .order_by(ConsentReceipt.id.desc())
    .limit(1)
)


def latest_receipt(consent_id: int | None) -> str | None:
    """The latest receipt (the JWT) of the consent with this internal id, if any."""
    if consent_id is None:
        return None
    return db.session.scalar(_LATEST, {"consent_id": consent_id})


def issued_consent_id(row: ConsentReceipt) -> str | None:
    """The public consent id a stored receipt was issued for (a consent granted again after
    a revocation or expiry has a new one). Read from our own signed payload."""
    try:
        segment = row.receipt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError):
        return None
    value = claims.get("consent_id") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else None


def as_json(row: ConsentReceipt, consent: Consent) -> dict[str, Any]:
    return {
        "id": row.id,
        "consent_id": issued_consent_id(row) or consent.consent_id,
        "event": row.event,
        "jti": row.jti,
        "issued_at": _ts(row.created_at),
        "receipt": row.receipt,
    }


def client_receipts(
    client: Client, *, after: int | None = None, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """The receipts of ``client``'s consents (grants and revocations), oldest first, those
    with an id above ``after``: page with the last ``id`` received."""
    query = (
        select(ConsentReceipt, Consent)
        .join(Consent, Consent.id == ConsentReceipt.consent_id)
        .where(Consent.client_id == client.id)
        .order_by(ConsentReceipt.id)
        .limit(max(1, min(limit, PAGE_SIZE)))
    )
    if after is not None:
        query = query.where(ConsentReceipt.id > after)
    return [as_json(row, consent) for row, consent in db.session.execute(query).all()]


def consent_receipts(consent: Consent) -> list[ConsentReceipt]:
    """Every receipt of ``consent``, newest first."""
    return list(
        db.session.scalars(
            select(ConsentReceipt)
            .where(ConsentReceipt.consent_id == consent.id)
            .order_by(ConsentReceipt.id.desc())
        )
    )


def get_receipt(consent: Consent, receipt_id: int) -> ConsentReceipt | None:
    """Receipt ``receipt_id`` of ``consent``, or None (another consent's is not found)."""
    row = db.session.get(ConsentReceipt, receipt_id)
    if row is None or row.consent_id != consent.id:
        return None
    return row
