"""Company data sources: the register source, release() and the verified_claims shape."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pytest
from flask import Flask

from idp.data import services
from idp.data.categories import CATEGORIES, CORP_ADDRESS, CORP_OFFICERS, CORP_PROFILE
from idp.data.sources import DEFAULT_REGISTER_SOURCE, RegisterSource, Release, verified_claims
from idp.extensions import db
from idp.orgs.models import Company, CompanyOfficer, CompanyStatus, OfficerRole

AS_OF = dt.date(2025, 6, 30)
IMPORTED = dt.datetime(2025, 7, 1, 3, 4, 5, tzinfo=dt.UTC)


def company(*, officers: bool = True, **overrides: object) -> Company:
    values: dict[str, object] = {
        "br_number": "12345678",
        "name_en": "Demo Trading Limited",
        "name_zh": "示範貿易有限公司",
        "status": CompanyStatus.LIVE,
        "address": "Unit 1A, 10 Fictional Street\nCentral, Hong Kong",
        "incorporated_on": dt.date(1975, 1, 1),
        "company_type": "Private company limited by shares",
        "source": "Companies Registry extract",
        "as_of": AS_OF,
        "created_at": IMPORTED,
    }
    values.update(overrides)
    row = Company(**values)
    if officers:
        row.officers = [
            CompanyOfficer(
                role=OfficerRole.DIRECTOR,
                name_en="Cheung Chi Keung",
                name_zh="張志強",
                appointed_on=dt.date(1975, 1, 1),
            ),
            CompanyOfficer(role=OfficerRole.SECRETARY, name_en="Wong Kin Wah"),
        ]
    db.session.add(row)
    db.session.commit()
    return row


pytestmark = pytest.mark.usefixtures("app_ctx")


def test_register_source_values_and_provenance() -> None:
    releases = services.release(company(), CATEGORIES)
    assert list(releases) == list(CATEGORIES)
    assert releases[CORP_PROFILE].values == {
        "br_number": "12345678",
        "name_en": "Demo Trading Limited",
        "name_zh": "示範貿易有限公司",
        "company_type": "Private company limited by shares",
        "status": "live",
        "incorporated_on": "1975-01-01",
    }
    assert releases[CORP_ADDRESS].values == {
        "formatted": "Unit 1A, 10 Fictional Street\nCentral, Hong Kong"
    }
    assert releases[CORP_OFFICERS].values == {
        "officers": [
            {
                "role": "director",
                "name_en": "Cheung Chi Keung",
                "name_zh": "張志強",
                "appointed_on": "1975-01-01",
            },
            {"role": "secretary", "name_en": "Wong Kin Wah"},
        ]
    }
    for item in releases.values():
        assert item.provenance == {"source": "Companies Registry extract", "as_of": "2025-06-30"}


def test_release_returns_only_the_categories_asked() -> None:
    releases = services.release(company(), {CORP_ADDRESS})
    assert set(releases) == {CORP_ADDRESS}
    assert services.release(company(br_number="10000018"), set()) == {}


def test_unknown_category_is_refused() -> None:
    with pytest.raises(services.UnknownCategoryError):
        services.release(company(), {CORP_PROFILE, "corp_secrets"})


def test_company_with_no_officers_releases_an_empty_list() -> None:
    releases = services.release(company(officers=False), {CORP_OFFICERS})
    assert releases[CORP_OFFICERS].values == {"officers": []}


def test_company_with_no_address_releases_no_address() -> None:
    assert services.release(company(address=None), {CORP_ADDRESS}) == {}


def test_row_without_provenance_falls_back_to_register_and_import_date() -> None:
    releases = services.release(company(source=None, as_of=None), {CORP_PROFILE})
    assert releases[CORP_PROFILE].provenance == {
        "source": DEFAULT_REGISTER_SOURCE,
        "as_of": "2025-07-01",
    }
    profile = releases[CORP_PROFILE].values
    assert "name_zh" in profile
    bare = company(br_number="10000026", name_zh=None, company_type=None, incorporated_on=None)
    assert set(services.release(bare, {CORP_PROFILE})[CORP_PROFILE].values) == {
        "br_number",
        "name_en",
        "status",
    }


def test_verified_claims_shape() -> None:
    item = services.release(company(), {CORP_PROFILE})[CORP_PROFILE]
    assert item.verified_claims() == {
        "verification": {
            "trust_framework": "corp_id_register",
            "time": "2025-07-01T03:04:05Z",
            "evidence": [
                {
                    "type": "electronic_record",
                    "record": {
                        "type": "company_register",
                        "source": {"name": "Companies Registry extract"},
                    },
                    "time": "2025-06-30T00:00:00Z",
                }
            ],
        },
        "claims": {CORP_PROFILE: item.values},
    }


def test_verified_claims_group_by_verification() -> None:
    releases = services.release(company(), CATEGORIES)
    other = Release(
        category="corp_extra",
        values={"x": 1},
        source="Another registry",
        as_of=AS_OF,
        trust_framework="corp_id_register",
        verified_at=IMPORTED,
    )
    grouped = verified_claims([*releases.values(), other])
    assert len(grouped) == 2
    assert set(grouped[0]["claims"]) == set(CATEGORIES)
    assert grouped[1]["claims"] == {"corp_extra": {"x": 1}}
    assert grouped[1]["verification"]["evidence"][0]["record"]["source"] == {
        "name": "Another registry"
    }


class AddressBook:
    """A second source that provides only addresses."""

    name = "address_book"
    categories = frozenset({CORP_ADDRESS})

    def fetch(self, company: Company, categories: Iterable[str]) -> dict[str, Release]:
        return {
            CORP_ADDRESS: Release(
                category=CORP_ADDRESS,
                values={"formatted": "Elsewhere"},
                source="Address book",
                as_of=AS_OF,
                trust_framework="other",
                verified_at=IMPORTED,
            )
        }


def test_each_category_comes_from_the_first_source_that_provides_it(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(services.SOURCE_TYPES, "address_book", lambda cfg: AddressBook())
    app.extensions.pop("idp.data.sources", None)
    monkeypatch.setitem(app.config["IDP"], "DATA_SOURCES", "address_book, register")
    try:
        releases = services.release(company(), CATEGORIES)
    finally:
        app.extensions.pop("idp.data.sources", None)
    assert releases[CORP_ADDRESS].source == "Address book"
    assert releases[CORP_PROFILE].source == "Companies Registry extract"


def test_unknown_source_setting_is_refused(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    app.extensions.pop("idp.data.sources", None)
    monkeypatch.setitem(app.config["IDP"], "DATA_SOURCES", "register,nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        services.sources()
    app.extensions.pop("idp.data.sources", None)


def test_register_source_ignores_categories_it_does_not_provide() -> None:
    source = RegisterSource(trust_framework="t")
    assert source.fetch(company(), {"corp_extra"}) == {}
