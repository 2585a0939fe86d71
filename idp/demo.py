"""The demo: one company with an admin invitation, the demo relying party and the demo bank (a
FAPI 2.0 client with its keys under ``keys/``), created idempotently.

Used by ``idp demo`` only; everything here goes through the domain services.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import func, select

from idp.clients import services as clients
from idp.clients.models import Client
from idp.data.categories import CATEGORIES
from idp.errors import NotFoundError
from idp.extensions import db
from idp.orgs import register
from idp.orgs import services as orgs
from idp.orgs.models import Company, Role

DEMO_BR_NUMBER = "12345678"
DEMO_COMPANY_NAME = "Demo Trading Limited"
DEMO_ADMIN_EMAIL = "admin@demo-trading.example"
DEMO_CLIENT_NAME = "Corp ID demo relying party"
# The demo relying party (idp.demo_rp) is served under this path of the issuer in demo mode.
DEMO_RP_PATH = "/demo-rp"
DEMO_SCOPE = "openid profile email corp"
DEMO_BANK_CLIENT_NAME = "Demo Bank (business accounts)"
# The demo bank (idp.demo_bank) is served under this path of the issuer in demo mode.
DEMO_BANK_PATH = "/demo-bank"
ACTOR = "operator:demo"
# Fifty fictional companies (the demo company among them), imported when the register is empty.
SAMPLE_REGISTER = Path(__file__).parent / "orgs" / "data" / "sample_register.csv"


@dataclass(frozen=True)
class DemoSeed:
    company_id: int
    br_number: str
    company_created: bool
    invite_url: str | None
    client_id: str
    client_created: bool
    redirect_uris: tuple[str, ...]
    demo_rp_url: str
    register_imported: int = 0
    bank_client_id: str = ""
    bank_client_created: bool = False
    demo_bank_url: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "org_id": self.company_id,
            "br_number": self.br_number,
            "company_created": self.company_created,
            "invite_url": self.invite_url,
            "client_id": self.client_id,
            "client_created": self.client_created,
            "redirect_uris": list(self.redirect_uris),
            "demo_rp_url": self.demo_rp_url,
            "register_imported": self.register_imported,
            "bank_client_id": self.bank_client_id,
            "bank_client_created": self.bank_client_created,
            "demo_bank_url": self.demo_bank_url,
        }


def demo_rp_urls(issuer: str | None = None) -> tuple[str, str, str]:
    """The demo relying party's ``(home, redirect_uri, post_logout_redirect_uri)`` under
    ``issuer`` (default: the app's)."""
    issuer = (issuer or str(current_app.config["IDP"]["ISSUER"])).rstrip("/")
    home = f"{issuer}{DEMO_RP_PATH}/"
    return home, f"{issuer}{DEMO_RP_PATH}/callback", home


def demo_bank_urls(issuer: str | None = None) -> tuple[str, str]:
    """The demo bank's ``(home, redirect_uri)`` under ``issuer`` (default: the app's)."""
    issuer = (issuer or str(current_app.config["IDP"]["ISSUER"])).rstrip("/")
    home = f"{issuer}{DEMO_BANK_PATH}/"
    return home, f"{issuer}{DEMO_BANK_PATH}/callback"


def find_demo_bank_client() -> Client | None:
    """The demo bank's registration (the oldest client with its name), if seeded."""
    return db.session.scalar(
        select(Client).where(Client.name == DEMO_BANK_CLIENT_NAME).order_by(Client.id).limit(1)
    )


def seed_demo_bank() -> tuple[Client, bool]:
    """Make sure the demo bank's keys (``keys/demo-bank-*.jwk``) and its registration exist:
    a ``fapi2`` client authenticating with ``private_key_jwt`` (its public key as ``jwks``),
    pairwise subjects, the company data categories as scopes. An existing registration gets
    the current redirect URI and public key. Returns ``(client, created)``."""
    from idp.demo_bank import services as bank
    from idp.oauth.discovery import SCOPES

    client_key, _ = bank.ensure_keys(current_app.config["IDP"]["KEYS_DIR"])
    jwks = bank.public_jwks(client_key)
    _, redirect_uri = demo_bank_urls()
    # The category scopes are registered once the provider supports them.
    scopes = [s for s in ("openid", *CATEGORIES) if s in SCOPES]
    client = find_demo_bank_client()
    if client is None:
        client, _ = clients.create_client(
            name=DEMO_BANK_CLIENT_NAME,
            redirect_uris=[redirect_uri],
            auth_method="private_key_jwt",
            jwks=jwks,
            scopes=scopes,
            grant_types=["authorization_code"],
            id_token_alg=bank.ID_TOKEN_ALG,
            subject_type="pairwise",
            profile="fapi2",
            actor=ACTOR,
        )
        return client, True
    changes: dict[str, Any] = {}
    if redirect_uri not in client.redirect_uris:
        # Pairwise: every redirect URI must share one host, so the old ones are dropped.
        changes["redirect_uris"] = [redirect_uri]
    if client.jwks != jwks:
        changes["jwks"] = jwks
    if set(client.scopes) != set(scopes):
        changes["scopes"] = scopes
    if changes:
        client = clients.update_client(client.client_id, actor=ACTOR, **changes)
    return client, False


def find_demo_client() -> Client | None:
    """The demo relying party's registration (the oldest client with its name), if seeded."""
    return db.session.scalar(
        select(Client).where(Client.name == DEMO_CLIENT_NAME).order_by(Client.id).limit(1)
    )


def seed_demo() -> DemoSeed:
    """Make sure the demo company and the demo client exist.

    A fresh admin invitation is issued while the company has no admin (tokens are stored only
    hashed, so an earlier link cannot be shown again); ``invite_url`` is None once an admin has
    enrolled. The demo client is public (PKCE, no secret), so it can be shown on every run; its
    redirect URI is the demo relying party's callback under the current issuer, added to an
    existing registration when the issuer changed (another ``--port``). An empty register is
    first filled with the sample register (``SAMPLE_REGISTER``, which holds the demo company).
    """
    imported = 0
    if not db.session.scalar(select(func.count()).select_from(Company)):
        # The sample is clean: its (empty) rejects report is not kept.
        imported = register.import_register(
            SAMPLE_REGISTER, actor=ACTOR, rejects_path=os.devnull
        ).inserted
    try:
        company = orgs.get_company_by_br(DEMO_BR_NUMBER)
        company_created = imported > 0
        token: str | None = None
        if not orgs.has_admin(company):
            _, token = orgs.create_invitation(
                company=company, email=DEMO_ADMIN_EMAIL, roles=[Role.ADMIN.value], invited_by=ACTOR
            )
    except NotFoundError:
        company, _, token = orgs.create_org_with_admin(
            br_number=DEMO_BR_NUMBER,
            name=DEMO_COMPANY_NAME,
            admin_email=DEMO_ADMIN_EMAIL,
            actor=ACTOR,
        )
        company_created = True

    home, redirect_uri, logout_uri = demo_rp_urls()
    client = find_demo_client()
    client_created = client is None
    if client is None:
        client, _ = clients.create_client(
            name=DEMO_CLIENT_NAME,
            redirect_uris=[redirect_uri],
            auth_method="none",
            post_logout_redirect_uris=[logout_uri],
            actor=ACTOR,
        )
    elif (
        redirect_uri not in client.redirect_uris
        or logout_uri not in client.post_logout_redirect_uris
    ):
        client = clients.update_client(
            client.client_id,
            actor=ACTOR,
            redirect_uris=list(dict.fromkeys([*client.redirect_uris, redirect_uri])),
            post_logout_redirect_uris=list(
                dict.fromkeys([*client.post_logout_redirect_uris, logout_uri])
            ),
        )
    bank_client, bank_created = seed_demo_bank()
    return DemoSeed(
        company_id=company.id,
        br_number=company.br_number,
        company_created=company_created,
        invite_url=orgs.invite_url(token) if token else None,
        client_id=client.client_id,
        client_created=client_created,
        redirect_uris=tuple(client.redirect_uris),
        demo_rp_url=home,
        register_imported=imported,
        bank_client_id=bank_client.client_id,
        bank_client_created=bank_created,
        demo_bank_url=demo_bank_urls()[0],
    )
