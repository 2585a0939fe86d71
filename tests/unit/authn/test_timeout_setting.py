"""``IDP_WEBAUTHN_TIMEOUT_MS``: how long the browser waits for the security key."""

from __future__ import annotations

import pytest

from idp.config import load_config


def test_default_is_two_minutes() -> None:
    assert load_config(environ={})["WEBAUTHN_TIMEOUT_MS"] == 120_000


def test_read_from_the_environment() -> None:
    assert (
        load_config(environ={"IDP_WEBAUTHN_TIMEOUT_MS": "30000"})["WEBAUTHN_TIMEOUT_MS"] == 30_000
    )


@pytest.mark.parametrize(
    "environ",
    [
        {"IDP_WEBAUTHN_TIMEOUT_MS": "999"},
        {"IDP_WEBAUTHN_TIMEOUT_MS": "0"},
        {"IDP_WEBAUTHN_TIMEOUT_MS": "-1"},
        # Longer than the challenge lives: the key would answer a challenge already expired.
        {"IDP_WEBAUTHN_TIMEOUT_MS": "300001"},
        {"IDP_WEBAUTHN_TIMEOUT_MS": "60000", "IDP_WEBAUTHN_CHALLENGE_TTL": "30"},
    ],
)
def test_refused_outside_its_range(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="IDP_WEBAUTHN_TIMEOUT_MS"):
        load_config(environ=environ)


def test_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="integer"):
        load_config(environ={"IDP_WEBAUTHN_TIMEOUT_MS": "soon"})
