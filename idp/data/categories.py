"""The company data categories a relying party may ask for (issue 5).

Each category is a scope (``corp_profile``...) and may also be asked for with Rich
Authorization Requests (RFC 9396): an ``authorization_details`` entry of type ``corp_data``::

    {"type": "corp_data",
     "categories": ["corp_profile", "corp_officers"],
     "purpose": "Customer due diligence for a business account",
     "duration": 31536000}

``duration`` is the consent's lifetime in seconds (capped by ``IDP_CONSENT_MAX_TTL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CORP_PROFILE = "corp_profile"  # BR number, names, type, status, incorporation date
CORP_ADDRESS = "corp_address"  # registered address
CORP_OFFICERS = "corp_officers"  # directors and secretary
CATEGORIES: tuple[str, ...] = (CORP_PROFILE, CORP_ADDRESS, CORP_OFFICERS)

# RFC 9396 authorization details type for company data.
RAR_TYPE = "corp_data"


def categories_of(scope: str | None, authorization_details: Iterable[Any] | None) -> set[str]:
    """The data categories a grant covers: category scopes plus the categories of its
    ``corp_data`` authorization details (already validated)."""
    found = {s for s in (scope or "").split() if s in CATEGORIES}
    for detail in authorization_details or ():
        if isinstance(detail, dict) and detail.get("type") == RAR_TYPE:
            found |= {c for c in detail.get("categories") or () if c in CATEGORIES}
    return found
