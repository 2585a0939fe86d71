"""The authorization endpoint as a sequence of small steps.

``start`` validates the request (Authlib's checks plus ours in ``idp.oauth.checks``) and
records it server-side; ``resume`` walks the rest — sign-in, company choice, consent — and
finally issues the code. Each step returns an outcome the view renders; errors after the
redirect URI is known go back to the client with ``state`` and ``iss`` (RFC 9207), errors
before it are shown to the person and never redirected.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import current_app
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm.attributes import set_committed_value

from idp import cache
from idp.authn.models import LoginSession
from idp.clients.models import Client
from idp.consent import services as consent
from idp.consent.models import Consent
from idp.db import utcnow
from idp.delegation import services as delegation
from idp.delegation.services import AgentOption
from idp.extensions import db
from idp.oauth import par
from idp.oauth.claims import Principal, claims_param_scopes, parse_claims_request
from idp.oauth.models import PendingAuthorization
from idp.oauth.rar import check_purpose_param, parse_authorization_details
from idp.oauth.server import StoredOAuth2Request
from idp.orgs.models import Company, Membership, Person
from idp.security import digest, new_secret

PENDING_TTL = 15 * 60
PENDING_PREFIX = "cia_"
_ENDED = (
    "This sign-in request has expired or was already used. Start again from the site you came from."
)


# --- where a pending authorization lives -------------------------------------------------------

# Its namespace in Redis (idp.cache), where it lives when Redis is configured.
PENDING_NAMESPACE = "pending-authorization"


@dataclass
class SharedPending:
    """A pending authorization kept in Redis (short-lived state, as the architecture puts it)
    when ``IDP_REDIS_URL`` is set: the fields of ``PendingAuthorization``, saved back after each
    change (``save``) and gone when it expires. Without Redis the database row is used."""

    handle_hash: str
    client_id: int
    params: dict[str, str]
    created_at: dt.datetime
    expires_at: dt.datetime
    company_id: int | None = None
    agent_company_id: int | None = None
    consented_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    _TIMES = ("created_at", "expires_at", "consented_at", "completed_at")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for name in self._TIMES:
            value = out[name]
            out[name] = value.isoformat() if value is not None else None
        return out

    @classmethod
    def load(cls, handle_hash: str) -> SharedPending | None:
        """The pending authorization with this handle digest, or None (unknown or expired)."""
        found = cache.peek(PENDING_NAMESPACE, handle_hash)
        if found is None:
            return None
        for name in cls._TIMES:
            if found.get(name) is not None:
                found[name] = dt.datetime.fromisoformat(found[name])
        return cls(**found)


Pending = PendingAuthorization | SharedPending


def save(pending: Pending) -> None:
    """Write a change of ``pending`` where it lives: Redis at once; a database row goes with
    the caller's commit."""
    if isinstance(pending, SharedPending):
        # Kept a minute past its expiry, so that a late step is told it expired.
        ttl = int((pending.expires_at - utcnow()).total_seconds()) + 60
        cache.keep(PENDING_NAMESPACE, pending.handle_hash, pending.as_json(), ttl=max(1, ttl))


def complete(pending: Pending) -> None:
    """End ``pending`` once and for all (a code or an error is going back to the client),
    compare-and-set where it lives: of two requests racing to end it, one goes on and the
    other gets ``AuthorizationPageError``, as if it had come after. A database row's change
    goes with the caller's commit (the row stays locked until then); Redis's at once."""
    now = utcnow()
    if isinstance(pending, SharedPending):
        pending.completed_at = now
        ttl = int((pending.expires_at - now).total_seconds()) + 60
        ended = cache.keep_once(
            PENDING_NAMESPACE, pending.handle_hash, pending.as_json(), ttl=max(1, ttl)
        )
    else:
        changed = db.session.execute(
            update(PendingAuthorization)
            .where(
                PendingAuthorization.id == pending.id,
                PendingAuthorization.completed_at.is_(None),
            )
            .values(completed_at=now)
            .execution_options(synchronize_session=False)
        )
        ended = getattr(changed, "rowcount", 0) == 1
        if ended:
            set_committed_value(pending, "completed_at", now)
    if not ended:
        raise AuthorizationPageError("invalid_request", _ENDED)


# --- outcomes ---------------------------------------------------------------------------------


@dataclass
class ClientRedirect:
    """Send the browser back to the client with ``params`` (iss added by the view)."""

    redirect_uri: str
    params: list[tuple[str, str]]
    response_mode: str = "query"


@dataclass
class NeedLogin:
    handle: str
    login_hint: str | None = None
    ui_locales: str | None = None


@dataclass
class NeedCompany:
    handle: str
    client: Client
    options: list[tuple[Company, list[str]]] = field(default_factory=list)
    ui_locales: str | None = None
    # "Agent X for client Y": act for a principal company as a member of an agent company.
    agent_options: list[AgentOption] = field(default_factory=list)


@dataclass
class NeedConsent:
    handle: str
    client: Client
    company: Company
    scopes: list[str]
    ui_locales: str | None = None
    # Company data categories asked through authorization_details (RFC 9396).
    categories: list[str] = field(default_factory=list)
    purposes: list[str] = field(default_factory=list)
    expires_at: dt.datetime | None = None


Outcome = ClientRedirect | NeedLogin | NeedCompany | NeedConsent


class AuthorizationPageError(Exception):
    """An error shown to the person, never redirected (client or redirect URI not trusted)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


# --- helpers ----------------------------------------------------------------------------------


def _server() -> Any:
    from idp.oauth import authorization

    return authorization


def _request_uri() -> str:
    return str(current_app.config["IDP"]["ISSUER"]) + "/authorize"


def _error_redirect(
    error: OAuth2Error, params: dict[str, str], redirect_uri: str | None
) -> ClientRedirect:
    if not redirect_uri:
        raise AuthorizationPageError(
            error.error or "invalid_request", error.get_error_description() or "Invalid request."
        )
    out = [("error", error.error or "invalid_request")]
    if error.get_error_description():
        out.append(("error_description", error.get_error_description()))
    if params.get("state"):
        out.append(("state", params["state"]))
    mode = params.get("response_mode") or "query"
    if mode not in ("query", "form_post"):
        mode = "query"
    return ClientRedirect(redirect_uri, out, mode)


def _fail(error_cls: type[OAuth2Error], description: str, pending: Pending) -> ClientRedirect:
    complete(pending)
    db.session.commit()
    return _error_redirect(
        error_cls(description), pending.params, pending.params.get("redirect_uri")
    )


# --- start ------------------------------------------------------------------------------------


def start(values: dict[str, list[str]]) -> tuple[str, Pending] | ClientRedirect:
    """Validate an authorization request. Returns ``(handle, pending)`` for a valid request
    (flushed, for the caller to commit) or a ``ClientRedirect`` carrying the error; raises
    ``AuthorizationPageError`` when the client or its redirect URI cannot be trusted."""
    if any("\x00" in k or any("\x00" in x for x in v) for k, v in values.items()):
        raise AuthorizationPageError("invalid_request", "The request contains a NUL character.")
    params = {k: v[0] for k, v in values.items() if v}
    duplicated = sorted(k for k, v in values.items() if len(v) > 1)
    if any(k in ("client_id", "redirect_uri", "request_uri") for k in duplicated):
        raise AuthorizationPageError(
            "invalid_request", "The request repeats client_id, redirect_uri or request_uri."
        )
    pushed = params.get("request_uri", "").startswith(par.REQUEST_URI_PREFIX)
    if pushed:
        # RFC 9126 §4: the pushed parameters are the request; anything else sent is ignored.
        try:
            _, params = par.claim(params["request_uri"], client_id=params.get("client_id"))
        except par.InvalidRequestURI as exc:
            raise AuthorizationPageError("invalid_request_uri", exc.description) from None
        duplicated = []
    request = StoredOAuth2Request(params, _request_uri())
    server = _server()
    try:
        grant = server.get_consent_grant(request)
    except OAuth2Error as error:
        return _error_redirect(error, params, error.redirect_uri)
    if not pushed and par.uses_par(request.client):
        from authlib.oauth2.rfc6749 import InvalidRequestError

        return _error_redirect(
            InvalidRequestError(
                "This client must push its authorization requests (PAR, RFC 9126) "
                "and send only request_uri and client_id here."
            ),
            params,
            grant.redirect_uri,
        )
    if duplicated:
        from authlib.oauth2.rfc6749 import InvalidRequestError

        return _error_redirect(
            InvalidRequestError(f"Parameters must not be repeated: {', '.join(duplicated)}."),
            params,
            grant.redirect_uri,
        )
    handle = new_secret(PENDING_PREFIX, 24)
    now = utcnow()
    fields = {
        "handle_hash": digest(handle),
        "client_id": request.client.id,
        "params": params,
        "created_at": now,
        "expires_at": now + dt.timedelta(seconds=PENDING_TTL),
    }
    if cache.shared():
        pending: Pending = SharedPending(**fields)
        save(pending)
        return handle, pending
    pending = PendingAuthorization(**fields)
    db.session.add(pending)
    # Written with what the request leads to (the sign-in page's challenge, a code, ...):
    # the caller commits.
    db.session.flush()
    return handle, pending


# Built once: each step of a sign-in reads its pending authorization.
_PENDING_BY_HANDLE = select(PendingAuthorization).where(
    PendingAuthorization.handle_hash == bindparam("handle_hash")
)


def find_pending(handle: str | None) -> Pending:
    """The live pending authorization for a handle, or ``AuthorizationPageError``."""
    if not handle or not handle.startswith(PENDING_PREFIX) or len(handle) > 100:
        raise AuthorizationPageError(
            "invalid_request",
            "This sign-in request is not known. Start again from the site you came from.",
        )
    pending: Pending | None
    if cache.shared():
        pending = SharedPending.load(digest(handle))
    else:
        pending = db.session.scalars(_PENDING_BY_HANDLE, {"handle_hash": digest(handle)}).first()
    if pending is None or pending.completed_at is not None or pending.expires_at <= utcnow():
        raise AuthorizationPageError("invalid_request", _ENDED)
    return pending


# --- resume -----------------------------------------------------------------------------------


def _prompts(pending: Pending) -> set[str]:
    return set(pending.params.get("prompt", "").split())


def needs_login(pending: Pending, session: LoginSession | None) -> bool:
    """Whether a (fresh) sign-in is needed: none yet, ``prompt=login``, ``max_age`` passed, or
    an ``id_token_hint`` naming someone else."""
    if session is None:
        return True
    if "login" in _prompts(pending) and session.auth_time < pending.created_at:
        return True
    # OIDC Core 3.1.2.1: a sign-in made for this very request satisfies any max_age, even 0.
    max_age = pending.params.get("max_age")
    fresh = session.auth_time >= pending.created_at
    age = (utcnow() - session.auth_time).total_seconds()
    if max_age is not None and not fresh and age > int(max_age):
        return True
    if pending.params.get("id_token_hint") and session.auth_time < pending.created_at:
        return not hint_matches(pending, session)
    return False


def hint_matches(pending: Pending, session: LoginSession) -> bool:
    """Whether the ``id_token_hint`` names the signed-in person (OIDC Core 3.1.2.1)."""
    from idp.keys import jws
    from idp.oauth.claims import subject_for

    client = db.session.get(Client, pending.client_id)
    person = db.session.get(Person, session.person_id)
    if client is None or person is None:
        return False
    try:
        claims = jws.verify(
            pending.params["id_token_hint"],
            issuer=current_app.config["IDP"]["ISSUER"],
            typ=jws.ID_TOKEN_TYP,
            verify_exp=False,
        )
    except jws.InvalidJWT:
        return False
    return bool(claims.get("sub") == subject_for(client, person))


@functools.cache  # built once, on first use
def _companies_statement() -> Any:
    from idp.delegation.models import ThirdPartyAuthorisation as TPA

    # Whether the person's membership of this company could make them an agent at the
    # client: only then is the (costlier) agent query worth asking.
    may_be_agent = (
        select(TPA.id)
        .where(
            TPA.agent_company_id == Company.id,
            TPA.client_id == bindparam("client_id"),
            TPA.revoked_at.is_(None),
            TPA.expires_at > bindparam("now"),
        )
        .exists()
    )
    return (
        select(Company, Membership.roles, may_be_agent, Consent)
        .join(Membership, Membership.company_id == Company.id)
        # The person's consent to the client for each company (one at most, unique).
        .outerjoin(
            Consent,
            (Consent.person_id == Membership.person_id)
            & (Consent.company_id == Company.id)
            & (Consent.client_id == bindparam("client_id")),
        )
        .where(Membership.person_id == bindparam("person_id"), Membership.status == "active")
        .order_by(Company.name_en)
    )


@dataclass
class Reach:
    """What a person may do at a client, read in one query: ``options``, the companies they
    may act for (``active_companies``); ``may_be_agent``, whether a live third-party
    authorisation names one of their companies as agent there; ``consents``, their consent
    to the client (live or not; None: never given) by id of each company they are an active
    member of."""

    options: list[tuple[Company, list[str]]]
    may_be_agent: bool
    consents: dict[int, Consent | None]


def companies_of(person: Person, client: Client) -> Reach:
    """The person's ``Reach`` at ``client``."""
    rows = db.session.execute(
        _companies_statement(), {"person_id": person.id, "client_id": client.id, "now": utcnow()}
    ).all()
    options = [(company, list(roles)) for company, roles, _, _ in rows if company.is_active]
    if client.members_authorised_only and options:
        authorised = delegation.authorised_company_ids(person, client)
        options = [o for o in options if o[0].id in authorised]
    return Reach(
        options,
        any(agent for _, _, agent, _ in rows),
        {company.id: given for company, _, _, given in rows},
    )


def active_companies(person: Person, client: Client) -> list[tuple[Company, list[str]]]:
    """Companies ``person`` may act for at ``client``: active membership, company live, and
    for an "authorised members only" client a live e-service authorisation for it."""
    return companies_of(person, client).options


def _client_of(pending: Pending) -> Client | None:
    """The pending request's client, from the worker's client cache when it can."""
    cached = _server().query_client(pending.params.get("client_id"))
    if cached is not None and cached.id == pending.client_id:
        return cached
    return db.session.get(Client, pending.client_id)


def resume(handle: str, session: LoginSession | None, *, pending: Pending | None = None) -> Outcome:
    """Take the pending authorization as far as it can go for this browser session
    (``pending``: its record, when the caller has just read or written it)."""
    from authlib.oauth2.rfc6749 import AccessDeniedError
    from authlib.oidc.core.errors import (
        AccountSelectionRequiredError,
        ConsentRequiredError,
        LoginRequiredError,
    )

    if pending is None:
        pending = find_pending(handle)
    prompts = _prompts(pending)
    client = _client_of(pending)
    if client is None or not client.is_active:
        raise AuthorizationPageError(
            "unauthorized_client", "This service is no longer registered with Corp ID."
        )
    if needs_login(pending, session):
        if "none" in prompts:
            return _fail(LoginRequiredError, "The person is not signed in.", pending)
        return NeedLogin(handle, pending.params.get("login_hint"), pending.params.get("ui_locales"))
    assert session is not None
    person = db.session.get(Person, session.person_id)
    assert person is not None
    reach = companies_of(person, client)
    options = reach.options
    agents = delegation.agent_options(person, client) if reach.may_be_agent else []
    if not options and not agents:
        if client.members_authorised_only:
            return _fail(
                AccessDeniedError,
                "The person is not authorised to use this service for any company.",
                pending,
            )
        return _fail(AccessDeniedError, "The person does not act for any company.", pending)
    chosen: tuple[Company, list[str]] | None = None
    agent: Company | None = None
    if pending.company_id is not None and pending.agent_company_id is not None:
        found = next(
            (
                a
                for a in agents
                if a.principal.id == pending.company_id and a.agent.id == pending.agent_company_id
            ),
            None,
        )
        if found is not None:
            chosen, agent = (found.principal, []), found.agent
    elif pending.company_id is not None:
        chosen = next((o for o in options if o[0].id == pending.company_id), None)
    elif len(options) == 1 and not agents and "select_account" not in prompts:
        chosen = options[0]
    if chosen is None:
        if "none" in prompts:
            return _fail(
                AccountSelectionRequiredError, "The person must choose a company.", pending
            )
        return NeedCompany(handle, client, options, pending.params.get("ui_locales"), agents)
    company, roles = chosen
    scope = client.get_allowed_scope(pending.params.get("scope"))
    claims_request = parse_claims_request(pending.params.get("claims"))
    extra = claims_param_scopes(claims_request, list(client.scopes)) - set(scope.split())
    scope = " ".join([*scope.split(), *sorted(extra)])
    details = parse_authorization_details(
        pending.params.get("authorization_details"), client.scopes
    )
    if company.id in reach.consents:  # read with the companies; only a live one counts
        stored = reach.consents[company.id]
        given = stored if stored is not None and consent.status(stored) == consent.LIVE else None
    else:  # a principal company the person acts for as an agent
        given = consent.live_consent(person, company, client)
    ask = None
    if pending.consented_at is None:
        ask = consent.what_to_ask(
            person,
            company,
            client,
            scope=scope,
            authorization_details=details,
            purpose=check_purpose_param(pending.params.get("purpose")),
            force="consent" in prompts,
            given=given,
        )
    if ask is not None:
        if "none" in prompts:
            return _fail(ConsentRequiredError, "The person has not consented.", pending)
        return NeedConsent(
            handle,
            client,
            company,
            ask.scopes,
            pending.params.get("ui_locales"),
            categories=ask.categories,
            purposes=ask.purposes,
            expires_at=ask.expires_at,
        )
    return _issue_code(pending, session, client, person, company, roles, agent, details, given)


def choose_company(
    handle: str,
    session: LoginSession | None,
    company_id: int,
    agent_company_id: int | None = None,
) -> Outcome:
    """Record the company the person acts for (only one they may act for), directly or as a
    member of ``agent_company_id`` under a third-party authorisation, then resume."""
    pending = find_pending(handle)
    client = _client_of(pending)
    if session is None or client is None:
        return resume(handle, session, pending=pending)
    person = db.session.get(Person, session.person_id)
    if person is None:
        return resume(handle, None, pending=pending)
    if agent_company_id is None:
        allowed = company_id in {c.id for c, _ in active_companies(person, client)}
    else:
        allowed = any(
            a.principal.id == company_id and a.agent.id == agent_company_id
            for a in delegation.agent_options(person, client)
        )
    if not allowed:
        raise AuthorizationPageError("access_denied", "You cannot act for that company.", 403)
    pending.company_id = company_id
    pending.agent_company_id = agent_company_id
    save(pending)
    db.session.commit()
    return resume(handle, session, pending=pending)


def decide_consent(
    handle: str, session: LoginSession | None, *, allow: bool, origin: Any = None
) -> Outcome:
    """Allow records the consent for what the pending request asks; Deny returns
    ``access_denied`` to the client."""
    from authlib.oauth2.rfc6749 import AccessDeniedError

    pending = find_pending(handle)  # read once: both walks below use it
    outcome = resume(handle, session, pending=pending)
    if not isinstance(outcome, NeedConsent):
        return outcome
    if not allow:
        return _fail(AccessDeniedError, "The person declined.", pending)
    assert session is not None
    person = db.session.get(Person, session.person_id)
    assert person is not None
    consent.grant_consent(
        person=person,
        company=outcome.company,
        client=outcome.client,
        scopes=outcome.scopes,
        authorization_details=parse_authorization_details(
            pending.params.get("authorization_details"), outcome.client.scopes
        ),
        purpose=check_purpose_param(pending.params.get("purpose")),
        origin=origin,
    )
    pending.consented_at = utcnow()
    save(pending)
    db.session.commit()
    return resume(handle, session, pending=pending)


def _issue_code(
    pending: Pending,
    session: LoginSession,
    client: Client,
    person: Person,
    company: Company,
    roles: list[str],
    agent: Company | None,
    authorization_details: list[dict[str, Any]] | None,
    given: Consent | None,
) -> ClientRedirect:
    server = _server()
    request = StoredOAuth2Request(pending.params, _request_uri())
    # Read by grants.save_authorization_code: the consent relied on, the details granted and
    # the session signed in with.
    request.consent_id = given.id if given is not None else None
    request.authorization_details = authorization_details
    request.login_session_id = session.id
    try:
        grant = server.get_authorization_grant(request)
        redirect_uri = grant.validate_authorization_request()
    except OAuth2Error as error:
        complete(pending)
        db.session.commit()
        return _error_redirect(error, pending.params, error.redirect_uri)
    principal = Principal(
        person=person,
        company=company,
        roles=roles,
        agent=agent,
        sid=session.sid,
        auth_time=int(session.auth_time.timestamp()),
        acr=session.acr,
        amr=list(session.amr),
        claims_request=parse_claims_request(pending.params.get("claims")),
    )
    complete(pending)  # Redis's copy now; the database's commits with the code
    mode = pending.params.get("response_mode") or "query"  # read before the code's commit
    _, params, _ = grant.create_authorization_response(redirect_uri, principal)
    return ClientRedirect(redirect_uri, list(params), mode)
