"""Rich Authorization Requests (RFC 9396) for company data, and the ``purpose`` parameter
(OpenID Connect for Identity Assurance 1.0 §8).

Only the ``corp_data`` type is supported (``idp.data.categories``)::

    [{"type": "corp_data", "categories": ["corp_profile"], "purpose": "...", "duration": 86400}]

``parse_authorization_details`` returns the validated, normalised list (members in a fixed
order, ``duration`` filled in), which is what codes, grants, consents and tokens carry.
"""

from __future__ import annotations

import json
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from flask import current_app

from idp.data.categories import CATEGORIES, RAR_TYPE

PURPOSE_MIN, PURPOSE_MAX = 3, 300
MAX_DETAILS = 10
DETAIL_MEMBERS = frozenset({"type", "categories", "purpose", "duration"})


class InvalidAuthorizationDetailsError(OAuth2Error):
    """RFC 9396 §5: the authorization details are malformed or not allowed for this client."""

    error = "invalid_authorization_details"


def _fail(description: str) -> InvalidAuthorizationDetailsError:
    return InvalidAuthorizationDetailsError(description)


def _cfg(name: str) -> int:
    return int(current_app.config["IDP"][name])


def valid_purpose(value: object) -> bool:
    """A purpose is a string of 3..300 characters, without control characters."""
    return (
        isinstance(value, str)
        and PURPOSE_MIN <= len(value.strip()) <= PURPOSE_MAX
        and len(value) <= PURPOSE_MAX
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    )


def check_purpose_param(raw: object) -> str | None:
    """The ``purpose`` request parameter, checked. Raises ``InvalidRequestError``."""
    if raw is None:
        return None
    if not valid_purpose(raw):
        raise InvalidRequestError(
            f"'purpose' must be {PURPOSE_MIN} to {PURPOSE_MAX} characters of plain text."
        )
    return str(raw).strip()


def _detail(entry: object, registered: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise _fail("Each authorization_details entry must be a JSON object.")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise _fail("Each authorization_details entry needs a string 'type'.")
    if kind != RAR_TYPE:
        raise _fail(f"Unsupported authorization_details type; only '{RAR_TYPE}' is supported.")
    unknown = sorted(set(entry) - DETAIL_MEMBERS)
    if unknown:
        raise _fail(f"Unknown member in a '{RAR_TYPE}' entry: {unknown[0]}.")
    categories = entry.get("categories")
    if not isinstance(categories, list) or not categories:
        raise _fail("'categories' must be a non-empty list.")
    if not all(isinstance(c, str) for c in categories):
        raise _fail("'categories' must list strings.")
    for category in categories:
        if category not in CATEGORIES:
            raise _fail(f"Unknown data category: {category[:40]}.")
        if category not in registered:
            raise _fail(f"The client is not registered for the category {category}.")
    purpose = entry.get("purpose")
    if not valid_purpose(purpose):
        raise _fail(f"'purpose' must be a string of {PURPOSE_MIN} to {PURPOSE_MAX} characters.")
    duration = entry.get("duration", _cfg("CONSENT_TTL"))
    if isinstance(duration, bool) or not isinstance(duration, int):
        raise _fail("'duration' must be an integer number of seconds.")
    if not 1 <= duration <= _cfg("CONSENT_MAX_TTL"):
        raise _fail(f"'duration' must be between 1 and {_cfg('CONSENT_MAX_TTL')} seconds.")
    return {
        "type": RAR_TYPE,
        "categories": list(dict.fromkeys(categories)),
        "purpose": str(purpose).strip(),
        "duration": duration,
    }


def parse_authorization_details(raw: object, client_scopes: Any) -> list[dict[str, Any]] | None:
    """The validated ``authorization_details`` of a request, or None when absent.

    Raises ``InvalidAuthorizationDetailsError`` for malformed JSON, a non-array, an unknown
    type or member, wrong member types, a category the client is not registered for, a
    purpose outside 3..300 characters or a duration outside 1..``IDP_CONSENT_MAX_TTL``."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _fail("'authorization_details' must be a JSON array.")
    try:
        value = json.loads(raw)
    except ValueError:
        raise _fail("'authorization_details' is not valid JSON.") from None
    if not isinstance(value, list) or not value:
        raise _fail("'authorization_details' must be a non-empty JSON array.")
    if len(value) > MAX_DETAILS:
        raise _fail(f"At most {MAX_DETAILS} authorization_details entries are accepted.")
    registered = set(client_scopes or ())
    return [_detail(entry, registered) for entry in value]


def details_purposes(details: list[dict[str, Any]] | None) -> list[str]:
    """The purposes stated in (validated) authorization details, in order, once each."""
    return list(dict.fromkeys(str(d["purpose"]) for d in details or () if d.get("purpose")))


def details_duration(details: list[dict[str, Any]] | None) -> int | None:
    """The shortest duration the (validated) authorization details ask for, if any."""
    durations = [int(d["duration"]) for d in details or () if "duration" in d]
    return min(durations) if durations else None
