"""The company data API for pre-filled forms: ``GET /api/company-data``.

Protected by the access token (RFC 6750 Bearer for now). Answers the company's BR number and
exactly the consented categories of the token's grant, each with its values, provenance and
``verified_claims`` form::

    {"br_number": "12345678",
     "categories": {"corp_profile": {"values": {...},
                                     "provenance": {"source": "...", "as_of": "2025-06-30"},
                                     "verified_claims": {"verification": {...},
                                                         "claims": {"corp_profile": {...}}}}}}
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from idp.audit.services import Origin
from idp.data import services
from idp.data.categories import CATEGORIES
from idp.errors import API_HEADERS, api_view, json_error
from idp.oauth import tokens
from idp.web import csrf

bp = Blueprint("data", __name__)

REALM = 'Bearer realm="corp-id"'


def access_token_claims() -> dict[str, Any]:
    """The claims of the request's active access token, or ``InactiveTokenError``.

    The one place this API checks its token (Bearer through ``tokens.check_access_token``);
    a sender-constrained (DPoP) check replaces it here."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _NoToken()
    claims = tokens.check_access_token(token.strip())
    if claims is None:
        raise services.InactiveTokenError()
    return claims


class _NoToken(services.InactiveTokenError):
    """Send the access token as a Bearer Authorization header."""

    code = "invalid_request"


@bp.route("/api/company-data", methods=["GET"])
@csrf.exempt
@api_view
def company_data() -> Response:
    try:
        claims = access_token_claims()
        body = services.company_data(
            claims, origin=Origin(request.remote_addr, request.headers.get("User-Agent"))
        )
    except _NoToken as exc:
        # RFC 6750 §3.1: no error code in the challenge when no token was sent.
        return json_error(401, exc.code, exc.message, {"WWW-Authenticate": REALM})
    except services.InactiveTokenError as exc:
        challenge = f'{REALM}, error="invalid_token", error_description="{exc.message}"'
        return json_error(401, exc.code, exc.message, {"WWW-Authenticate": challenge})
    except services.InsufficientScopeError as exc:
        challenge = f'{REALM}, error="insufficient_scope", scope="{" ".join(CATEGORIES)}"'
        return json_error(403, exc.code, exc.message, {"WWW-Authenticate": challenge})
    response = Response(json.dumps(body), mimetype="application/json")
    response.headers.update(API_HEADERS)
    return response
