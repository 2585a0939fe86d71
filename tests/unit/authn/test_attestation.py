"""The WebAuthn attestation policy (``IDP_WEBAUTHN_ATTESTATION``): modes, roots from
``keys/attestation-roots/`` and from a verified MDS3 BLOB, and every refusal."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from idp.authn import attestation
from idp.authn.attestation import ZERO_AAGUID, AttestationRefused, Policy
from idp.config import load_config
from tests.support import pki

AAGUID = pki.TEST_AAGUID
OTHER_AAGUID = "cb69481e-8ff7-4039-93ec-0a2729a154a8"
TODAY = dt.datetime.now(dt.UTC).date()


def config(**overrides: Any) -> dict[str, Any]:
    return load_config(overrides, environ={})


@pytest.fixture(scope="module")
def mds_root() -> pki.Issued:
    return pki.make_ca("Test MDS Root")


@pytest.fixture(scope="module")
def mds_signer(mds_root: pki.Issued) -> pki.Issued:
    return mds_root.intermediate("Test MDS Intermediate").leaf("mds.example")


@pytest.fixture(scope="module")
def vendor_root() -> pki.Issued:
    return pki.make_ca("Test Vendor Attestation Root")


@pytest.fixture
def keys_dir(tmp_path: Path, mds_root: pki.Issued) -> Path:
    folder = tmp_path / "keys"
    (folder / "attestation-roots").mkdir(parents=True)
    (folder / "mds-root.pem").write_bytes(mds_root.pem)
    return folder


PolicyFactory = Callable[..., Policy]


@pytest.fixture
def make_policy(keys_dir: Path) -> PolicyFactory:
    def factory(mode: str = "trusted", **settings: Any) -> Policy:
        return attestation.build_policy(
            config(KEYS_DIR=str(keys_dir), WEBAUTHN_ATTESTATION=mode, **settings)
        )

    return factory


def write_blob(keys_dir: Path, blob: bytes, name: str = "mds3.jwt") -> Path:
    path = keys_dir / name
    path.write_bytes(blob)
    return path


def good_blob(signer: pki.Issued, vendor: pki.Issued, **kwargs: Any) -> bytes:
    entries = [
        pki.entry(AAGUID, description="Test Key 5 NFC", roots=[vendor.der]),
        pki.entry(
            OTHER_AAGUID,
            description="Broken Key",
            roots=[vendor.der],
            statuses=[
                ("FIDO_CERTIFIED_L1", "2023-01-01"),
                ("ATTESTATION_KEY_COMPROMISE", "2024-05-01"),
            ],
        ),
    ]
    return pki.make_blob(entries, signer=signer, **kwargs)


def refusal(func: Callable[[], Any]) -> AttestationRefused:
    with pytest.raises(AttestationRefused) as info:
        func()
    return info.value


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "demo", "mode"),
    [
        ("", True, "none"),
        ("", False, "trusted"),
        ("none", False, "none"),
        ("trusted", True, "trusted"),
        ("TRUSTED", False, "trusted"),
    ],
)
def test_mode_resolution(setting: str, demo: bool, mode: str) -> None:
    assert attestation.resolve_mode(config(WEBAUTHN_ATTESTATION=setting, DEMO=demo)) == mode


@pytest.mark.parametrize("value", ["any", "direct", "off", "trusted,none"])
def test_bad_mode_refused_at_start(value: str) -> None:
    with pytest.raises(ValueError, match="IDP_WEBAUTHN_ATTESTATION"):
        config(WEBAUTHN_ATTESTATION=value)


def test_mode_read_from_the_environment() -> None:
    cfg = load_config(environ={"IDP_WEBAUTHN_ATTESTATION": "none"})
    assert attestation.resolve_mode(cfg) == "none"
    with pytest.raises(ValueError, match="IDP_WEBAUTHN_ATTESTATION"):
        load_config(environ={"IDP_WEBAUTHN_ATTESTATION": "yes"})


def test_allowlist_setting() -> None:
    cfg = config(WEBAUTHN_AAGUID_ALLOWLIST=f" {AAGUID.upper()} , {OTHER_AAGUID},")
    assert attestation.parse_allowlist(cfg["WEBAUTHN_AAGUID_ALLOWLIST"]) == {AAGUID, OTHER_AAGUID}
    assert attestation.parse_allowlist("") is None
    with pytest.raises(ValueError, match="IDP_WEBAUTHN_AAGUID_ALLOWLIST"):
        config(WEBAUTHN_AAGUID_ALLOWLIST=f"{AAGUID},yubikey")


def test_current_policy_is_built_once_per_app(make_app: Callable[..., Flask]) -> None:
    app = make_app(WEBAUTHN_ATTESTATION="none")
    with app.app_context():
        policy = attestation.current_policy()
        assert policy is attestation.current_policy()
        assert policy.mode == "none"
    with make_app().app_context():  # not demo, empty setting: trusted
        assert attestation.current_policy().mode == "trusted"


# --- mode none --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["none", "packed", "apple", "android-key", "fido-u2f", "tpm"])
def test_none_mode_accepts_anything(make_policy: PolicyFactory, fmt: str) -> None:
    policy = make_policy("none")
    assert policy.roots_for(fmt=fmt, aaguid=ZERO_AAGUID) == []
    verdict = policy.enforce(
        fmt=fmt, aaguid=AAGUID.upper(), has_trust_path=False, backup_eligible=True
    )
    assert verdict == attestation.Verdict(aaguid=AAGUID, model_name=None)


def test_none_mode_names_the_model_from_the_blob(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    policy = make_policy("none")
    verdict = policy.enforce(fmt="none", aaguid=AAGUID, has_trust_path=False, backup_eligible=True)
    assert verdict.model_name == "Test Key 5 NFC"
    # A compromised model is still accepted in mode none (any authenticator), and named.
    other = policy.enforce(
        fmt="none", aaguid=OTHER_AAGUID, has_trust_path=False, backup_eligible=False
    )
    assert other == attestation.Verdict(aaguid=OTHER_AAGUID, model_name="Broken Key")


# --- mode trusted: roots ----------------------------------------------------------------------


def test_no_roots_at_all_refuses(make_policy: PolicyFactory) -> None:
    policy = make_policy()
    error = refusal(lambda: policy.roots_for(fmt="packed", aaguid=AAGUID))
    assert error.reason == "untrusted"
    assert error.status == 400
    assert error.code == "attestation_refused"
    assert "trusted" in error.message
    assert error.text("zh-Hant-HK") != error.message
    assert error.text("en") == error.message
    error = refusal(
        lambda: policy.enforce(
            fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=False
        )
    )
    assert error.reason == "untrusted"


def test_roots_from_the_folder(
    make_policy: PolicyFactory, keys_dir: Path, vendor_root: pki.Issued
) -> None:
    other = pki.make_ca("Second Vendor")
    (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(vendor_root.pem)
    (keys_dir / "attestation-roots" / "second.der").write_bytes(other.der)
    (keys_dir / "attestation-roots" / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nxx")
    (keys_dir / "attestation-roots" / "notes.txt").write_text("ignored")
    policy = make_policy()
    for fmt in ("packed", "fido-u2f", "tpm"):
        roots = policy.roots_for(fmt=fmt, aaguid=ZERO_AAGUID)
        assert sorted(roots) == sorted([vendor_root.pem, other.pem])
    verdict = policy.enforce(
        fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=False
    )
    assert verdict == attestation.Verdict(aaguid=AAGUID, model_name=None)


def test_folder_change_is_picked_up(
    make_policy: PolicyFactory, keys_dir: Path, vendor_root: pki.Issued
) -> None:
    policy = make_policy()
    refusal(lambda: policy.roots_for(fmt="packed", aaguid=AAGUID))
    (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(vendor_root.pem)
    assert policy.roots_for(fmt="packed", aaguid=AAGUID) == [vendor_root.pem]


def test_roots_per_aaguid_from_the_blob(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    policy = make_policy()
    assert policy.roots_for(fmt="packed", aaguid=AAGUID) == [vendor_root.pem]
    assert policy.metadata() is not None
    assert policy.metadata_error is None
    # A model the BLOB does not list has no roots (and there are none in the folder).
    assert refusal(lambda: policy.roots_for(fmt="packed", aaguid=ZERO_AAGUID)).reason == "untrusted"
    unknown = "11111111-2222-3333-4444-555555555555"
    assert refusal(lambda: policy.roots_for(fmt="packed", aaguid=unknown)).reason == "untrusted"
    verdict = policy.enforce(
        fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=False
    )
    assert verdict == attestation.Verdict(aaguid=AAGUID, model_name="Test Key 5 NFC")


def test_folder_and_blob_roots_together(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    extra = pki.make_ca("Operator Root")
    (keys_dir / "attestation-roots" / "operator.pem").write_bytes(extra.pem)
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    policy = make_policy()
    assert policy.roots_for(fmt="packed", aaguid=AAGUID) == [extra.pem, vendor_root.pem]


# --- mode trusted: the rules ------------------------------------------------------------------


@pytest.fixture
def trusted(make_policy: PolicyFactory, keys_dir: Path, vendor_root: pki.Issued) -> Policy:
    (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(vendor_root.pem)
    return make_policy()


@pytest.mark.parametrize(
    "fmt", ["none", "apple", "android-key", "android-safetynet", "compound", "", "PACKED"]
)
def test_formats_without_our_trust_path_refused(trusted: Policy, fmt: str) -> None:
    assert refusal(lambda: trusted.roots_for(fmt=fmt, aaguid=AAGUID)).reason == "format"
    error = refusal(
        lambda: trusted.enforce(fmt=fmt, aaguid=AAGUID, has_trust_path=True, backup_eligible=False)
    )
    assert error.reason == "format"


def test_self_attestation_refused(trusted: Policy) -> None:
    error = refusal(
        lambda: trusted.enforce(
            fmt="packed", aaguid=AAGUID, has_trust_path=False, backup_eligible=False
        )
    )
    assert error.reason == "self_attestation"
    assert "certificate" in error.message


def test_synced_refused(trusted: Policy) -> None:
    error = refusal(
        lambda: trusted.enforce(
            fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=True
        )
    )
    assert error.reason == "synced"
    assert "passkey" in error.message


def test_allowlist(make_policy: PolicyFactory, keys_dir: Path, vendor_root: pki.Issued) -> None:
    (keys_dir / "attestation-roots" / "vendor.pem").write_bytes(vendor_root.pem)
    policy = make_policy(WEBAUTHN_AAGUID_ALLOWLIST=AAGUID)
    verdict = policy.enforce(
        fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=False
    )
    assert verdict.aaguid == AAGUID
    for aaguid in (OTHER_AAGUID, ZERO_AAGUID, "not-a-uuid"):
        error = refusal(
            lambda a=aaguid: policy.enforce(  # type: ignore[misc]
                fmt="packed", aaguid=a, has_trust_path=True, backup_eligible=False
            )
        )
        assert error.reason == "aaguid_not_allowed"
    # The allow-list does not apply in mode none.
    none = make_policy("none", WEBAUTHN_AAGUID_ALLOWLIST=AAGUID)
    assert none.enforce(
        fmt="none", aaguid=OTHER_AAGUID, has_trust_path=False, backup_eligible=False
    )


def test_compromised_model_refused(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    policy = make_policy()
    assert policy.roots_for(fmt="packed", aaguid=OTHER_AAGUID) == [vendor_root.pem]
    error = refusal(
        lambda: policy.enforce(
            fmt="packed", aaguid=OTHER_AAGUID, has_trust_path=True, backup_eligible=False
        )
    )
    assert error.reason == "compromised"
    assert error.details["status"] == "ATTESTATION_KEY_COMPROMISE"


@pytest.mark.parametrize(
    ("statuses", "refused"),
    [
        ([("USER_VERIFICATION_BYPASS", "2024-01-01")], True),
        ([("USER_KEY_REMOTE_COMPROMISE", "2024-01-01")], True),
        ([("USER_KEY_PHYSICAL_COMPROMISE", "2024-01-01")], True),
        ([("REVOKED", "2024-01-01")], True),
        # The latest report counts: by effectiveDate, whatever the order in the list.
        ([("REVOKED", "2024-06-01"), ("FIDO_CERTIFIED_L2", "2024-01-01")], True),
        (
            [("FIDO_CERTIFIED_L1", "2024-06-01"), ("ATTESTATION_KEY_COMPROMISE", "2023-01-01")],
            False,
        ),
        ([("UPDATE_AVAILABLE", "2024-01-01")], False),
        ([("NOT_FIDO_CERTIFIED", "2024-01-01")], False),
        ([], False),
    ],
)
def test_status_reports(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    statuses: list[tuple[str, str]],
    refused: bool,
) -> None:
    entries = [pki.entry(AAGUID, roots=[vendor_root.der], statuses=statuses)]
    write_blob(keys_dir, pki.make_blob(entries, signer=mds_signer))
    policy = make_policy()

    def enforce() -> attestation.Verdict:
        return policy.enforce(fmt="tpm", aaguid=AAGUID, has_trust_path=True, backup_eligible=False)

    if refused:
        assert refusal(enforce).reason == "compromised"
    else:
        assert enforce().aaguid == AAGUID


# --- the MDS3 BLOB: refused at load, never a crash --------------------------------------------


def assert_blob_refused(
    policy: Policy, match: str, caplog: pytest.LogCaptureFixture, *, fresh: bool = True
) -> None:
    with caplog.at_level(logging.ERROR, logger="idp.authn.attestation"):
        assert policy.metadata() is None
    assert policy.metadata_error is not None
    assert match in policy.metadata_error, policy.metadata_error
    assert any("MDS3 BLOB" in r.getMessage() for r in caplog.records)
    # No BLOB roots, no model names: requests go on, refused for want of a root.
    assert refusal(lambda: policy.roots_for(fmt="packed", aaguid=AAGUID)).reason == "untrusted"
    assert policy.model_name(AAGUID) is None
    if not fresh:
        return
    # The same files in mode none: accepted, without a model name.
    none = Policy(
        mode="none",
        roots_dir=policy.roots_dir,
        blob_path=policy.blob_path,
        mds_root_path=policy.mds_root_path,
        allowlist=None,
    )
    verdict = none.enforce(fmt="none", aaguid=AAGUID, has_trust_path=False, backup_eligible=False)
    assert verdict == attestation.Verdict(aaguid=AAGUID, model_name=None)


def test_blob_with_a_bad_signature(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    head, _, sig = good_blob(mds_signer, vendor_root).decode().split(".")
    forged = pki.make_blob([pki.entry(AAGUID, roots=[pki.make_ca("Evil").der])], signer=mds_signer)
    write_blob(keys_dir, f"{head}.{forged.decode().split('.')[1]}.{sig}".encode())
    assert_blob_refused(make_policy(), "signature does not verify", caplog)


def test_blob_signed_by_another_key_than_its_x5c(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    impostor = pki.make_ca("Impostor").leaf("mds.example")
    blob = pki.make_blob(
        [pki.entry(AAGUID, roots=[vendor_root.der])], signer=impostor, x5c=mds_signer.x5c_b64
    )
    write_blob(keys_dir, blob)
    assert_blob_refused(make_policy(), "signature does not verify", caplog)


def test_blob_chain_not_ending_at_the_anchor(
    make_policy: PolicyFactory,
    keys_dir: Path,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stranger = pki.make_ca("Test MDS Root").intermediate().leaf("mds.example")  # same name
    write_blob(keys_dir, good_blob(stranger, vendor_root))
    assert_blob_refused(make_policy(), "does not validate up to the MDS root", caplog)


def test_blob_signer_that_is_not_a_ca_issuing(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_root: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An end-entity certificate used as an intermediate: basicConstraints refuse it.
    ee = mds_root.leaf("not-a-ca.example")
    child = ee.leaf("mds.example")
    write_blob(keys_dir, good_blob(child, vendor_root))
    assert_blob_refused(make_policy(), "does not validate up to the MDS root", caplog)


def test_blob_with_an_expired_certificate(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_root: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = mds_root.intermediate().leaf(
        "mds.example", not_before=now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1)
    )
    write_blob(keys_dir, good_blob(expired, vendor_root))
    assert_blob_refused(make_policy(), "does not validate up to the MDS root", caplog)


def test_blob_past_its_next_update(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blob = good_blob(mds_signer, vendor_root, next_update=TODAY - dt.timedelta(days=1))
    write_blob(keys_dir, blob)
    assert_blob_refused(make_policy(), "nextUpdate", caplog)


def test_blob_going_out_of_date_while_cached(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_blob(keys_dir, good_blob(mds_signer, vendor_root, next_update=TODAY))
    policy = make_policy()
    assert policy.roots_for(fmt="packed", aaguid=AAGUID) == [vendor_root.pem]
    monkeypatch.setattr(attestation, "_today", lambda: TODAY + dt.timedelta(days=1))
    assert_blob_refused(policy, "nextUpdate", caplog)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a JWS"),
        (b"garbage", "not a JWS"),
        (b"\xff\xfe\x00binary", "not a JWS"),
        (b"a.b.c", "not a JWS"),
        (b"eyJhbGciOiJub25lIn0.e30.", "algorithm"),  # {"alg":"none"}
    ],
)
def test_malformed_blob(
    make_policy: PolicyFactory,
    keys_dir: Path,
    content: bytes,
    match: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_blob(keys_dir, content)
    assert_blob_refused(make_policy(), match, caplog)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"alg": "HS256"}, "algorithm"),
        ({"x5c": []}, "x5c"),
        ({"x5c": "MIIB"}, "x5c"),
        ({"x5c": ["not base64!"]}, "malformed"),
        ({"x5c": ["AAAA"]}, "malformed"),
        ({"x5c": [1]}, "malformed"),
    ],
)
def test_blob_with_a_bad_header(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    header: dict[str, Any],
    match: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import base64
    import json

    token = pki.make_blob([pki.entry()], signer=mds_signer).decode().split(".")
    head = json.loads(base64.urlsafe_b64decode(token[0] + "=="))
    head.update(header)
    encoded = base64.urlsafe_b64encode(json.dumps(head).encode()).rstrip(b"=").decode()
    write_blob(keys_dir, f"{encoded}.{token[1]}.{token[2]}".encode())
    assert_blob_refused(make_policy(), match, caplog)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"entries": []}, "serial number"),
        ({"no": "1", "nextUpdate": "2999-01-01", "entries": []}, "serial number"),
        ({"no": 1, "nextUpdate": "soon", "entries": []}, "nextUpdate"),
        ({"no": 1, "nextUpdate": "2999-01-01", "entries": {}}, "entries"),
    ],
)
def test_blob_with_a_bad_payload(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    payload: dict[str, Any],
    match: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import jwt

    blob = jwt.encode(
        payload, mds_signer.key, algorithm="ES256", headers={"x5c": mds_signer.x5c_b64}
    )
    write_blob(keys_dir, blob.encode())
    assert_blob_refused(make_policy(), match, caplog)


def test_oversized_blob(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blob = good_blob(mds_signer, vendor_root)
    monkeypatch.setattr(attestation, "MAX_BLOB_BYTES", len(blob) - 1)
    write_blob(keys_dir, blob)
    assert_blob_refused(make_policy(), "larger than", caplog)


def test_missing_mds_root(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (keys_dir / "mds-root.pem").unlink()
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    assert_blob_refused(make_policy(), "MDS root", caplog)


def test_blob_disabled_or_absent(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    assert make_policy().metadata() is None
    assert make_policy().metadata_error is None
    write_blob(keys_dir, good_blob(mds_signer, vendor_root))
    assert make_policy(WEBAUTHN_MDS_BLOB="").metadata() is None
    assert make_policy(WEBAUTHN_MDS_BLOB="other.jwt").metadata() is None
    write_blob(keys_dir, good_blob(mds_signer, vendor_root), name="other.jwt")
    assert make_policy(WEBAUTHN_MDS_BLOB="other.jwt").metadata() is not None


def test_unusable_entries_are_skipped(
    make_policy: PolicyFactory, keys_dir: Path, mds_signer: pki.Issued, vendor_root: pki.Issued
) -> None:
    good = pki.entry(AAGUID, description="Good\x00 Key\n" + "x" * 300, roots=[vendor_root.der])
    good["metadataStatement"]["attestationRootCertificates"].insert(0, "bm90IGEgY2VydA==")
    entries: list[Any] = [
        "not an object",
        {"aaid": "FFFF#0001"},  # UAF
        {"attestationCertificateKeyIdentifiers": ["abcd"]},  # U2F
        {"aaguid": "not-a-uuid"},
        {"aaguid": OTHER_AAGUID, "metadataStatement": "oops", "statusReports": "oops"},
        good,
    ]
    write_blob(keys_dir, pki.make_blob(entries, signer=mds_signer))
    policy = make_policy()
    metadata = policy.metadata()
    assert metadata is not None
    assert set(metadata.entries) == {AAGUID, OTHER_AAGUID}
    assert policy.roots_for(fmt="packed", aaguid=AAGUID) == [vendor_root.pem]
    name = policy.model_name(AAGUID)
    assert name is not None
    assert name.startswith("Good Key")
    assert len(name) == 200
    assert policy.model_name(OTHER_AAGUID) is None


# --- caching ----------------------------------------------------------------------------------


def test_blob_verified_once_per_file_version(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = attestation.load_metadata

    def counting(blob: bytes, **kwargs: Any) -> attestation.Metadata:
        calls.append(1)
        return real(blob, **kwargs)

    monkeypatch.setattr(attestation, "load_metadata", counting)
    path = write_blob(keys_dir, good_blob(mds_signer, vendor_root, number=5))
    policy = make_policy()
    for _ in range(5):
        policy.roots_for(fmt="packed", aaguid=AAGUID)
        policy.enforce(fmt="packed", aaguid=AAGUID, has_trust_path=True, backup_eligible=False)
    assert len(calls) == 1
    # A new file (another mtime) is verified again, once.
    entries = [pki.entry(AAGUID, description="Renamed", roots=[vendor_root.der])]
    path.write_bytes(pki.make_blob(entries, signer=mds_signer, number=6))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert policy.model_name(AAGUID) == "Renamed"
    assert policy.model_name(AAGUID) == "Renamed"
    assert len(calls) == 2


def test_blob_rollback_refused(
    make_policy: PolicyFactory,
    keys_dir: Path,
    mds_signer: pki.Issued,
    vendor_root: pki.Issued,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_blob(keys_dir, good_blob(mds_signer, vendor_root, number=7))
    policy = make_policy()
    assert policy.metadata() is not None
    path.write_bytes(good_blob(mds_signer, vendor_root, number=6))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_blob_refused(policy, "older", caplog, fresh=False)


def test_policy_from_the_app_reads_keys_dir(
    make_app: Callable[..., Flask], tmp_path: Path, vendor_root: pki.Issued
) -> None:
    app = make_app(WEBAUTHN_ATTESTATION="trusted")
    folder = Path(app.config["IDP"]["KEYS_DIR"]) / "attestation-roots"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vendor.pem").write_bytes(vendor_root.pem)
    with app.app_context():
        assert attestation.current_policy().roots_for(fmt="packed", aaguid=AAGUID) == [
            vendor_root.pem
        ]


def test_refusal_speaks_the_page_language(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    with app.test_request_context("/", headers={"Accept-Language": "zh-HK,zh;q=0.9"}):
        error = AttestationRefused("synced")
        assert error.message == attestation.REASONS["synced"][1]
    with app.test_request_context("/", headers={"Accept-Language": "en-GB"}):
        assert AttestationRefused("synced").message == attestation.REASONS["synced"][0]
    assert AttestationRefused("unheard-of").message == attestation.REASONS["untrusted"][0]
