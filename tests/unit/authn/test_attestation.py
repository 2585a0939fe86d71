"""The WebAuthn attestation policy (``IDP_WEBAUTHN_ATTESTATION``): modes, roots, MDS3 BLOB."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from idp.authn import attestation
from idp.authn.attestation import ZERO_AAGUID, AttestationRefused
from idp.config import load_config

AAGUID = "2fc0579f-8113-47ea-b116-bb5a8db9202a"


def config(**overrides: Any) -> dict[str, Any]:
    return load_config(overrides, environ={})


@pytest.mark.parametrize(
    ("setting", "demo", "mode"),
    [
        ("", True, "none"),
        ("", False, "trusted"),
        ("none", False, "none"),
        ("trusted", True, "trusted"),
    ],
)
def test_mode_resolution(setting: str, demo: bool, mode: str) -> None:
    cfg = config(WEBAUTHN_ATTESTATION=setting, DEMO=demo)
    assert attestation.resolve_mode(cfg) == mode


@pytest.mark.parametrize("value", ["any", "direct", "off", "trusted,none"])
def test_bad_mode_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="IDP_WEBAUTHN_ATTESTATION"):
        config(WEBAUTHN_ATTESTATION=value)


def test_none_mode_accepts_anything(make_app: Callable[..., Flask]) -> None:
    app = make_app(WEBAUTHN_ATTESTATION="none")
    with app.app_context():
        policy = attestation.current_policy()
        assert policy is attestation.current_policy()  # cached
        assert policy.roots_for(fmt="none", aaguid=ZERO_AAGUID) == []
        verdict = policy.enforce(
            fmt="none", aaguid=AAGUID.upper(), has_trust_path=False, backup_eligible=True
        )
        assert verdict == attestation.Verdict(aaguid=AAGUID, model_name=None)


def test_trusted_mode_without_roots_refuses(make_app: Callable[..., Flask]) -> None:
    app = make_app()  # not demo: trusted
    with app.app_context():
        policy = attestation.current_policy()
        with pytest.raises(AttestationRefused) as info:
            policy.roots_for(fmt="packed", aaguid=AAGUID)
        assert info.value.reason == "untrusted"
        assert info.value.text("zh-Hant-HK") != info.value.message
