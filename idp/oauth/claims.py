"""Who a token speaks of, and which claims a relying party receives.

A user token is issued for one person acting for one company (a ``Principal``). Claims are
released by scope (``profile``, ``email``, ``corp``) and by the OIDC ``claims`` parameter.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from flask import current_app

from idp.clients.models import Client, SubjectType
from idp.data.categories import CATEGORIES
from idp.keys.services import derive_secret
from idp.orgs.models import Company, Person

# Claims released by each scope (OIDC Core 5.4, plus our `corp`).
SCOPE_CLAIMS: dict[str, tuple[str, ...]] = {
    "profile": ("name",),
    "email": ("email", "email_verified"),
    "corp": ("corp",),
    # Company data categories (idp.data): a plain claim each, and verified_claims (IDA 1.0).
    **{category: (category, "verified_claims") for category in CATEGORIES},
}
# Company data claims are released only for a category in the grant and the live consent
# (idp.data.services), never picked by the claims parameter alone.
CATEGORY_CLAIMS = frozenset((*CATEGORIES, "verified_claims"))
USER_CLAIMS = frozenset(c for claims in SCOPE_CLAIMS.values() for c in claims) - CATEGORY_CLAIMS
# The scope that governs each user claim: the claims parameter can pick claims, but only
# within scopes the client is registered for and the person consented to.
CLAIM_SCOPE = {claim: scope for scope, claims in SCOPE_CLAIMS.items() for claim in claims}
del CLAIM_SCOPE["verified_claims"]  # several scopes release it

ACR_HARDWARE_KEY = "phrh"
AMR_HARDWARE_KEY = ("hwk", "mfa")


@dataclass
class Principal:
    """The person and the company a user token is for, and how they signed in.

    ``authorisations``: the person's live e-service roles for this client and company.
    ``agent``: the company the person acts through under a third-party authorisation (then
    ``roles`` is empty: they hold none in ``company``), announced by the ``act`` claim."""

    person: Person
    company: Company
    roles: list[str]
    authorisations: list[str] = field(default_factory=list)
    agent: Company | None = None
    grant_id: int | None = None
    gid: str | None = None
    sid: str | None = None
    auth_time: int | None = None
    acr: str | None = None
    amr: list[str] = field(default_factory=list)
    claims_request: dict[str, Any] | None = None
    # RFC 9396: the authorization details granted (access token claim, refresh keeps them).
    authorization_details: list[dict[str, Any]] | None = None
    # When the grant ends (capped at its consent's expiry): no access token outlives it.
    grant_expires_at: int | None = None


def subject_for(client: Client, person: Person) -> str:
    """The ``sub`` a client sees: public, or pairwise per sector (OIDC Core 8.1)."""
    if client.subject_type is SubjectType.PAIRWISE:
        salt = _pairwise_salt()
        sector = (client.sector_identifier or "").encode()
        digest = hashlib.sha256(sector + b"\x00" + person.subject.encode() + b"\x00" + salt)
        return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    return person.subject


def _pairwise_salt() -> bytes:
    salt = current_app.extensions.get("idp.pairwise_salt")
    if salt is None:
        salt = derive_secret(current_app.config["IDP"], "pairwise")
        current_app.extensions["idp.pairwise_salt"] = salt
    return bytes(salt)


def actor_claim(client: Client, principal: Principal) -> dict[str, Any]:
    """The RFC 8693 §4.1 ``act`` claim of an agent's token: who is acting for the company the
    token is about. ``{"sub": <the person's sub at this client>, "corp": {"br_number": <agent
    company's BR number>, "name": <its English name>}}``."""
    assert principal.agent is not None
    return {
        "sub": subject_for(client, principal.person),
        "corp": {"br_number": principal.agent.br_number, "name": principal.agent.name_en},
    }


def parse_claims_request(raw: str | None) -> dict[str, Any] | None:
    """Parse the OIDC ``claims`` parameter (Core 5.5); raise ``invalid_request`` if malformed."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("The 'claims' parameter is not valid JSON.") from None
    if not isinstance(value, dict) or not set(value) <= {"userinfo", "id_token"}:
        raise InvalidRequestError(
            "The 'claims' parameter must be an object with 'userinfo' and/or 'id_token' members."
        )
    for member in value.values():
        if member is not None and not isinstance(member, dict):
            raise InvalidRequestError("Each member of 'claims' must be an object.")
        for request in (member or {}).values():
            if request is not None and not isinstance(request, dict):
                raise InvalidRequestError("Each requested claim must be null or an object.")
    return value


def _claims_param_names(
    claims_request: dict[str, Any] | None, targets: tuple[str, ...]
) -> set[str]:
    names: set[str] = set()
    for target in targets:
        member = (claims_request or {}).get(target)
        if isinstance(member, dict):
            names |= {c for c in member if c in USER_CLAIMS}
    return names


def claims_param_scopes(
    claims_request: dict[str, Any] | None, client_scopes: list[str]
) -> set[str]:
    """Scopes whose claims the ``claims`` parameter asks for, within the client's scopes.

    Consent is asked for these as for requested scopes."""
    names = _claims_param_names(claims_request, ("userinfo", "id_token"))
    return {CLAIM_SCOPE[c] for c in names} & set(client_scopes)


def requested_claim_names(
    scope: str, claims_request: dict[str, Any] | None, target: str, client_scopes: list[str]
) -> set[str]:
    """Names of user claims to release to ``target`` ("userinfo" or "id_token")."""
    scopes = set(scope.split())
    names = {c for s in scopes for c in SCOPE_CLAIMS.get(s, ()) if c not in CATEGORY_CLAIMS}
    names |= {
        c for c in _claims_param_names(claims_request, (target,)) if CLAIM_SCOPE[c] in client_scopes
    }
    return names


def user_claims(principal: Principal, client: Client, scope: str, target: str) -> dict[str, Any]:
    """``sub`` plus the claims released for ``scope`` and the claims request."""
    person, company = principal.person, principal.company
    claims: dict[str, Any] = {"sub": subject_for(client, person)}
    for name in sorted(
        requested_claim_names(scope, principal.claims_request, target, list(client.scopes))
    ):
        if name == "name":
            claims["name"] = person.display_name
        elif name == "email" and person.email:
            claims["email"] = person.email
        elif name == "email_verified" and person.email:
            # Enrolment consumes an invitation sent to this address.
            claims["email_verified"] = True
        elif name == "corp":
            claims["corp"] = {
                "br_number": company.br_number,
                "name": company.name_en,
                "roles": sorted(principal.roles),
            }
            if principal.authorisations:
                # Present only when the person holds named e-service roles for this client.
                claims["corp"]["authorisations"] = sorted(principal.authorisations)
    claims.update(_company_data_claims(principal, client, scope))
    if principal.agent is not None:
        # Always: a relying party must know that someone acts for the company as its agent.
        claims["act"] = actor_claim(client, principal)
    return claims


def _company_data_claims(principal: Principal, client: Client, scope: str) -> dict[str, Any]:
    """Company data categories of the grant (scope or ``corp_data`` details) that the company
    consented to, as plain claims and ``verified_claims`` (``idp.data.services``)."""
    from idp.data import services as data

    categories = data.released_categories(
        person=principal.person,
        company=principal.company,
        client=client,
        scope=scope,
        authorization_details=principal.authorization_details,
    )
    if not categories:
        return {}
    return data.category_claims(data.release(principal.company, categories))
