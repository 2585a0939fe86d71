"""Company data released with consent: the registry of sources, what a grant may release,
and the company data API's answer.

A category is released to a relying party only when it is in the grant (a category scope or
a ``corp_data`` authorization detail, ``categories_of``) AND in the company's live consent to
that relying party (``idp.consent.services.granted_scopes``): never otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import current_app
from sqlalchemy import select

from idp.audit.services import Origin, record
from idp.clients.models import Client
from idp.consent import services as consent
from idp.data.categories import CATEGORIES, categories_of
from idp.data.sources import DataSource, RegisterSource, Release, verified_claims
from idp.errors import IdpError, ValidationError
from idp.extensions import db
from idp.oauth import tokens
from idp.oauth.models import Grant
from idp.orgs.models import Company, Person


class UnknownCategoryError(ValidationError):
    """No such company data category."""


class InactiveTokenError(IdpError):
    """The access token is not active."""

    status = 401
    code = "invalid_token"


class InsufficientScopeError(IdpError):
    """The access token covers no consented company data category."""

    status = 403
    code = "insufficient_scope"


# Source types by the name IDP_DATA_SOURCES uses; each factory gets the settings.
SOURCE_TYPES: dict[str, Callable[[dict[str, Any]], DataSource]] = {
    "register": lambda cfg: RegisterSource(trust_framework=str(cfg["DATA_TRUST_FRAMEWORK"])),
}


def sources() -> list[DataSource]:
    """The configured data sources, in order (``IDP_DATA_SOURCES``), built once per app."""
    cached = current_app.extensions.get("idp.data.sources")
    if cached is None:
        cfg = current_app.config["IDP"]
        names = [n.strip() for n in str(cfg["DATA_SOURCES"]).split(",") if n.strip()]
        unknown = [n for n in names if n not in SOURCE_TYPES]
        if unknown:
            raise ValueError(f"IDP_DATA_SOURCES names unknown sources: {', '.join(unknown)}")
        cached = [SOURCE_TYPES[n](cfg) for n in names]
        current_app.extensions["idp.data.sources"] = cached
    return list(cached)


def release(company: Company, categories: Iterable[str]) -> dict[str, Release]:
    """The releases of exactly ``categories`` for ``company``, each from the first configured
    source that provides it. A category no source holds anything for (a company with no
    registered address) is left out. Raises ``UnknownCategoryError``."""
    wanted = set(categories)
    unknown = wanted - set(CATEGORIES)
    if unknown:
        raise UnknownCategoryError(f"Unknown data categories: {', '.join(sorted(unknown))}.")
    releases: dict[str, Release] = {}
    remaining = set(wanted)
    for source in sources():
        mine = remaining & set(source.categories)
        if not mine:
            continue
        fetched = source.fetch(company, mine)
        releases.update({c: r for c, r in fetched.items() if c in mine})
        remaining -= mine
    return {c: releases[c] for c in CATEGORIES if c in releases}


def released_categories(
    *,
    person: Person,
    company: Company,
    client: Client,
    scope: str | None,
    authorization_details: list[dict[str, Any]] | None,
) -> set[str]:
    """Categories a grant may release now: in the grant (scope or ``corp_data`` details) and
    in the live consent of ``person`` for ``company`` to ``client``."""
    asked = categories_of(scope, authorization_details)
    if not asked:
        return set()
    return asked & consent.granted_scopes(person, company, client)


def category_claims(releases: dict[str, Release]) -> dict[str, Any]:
    """Plain claims (one object per category) plus ``verified_claims`` (a list of IDA
    objects, one per distinct verification); empty when nothing is released."""
    if not releases:
        return {}
    claims: dict[str, Any] = {c: r.values for c, r in releases.items()}
    claims["verified_claims"] = verified_claims(releases.values())
    return claims


def company_data(token_claims: dict[str, Any], *, origin: Origin | None = None) -> dict[str, Any]:
    """The company data API's answer for an active access token's claims: the company's BR
    number and exactly the consented categories of the token's grant, each with its values,
    provenance and ``verified_claims`` form. Audited (``data:company:release``, committed).

    Raises ``InactiveTokenError`` when the token has no live grant (or its person, membership,
    company or client is no longer active) and ``InsufficientScopeError`` when it covers no
    consented category."""
    gid = token_claims.get("gid")
    if not isinstance(gid, str):
        raise InsufficientScopeError("The access token was not issued for a company.")
    grant = db.session.scalars(select(Grant).where(Grant.gid == gid)).first()
    if grant is None:
        raise InactiveTokenError()
    principal = tokens.principal_for_grant(grant)
    client = db.session.get(Client, grant.client_id)
    if principal is None or client is None or not client.is_active:
        raise InactiveTokenError()
    categories = released_categories(
        person=principal.person,
        company=principal.company,
        client=client,
        scope=str(token_claims.get("scope") or ""),
        authorization_details=grant.authorization_details,
    )
    if not categories:
        raise InsufficientScopeError(
            "The access token covers no company data category the company consented to."
        )
    releases = release(principal.company, categories)
    record(
        "data:company:release",
        actor=f"client:{client.client_id}",
        subject=f"company:{principal.company.br_number}",
        company_id=principal.company.id,
        origin=origin,
        details={
            "categories": sorted(releases),
            "person": principal.person.subject,
            "gid": grant.gid,
        },
    )
    db.session.commit()
    return {
        "br_number": principal.company.br_number,
        "categories": {
            c: {
                "values": r.values,
                "provenance": r.provenance,
                "verified_claims": r.verified_claims(),
            }
            for c, r in releases.items()
        },
    }
