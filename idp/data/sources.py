"""Where company data comes from: one small interface, and the imported register behind it.

A data source (``DataSource``) names itself, says which categories it provides and fetches
them for a company as ``Release`` objects: the values plus their provenance (the source
system's name, the date the data describes, the trust framework and record type that OpenID
Connect for Identity Assurance 1.0 ``verified_claims`` need).

The shapes of the values, per category (absent members: the register does not hold them):

``corp_profile``   ``{"br_number", "name_en", "name_zh", "company_type", "status",
                   "incorporated_on" (YYYY-MM-DD)}``
``corp_address``   ``{"formatted": <the registered address, lines separated by "\\n">}``
``corp_officers``  ``{"officers": [{"role": "director"|"secretary", "name_en", "name_zh",
                   "appointed_on" (YYYY-MM-DD)}]}`` (an empty list: the register lists none)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from idp.data.categories import CORP_ADDRESS, CORP_OFFICERS, CORP_PROFILE
from idp.orgs.models import Company, CompanyOfficer

# IDA evidence: company data is an electronic record held by a register.
EVIDENCE_TYPE = "electronic_record"
# The electronic record type of the company register (IDA predefined values name no company
# register, so we name ours).
REGISTER_RECORD_TYPE = "company_register"
# Source name when an imported row does not say where it came from.
DEFAULT_REGISTER_SOURCE = "Companies Register"


def _iso_time(value: dt.datetime | dt.date) -> str:
    """ISO 8601 with a time zone (IDA ``time``); dates are read as midnight UTC."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Release:
    """One category's values for one company, with where they came from.

    ``source``: the source system's name; ``as_of``: the date the data describes;
    ``verified_at``: when Corp ID took the data from the source (IDA ``verification.time``)."""

    category: str
    values: dict[str, Any]
    source: str
    as_of: dt.date
    trust_framework: str
    verified_at: dt.datetime
    record_type: str = REGISTER_RECORD_TYPE
    evidence_type: str = EVIDENCE_TYPE

    @property
    def provenance(self) -> dict[str, str]:
        """``{"source": .., "as_of": "YYYY-MM-DD"}``."""
        return {"source": self.source, "as_of": self.as_of.isoformat()}

    def verification(self) -> dict[str, Any]:
        """The IDA ``verification`` element: trust framework, time, and one piece of evidence
        (an electronic record of ``record_type`` from ``source``, as of ``as_of``)."""
        return {
            "trust_framework": self.trust_framework,
            "time": _iso_time(self.verified_at),
            "evidence": [
                {
                    "type": self.evidence_type,
                    "record": {"type": self.record_type, "source": {"name": self.source}},
                    "time": _iso_time(self.as_of),
                }
            ],
        }

    def verified_claims(self) -> dict[str, Any]:
        """This release alone as one IDA ``verified_claims`` object."""
        return {"verification": self.verification(), "claims": {self.category: self.values}}


def verified_claims(releases: Iterable[Release]) -> list[dict[str, Any]]:
    """IDA ``verified_claims`` for several releases: one object per distinct verification
    (releases sharing source, as-of, trust framework and time are grouped), in order."""
    grouped: dict[str, dict[str, Any]] = {}
    for item in releases:
        verification = item.verification()
        key = repr(sorted(verification.items()))
        entry = grouped.setdefault(key, {"verification": verification, "claims": {}})
        entry["claims"][item.category] = item.values
    return list(grouped.values())


class DataSource(Protocol):
    """A system that provides company data categories."""

    name: str
    categories: frozenset[str]

    def fetch(self, company: Company, categories: Iterable[str]) -> dict[str, Release]:
        """Releases of ``categories`` (a subset of ``self.categories``) for ``company``;
        a category the source holds nothing for is left out."""
        ...


def _date(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class RegisterSource:
    """The imported company register (``idp.orgs.register``): values from ``Company`` and
    ``CompanyOfficer``, provenance from the row's ``source`` and ``as_of``."""

    name = "register"
    categories = frozenset({CORP_PROFILE, CORP_ADDRESS, CORP_OFFICERS})

    def __init__(self, *, trust_framework: str) -> None:
        self.trust_framework = trust_framework

    def fetch(self, company: Company, categories: Iterable[str]) -> dict[str, Release]:
        imported_at = company.updated_at or company.created_at
        as_of = company.as_of or imported_at.date()
        wanted = set(categories) & self.categories
        releases: dict[str, Release] = {}
        for category in sorted(wanted):
            values = self._values(company, category)
            if values is None:
                continue
            releases[category] = Release(
                category=category,
                values=values,
                source=company.source or DEFAULT_REGISTER_SOURCE,
                as_of=as_of,
                trust_framework=self.trust_framework,
                verified_at=imported_at,
            )
        return releases

    @staticmethod
    def _values(company: Company, category: str) -> dict[str, Any] | None:
        if category == CORP_PROFILE:
            return _without_none(
                {
                    "br_number": company.br_number,
                    "name_en": company.name_en,
                    "name_zh": company.name_zh,
                    "company_type": company.company_type,
                    "status": company.status.value,
                    "incorporated_on": _date(company.incorporated_on),
                }
            )
        if category == CORP_ADDRESS:
            return {"formatted": company.address} if company.address else None
        if category == CORP_OFFICERS:
            return {"officers": [_officer(o) for o in company.officers]}
        return None


def _officer(officer: CompanyOfficer) -> dict[str, Any]:
    return _without_none(
        {
            "role": officer.role.value,
            "name_en": officer.name_en,
            "name_zh": officer.name_zh,
            "appointed_on": _date(officer.appointed_on),
        }
    )
