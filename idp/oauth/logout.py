"""OpenID Connect RP-Initiated Logout 1.0: the ``end_session_endpoint``.

A relying party sends the person's browser here with ``id_token_hint``, ``client_id``,
``post_logout_redirect_uri``, ``state``, ``logout_hint`` and ``ui_locales`` (§2). The request is
checked first (§4): any error shows a page and never redirects. The browser's session ends at
once when a valid ID token hint names it; otherwise the person is asked to confirm. After the
logout the browser returns to the ``post_logout_redirect_uri`` (with ``state``) only when it
exactly matches one the client registered and the client was identified by the hint or by
``client_id`` (§3); else a "signed out" page is shown. Ending the session (and so the
back-channel notices, ``idp.oauth.backchannel``) is ``idp.authn.services.end_session``'s job.

Services here take plain values; the view keeps the checked request in the signed Flask
session between the request and the confirmation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from flask import current_app

from idp.audit.services import Origin, record
from idp.authn.models import LoginSession
from idp.authn.services import end_session
from idp.clients.models import Client
from idp.clients.services import query_client
from idp.extensions import db
from idp.keys import jws
from idp.oauth.claims import subject_for
from idp.orgs.models import Person

PARAMETERS = (
    "id_token_hint",
    "client_id",
    "post_logout_redirect_uri",
    "state",
    "logout_hint",
    "ui_locales",
)
MAX_PARAM_LENGTH = 2048
# What PyJWT puts in our ID tokens' header; access tokens are at+jwt, logout tokens logout+jwt.
ID_TOKEN_TYP = "jwt"  # noqa: S105 - a media type


class LogoutError(Exception):
    """The logout request is not valid: shown to the person, never redirected (§4)."""

    def __init__(self, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.description = description
        self.status = status


@dataclass(frozen=True)
class LogoutRequest:
    """A checked logout request; plain values, so the view can keep it in the signed session
    while the person confirms."""

    client_id: str | None = None
    # Set only when it exactly matches one of that client's registered URIs.
    redirect_uri: str | None = None
    state: str | None = None
    ui_locales: str | None = None
    logout_hint: str | None = None
    # From a verified id_token_hint.
    hint_sub: str | None = None
    hint_sid: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object) -> LogoutRequest:
        if not isinstance(value, dict):
            return cls()
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        return cls(**{k: v if isinstance(v, str) else None for k, v in known.items()})


@dataclass(frozen=True)
class Confirm:
    """Ask the person before ending their session."""

    request: LogoutRequest
    client: Client | None


@dataclass(frozen=True)
class LoggedOut:
    """Done (or there was no session): go to ``redirect_to`` if set, else show a page."""

    redirect_to: str | None
    ended: bool


# --- checking the request ---------------------------------------------------------------------


def parse_request(values: dict[str, list[str]]) -> LogoutRequest:
    """Check the parameters (§2, §4) and return the request. Raises ``LogoutError``."""
    params: dict[str, str] = {}
    for name in PARAMETERS:
        given = values.get(name) or []
        if len(given) > 1:
            raise LogoutError(f"The '{name}' parameter must not be repeated.")
        if not given or given[0] == "":
            continue
        value = given[0]
        limit = int(_cfg("MAX_JWT_LENGTH")) if name == "id_token_hint" else MAX_PARAM_LENGTH
        if len(value) > limit:
            raise LogoutError(f"The '{name}' parameter is too long.")
        if "\x00" in value:
            raise LogoutError(f"The '{name}' parameter contains a NUL character.")
        params[name] = value

    client, hint = _identify_client(params.get("id_token_hint"), params.get("client_id"))
    redirect_uri = params.get("post_logout_redirect_uri")
    if redirect_uri is not None:
        if client is None:
            raise LogoutError(
                "The site that sent you here did not say who it is (id_token_hint or "
                "client_id), so Corp ID cannot send you back to it."
            )
        if redirect_uri not in client.post_logout_redirect_uris:
            raise LogoutError(
                "The address to return to after signing out is not registered for this site."
            )
    return LogoutRequest(
        client_id=client.client_id if client is not None else None,
        redirect_uri=redirect_uri,
        state=params.get("state") if redirect_uri is not None else None,
        ui_locales=params.get("ui_locales"),
        logout_hint=params.get("logout_hint"),
        hint_sub=_str_claim(hint, "sub"),
        hint_sid=_str_claim(hint, "sid"),
    )


def _identify_client(
    id_token_hint: str | None, client_id: str | None
) -> tuple[Client | None, dict[str, Any] | None]:
    """The client named by the hint's ``aud`` and/or ``client_id``, and the hint's claims.

    The hint must be an ID token we signed (typ JWT, so not an access token); its expiry is
    not checked, since relying parties log out with old ID tokens (§2). When both are given
    they must agree (§2)."""
    claims: dict[str, Any] | None = None
    audiences: list[Any] = []
    if id_token_hint is not None:
        try:
            claims = jws.verify(
                id_token_hint,
                issuer=_cfg("ISSUER"),
                typ=ID_TOKEN_TYP,
                verify_exp=False,
                max_length=int(_cfg("MAX_JWT_LENGTH")),
            )
        except jws.InvalidJWT:
            raise LogoutError("The 'id_token_hint' is not an ID token Corp ID issued.") from None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if not audiences or not all(isinstance(a, str) for a in audiences):
            raise LogoutError("The 'id_token_hint' is not an ID token Corp ID issued.")
        if not isinstance(claims.get("sub"), str):
            raise LogoutError("The 'id_token_hint' is not an ID token Corp ID issued.")
    if client_id is not None:
        if claims is not None and client_id not in audiences:
            raise LogoutError("The 'id_token_hint' was issued to another site than 'client_id'.")
        named = client_id
    elif claims is not None:
        azp = claims.get("azp")
        if len(audiences) == 1:
            named = audiences[0]
        elif isinstance(azp, str) and azp in audiences:
            named = azp
        else:
            raise LogoutError("The 'id_token_hint' does not name one site; send 'client_id'.")
    else:
        return None, None
    client = query_client(named)
    if client is None or not client.is_active:
        raise LogoutError("The site that sent you here is not registered with Corp ID.")
    return client, claims


def _str_claim(claims: dict[str, Any] | None, name: str) -> str | None:
    value = (claims or {}).get(name)
    return value if isinstance(value, str) else None


def recheck(request: LogoutRequest) -> LogoutRequest:
    """A request kept while the person confirmed, checked again against the client as it is
    now (it may have been disabled, or the URI unregistered, meanwhile)."""
    if request.client_id is None or request.redirect_uri is None:
        return request
    client = query_client(request.client_id)
    if (
        client is None
        or not client.is_active
        or request.redirect_uri not in client.post_logout_redirect_uris
    ):
        return LogoutRequest(ui_locales=request.ui_locales)
    return request


# --- deciding and acting ----------------------------------------------------------------------


def decide(
    request: LogoutRequest, session: LoginSession | None, *, origin: Origin | None = None
) -> Confirm | LoggedOut:
    """End the browser's ``session`` at once when the hint names it, else ask first.

    No session: nothing to end, so nothing to confirm (logout is idempotent)."""
    if session is not None and not hint_names_session(request, session):
        client = query_client(request.client_id) if request.client_id else None
        return Confirm(request, client)
    return log_out(request, session, confirmed=False, origin=origin)


def hint_names_session(request: LogoutRequest, session: LoginSession) -> bool:
    """Whether the verified ID token hint is for this very session and person (and the
    ``logout_hint``, if any, names that person too)."""
    if request.client_id is None or request.hint_sid is None or request.hint_sid != session.sid:
        return False
    client = query_client(request.client_id)
    person = db.session.get(Person, session.person_id)
    if client is None or person is None or request.hint_sub != subject_for(client, person):
        return False
    if request.logout_hint is not None:
        named = {subject_for(client, person), session.sid}
        if person.email:
            named.add(person.email.casefold())
        if request.logout_hint.casefold() not in {n.casefold() for n in named}:
            return False
    return True


def log_out(
    request: LogoutRequest,
    session: LoginSession | None,
    *,
    confirmed: bool,
    origin: Origin | None = None,
) -> LoggedOut:
    """End ``session`` (if any; committed) and say where the browser goes next."""
    ended = False
    if session is not None:
        person = db.session.get(Person, session.person_id)
        actor = f"person:{person.subject}" if person is not None else "system"
        record(
            "oauth:logout:rp_initiated",
            actor=actor,
            subject=f"sid:{session.sid}",
            origin=origin,
            details={"client_id": request.client_id, "confirmed": confirmed},
        )
        end_session(session, reason="logout", actor=actor, origin=origin)
        ended = True
    return LoggedOut(redirect_target(request), ended)


def redirect_target(request: LogoutRequest) -> str | None:
    """The registered ``post_logout_redirect_uri`` with ``state`` added (§3), or None."""
    if request.redirect_uri is None:
        return None
    if request.state is None:
        return request.redirect_uri
    parts = urlsplit(request.redirect_uri)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("state", request.state)])
    return urlunsplit(parts._replace(query=query))


def _cfg(name: str) -> Any:
    return current_app.config["IDP"][name]
