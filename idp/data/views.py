"""The company data API for pre-filled forms: ``GET /api/company-data``.

Protected by the access token (Bearer, or DPoP-bound with its proof: idp.oauth.resource).
Answers the company's BR number and exactly the consented categories of the token's grant,
each with its values, provenance and ``verified_claims`` form::

    {"br_number": "12345678",
     "categories": {"corp_profile": {"values": {...},
                                     "provenance": {"source": "...", "as_of": "2025-06-30"},
                                     "verified_claims": {"verification": {...},
                                                         "claims": {"corp_profile": {...}}}}}}
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, request

from idp.audit.services import Origin
from idp.data import services
from idp.data.categories import CATEGORIES
from idp.errors import API_HEADERS, api_view
from idp.oauth import resource
from idp.web import csrf

bp = Blueprint("data", __name__)

REALM = 'Bearer realm="corp-id"'


@bp.route("/api/company-data", methods=["GET"])
@csrf.exempt
@api_view
def company_data() -> Response:
    try:
        claims = resource.protected_claims(request)
    except resource.ResourceError as exc:
        return resource.error_response(exc)
    scheme = "DPoP" if "cnf" in claims else "Bearer"
    try:
        body = services.company_data(
            claims, origin=Origin(request.remote_addr, request.headers.get("User-Agent"))
        )
    except services.InactiveTokenError as exc:
        return resource.error_response(resource.refuse(scheme, 401, exc.code, exc.message))
    except services.InsufficientScopeError as exc:
        refused = resource.refuse(scheme, 403, exc.code, exc.message, scope=" ".join(CATEGORIES))
        return resource.error_response(refused)
    response = Response(json.dumps(body), mimetype="application/json")
    response.headers.update(API_HEADERS)
    return response
