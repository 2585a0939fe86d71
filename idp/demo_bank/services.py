"""The demo bank's side of a FAPI 2.0 KYC journey, as a bank elsewhere would run it.

1. Discovery: the metadata's ``issuer`` must be the configured one, and it must offer PAR.
2. A pushed authorization request (RFC 9126) authenticated with ``private_key_jwt`` (ES256,
   ``aud`` = the issuer, FAPI 2.0 §5.3.2.1) and proofed with DPoP (RFC 9449, also ``dpop_jkt``),
   carrying PKCE (S256), ``state``, ``nonce`` and a ``corp_data`` authorization detail (RFC 9396)
   with a purpose and a one-year duration; the browser goes to ``/authorize`` with only
   ``client_id`` and ``request_uri``.
3. The callback: ``iss`` (RFC 9207) and ``state`` checked before anything else, then errors.
4. The token request: ``private_key_jwt`` + DPoP (the library retries once with the server's
   ``DPoP-Nonce``); the access token must be a DPoP token; the ID token is verified against
   the JWKS (signature and alg, ``iss``, ``aud``, ``azp``, ``exp``, ``nonce``, ``at_hash``).
5. The company data API with the DPoP-bound token, and the consent receipt (a JWT) verified
   against the JWKS.

Every failure is a ``BankError`` whose ``kind`` chooses the page the person sees.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwskate
import requests
from requests_oauth2client import (
    AuthorizationRequest,
    AuthorizationResponseError,
    BearerToken,
    DPoPKey,
    DPoPToken,
    EndpointError,
    InvalidAuthResponse,
    MismatchingIssuer,
    MismatchingState,
    MissingIssuer,
    OAuth2Client,
    PrivateKeyJwt,
)
from requests_oauth2client.exceptions import OAuth2Error

from idp.data.categories import CATEGORIES, CORP_ADDRESS, CORP_OFFICERS, CORP_PROFILE, RAR_TYPE

# Seconds the bank waits for Corp ID on each call.
HTTP_TIMEOUT = 10
# The algorithm of the bank's client assertions and DPoP proofs (its two keys are P-256).
KEY_ALG = "ES256"
# The ID token algorithm the bank registered (FAPI 2.0 allows PS256, ES256, EdDSA).
ID_TOKEN_ALG = "PS256"  # noqa: S105 -- an algorithm name
# Algorithms the bank accepts on Corp ID's consent receipts (asymmetric only: no none, no HMAC).
RECEIPT_ALGS = ("PS256", "ES256", "RS256", "EdDSA")
# The JOSE type of Corp ID's consent receipts: no other token of Corp ID passes for one.
RECEIPT_TYP = "consent-receipt+jwt"
# Where the company data API is, under the issuer (the bank is configured with it).
DATA_API_PATH = "/api/company-data"
# What the bank asks for and why; the consent lasts one year.
PURPOSE = "Customer due diligence (KYC) for a business account / 商業戶口客戶盡職審查"
DURATION = 365 * 24 * 3600
SCOPE = "openid"
# Key files under the keys folder (git-ignored), made once by the demo seed.
CLIENT_KEY_FILE = "demo-bank-client.jwk"
DPOP_KEY_FILE = "demo-bank-dpop.jwk"

# The categories in plain words, (English, Traditional Chinese), for the bank's own pages.
CATEGORY_LABELS: dict[str, tuple[str, str]] = {
    CORP_PROFILE: (
        "Company profile: BR number, names, type, status, date of incorporation",
        "公司基本資料：商業登記號碼、名稱、類別、狀況、成立日期",  # noqa: RUF001
    ),
    CORP_ADDRESS: ("Registered office address", "註冊辦事處地址"),
    CORP_OFFICERS: ("Directors and company secretary", "董事及公司秘書"),
}

# Why a journey stopped: the page the person sees is chosen by kind.
KINDS = (
    "setup",  # the bank is not set up (no registration, no keys)
    "provider",  # Corp ID's metadata or PAR endpoint did not answer as a FAPI 2.0 provider would
    "not_started",  # a callback with no journey started in this browser (or an expired one)
    "state",  # the callback does not belong to this journey
    "iss",  # the callback does not come from the expected issuer
    "denied",  # the company admin did not share the data
    "refused",  # Corp ID answered another error on the callback
    "token",  # the token endpoint refused, or answered something unusable
    "id_token",  # the ID token did not verify
    "data",  # the company data API refused or answered something unusable
    "receipt",  # the consent receipt did not verify
)


class BankError(Exception):
    """The KYC journey did not complete. ``kind`` is one of ``KINDS``; ``detail`` says what
    happened, for the person and the bank's support staff."""

    def __init__(self, kind: str, detail: str = "") -> None:
        assert kind in KINDS, kind
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class Bank:
    """What the bank knows of itself and of its provider."""

    issuer: str
    client_id: str
    redirect_uri: str
    client_key: jwskate.Jwk
    dpop_key: jwskate.Jwk

    @property
    def data_api(self) -> str:
        return f"{self.issuer.rstrip('/')}{DATA_API_PATH}"


@dataclass(frozen=True)
class KycResult:
    """A completed journey: what Corp ID released, and the proof of consent."""

    claims: dict[str, Any]
    company_data: dict[str, Any]
    authorization_details: list[dict[str, Any]]
    receipt: dict[str, Any] | None
    scope: str
    token_type: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "claims": self.claims,
            "company_data": self.company_data,
            "authorization_details": self.authorization_details,
            "receipt": self.receipt,
            "scope": self.scope,
            "token_type": self.token_type,
        }


# --- keys -------------------------------------------------------------------------------------


def _write_new_key(path: Path, kid_prefix: str) -> jwskate.Jwk:
    key = jwskate.Jwk.generate(alg=KEY_ALG, kid=f"{kid_prefix}-{secrets.token_hex(4)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return _read_key(path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(key), fh)
    return key


def _read_key(path: Path) -> jwskate.Jwk:
    try:
        key = jwskate.Jwk(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise BankError("setup", f"{path.name} is missing: run `idp demo`.") from None
    except (ValueError, TypeError) as exc:
        raise BankError("setup", f"{path.name} is not a JWK ({exc}).") from None
    if not key.is_private or key.is_symmetric or key.get("kid") is None:
        raise BankError("setup", f"{path.name} is not an asymmetric private key with a kid.")
    return key


def ensure_keys(folder: str | Path) -> tuple[jwskate.Jwk, jwskate.Jwk]:
    """The bank's ``(client signing key, DPoP key)`` from ``folder``, generated (P-256, mode
    0600) the first time. Raises ``BankError`` when a file is there but unusable."""
    folder = Path(folder)
    keys = []
    for name, prefix in ((CLIENT_KEY_FILE, "bank-client"), (DPOP_KEY_FILE, "bank-dpop")):
        path = folder / name
        keys.append(_read_key(path) if path.exists() else _write_new_key(path, prefix))
    return keys[0], keys[1]


def load_keys(folder: str | Path) -> tuple[jwskate.Jwk, jwskate.Jwk]:
    """The bank's ``(client signing key, DPoP key)``; raises ``BankError`` ("setup") when the
    demo seed has not made them."""
    folder = Path(folder)
    return _read_key(folder / CLIENT_KEY_FILE), _read_key(folder / DPOP_KEY_FILE)


def public_jwks(client_key: jwskate.Jwk) -> dict[str, Any]:
    """The JWKS the bank registers: its client key's public half only."""
    public = client_key.public_jwk().with_usage_parameters()
    return {"keys": [dict(public)]}


# --- the requests -----------------------------------------------------------------------------


class _Session(requests.Session):
    """A requests session with a timeout on every call (the library leaves some without)."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        return super().request(*args, **kwargs)


def _get_json(session: requests.Session, url: str) -> dict[str, Any]:
    try:
        response = session.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise BankError("provider", f"Corp ID did not answer {url} as expected ({exc}).") from None
    if not isinstance(body, dict):
        raise BankError("provider", f"Corp ID answered {url} with something other than an object.")
    return body


def oauth_client(bank: Bank) -> OAuth2Client:
    """An ``OAuth2Client`` for the bank, from Corp ID's discovery document and JWKS.

    The metadata's ``issuer`` must be the configured one (Discovery §4.3) and it must offer a
    PAR endpoint and RFC 9207 ``iss``. Raises ``BankError`` ("provider")."""
    session = _Session()
    metadata = _get_json(session, f"{bank.issuer}/.well-known/openid-configuration")
    if metadata.get("issuer") != bank.issuer:
        raise BankError("provider", "The provider's metadata names another issuer.")
    if not metadata.get("pushed_authorization_request_endpoint"):
        raise BankError("provider", "The provider offers no pushed authorization requests.")
    if not metadata.get("authorization_response_iss_parameter_supported"):
        raise BankError("provider", "The provider does not send iss in its answers (RFC 9207).")
    if not metadata.get("jwks_uri"):
        raise BankError("provider", "The provider publishes no JWKS.")
    jwks = _get_json(session, str(metadata["jwks_uri"]))
    try:
        return OAuth2Client.from_discovery_document(
            metadata,
            issuer=bank.issuer,
            # FAPI 2.0: the assertion's audience is the issuer, whatever the endpoint.
            auth=PrivateKeyJwt(bank.client_id, bank.client_key, alg=KEY_ALG, aud=bank.issuer),
            authorization_server_jwks=jwks,
            session=session,
            redirect_uri=bank.redirect_uri,
            id_token_signed_response_alg=ID_TOKEN_ALG,
            dpop_bound_access_tokens=True,
            dpop_alg=KEY_ALG,
            # The library insists on https endpoints; only the demo's http://localhost is let off.
            testing=bank.issuer.startswith("http://"),
        )
    except (ValueError, TypeError) as exc:
        raise BankError("provider", f"The provider's metadata is not usable ({exc}).") from None


def authorization_detail(categories: Iterable[str]) -> dict[str, Any]:
    """The ``corp_data`` authorization detail (RFC 9396) for ``categories``, in the order of
    ``CATEGORIES``, with the bank's purpose and a one-year duration."""
    wanted = set(categories)
    return {
        "type": RAR_TYPE,
        "categories": [c for c in CATEGORIES if c in wanted],
        "purpose": PURPOSE,
        "duration": DURATION,
    }


def new_transaction(categories: Iterable[str], *, ui_locales: str | None = None) -> dict[str, Any]:
    """What the bank keeps from the start of a journey to its callback."""
    chosen = [c for c in CATEGORIES if c in set(categories)]
    if not chosen:
        raise ValueError("at least one category")
    transaction: dict[str, Any] = {
        "state": secrets.token_urlsafe(24),
        "nonce": secrets.token_urlsafe(24),
        "code_verifier": secrets.token_urlsafe(48),
        "categories": chosen,
    }
    if ui_locales:
        transaction["ui_locales"] = ui_locales
    return transaction


def authorization_request(
    client: OAuth2Client, bank: Bank, transaction: Mapping[str, Any]
) -> AuthorizationRequest:
    """The authorization request of ``transaction`` (the same at the start and at the
    callback, which checks the answer against it)."""
    extra = {"ui_locales": transaction["ui_locales"]} if transaction.get("ui_locales") else {}
    return client.authorization_request(
        scope=SCOPE,
        state=str(transaction["state"]),
        nonce=str(transaction["nonce"]),
        code_verifier=str(transaction["code_verifier"]),
        dpop=True,
        dpop_key=DPoPKey(bank.dpop_key, alg=KEY_ALG),
        authorization_response_iss_parameter_supported=True,
        authorization_details=json.dumps(
            [authorization_detail(transaction["categories"])], separators=(",", ":")
        ),
        **extra,
    )


def start_kyc(
    bank: Bank, *, categories: Iterable[str], ui_locales: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Push the authorization request. Returns ``(authorization_url, transaction)``: the
    browser goes to the URL (``client_id`` and ``request_uri`` only), the bank keeps the
    transaction for the callback. Raises ``BankError``."""
    transaction = new_transaction(categories, ui_locales=ui_locales)
    client = oauth_client(bank)
    request = authorization_request(client, bank, transaction)
    try:
        pushed = client.pushed_authorization_request(request)
    except EndpointError as exc:
        raise BankError("provider", _endpoint_error("The PAR endpoint", exc)) from None
    except (OAuth2Error, requests.RequestException, ValueError) as exc:
        raise BankError(
            "provider", f"The PAR endpoint did not answer as expected ({exc})."
        ) from None
    if not pushed.request_uri:
        raise BankError("provider", "The PAR endpoint answered no request_uri.")
    return str(pushed.uri), transaction


def _endpoint_error(what: str, exc: EndpointError) -> str:
    return f"{what} answered {exc.error}: {exc.description or ''}".strip().rstrip(":")


def check_callback(
    request: AuthorizationRequest, params: Mapping[str, str]
) -> Any:  # an AuthorizationResponse
    """The authorization response in ``params`` once ``iss`` (RFC 9207) and ``state`` are
    those of ``request``; error answers raise. Raises ``BankError``."""
    if not params.get("state"):
        raise BankError("state", "The answer carries no state.")
    url = f"{request.redirect_uri}?{urlencode(dict(params))}"
    try:
        return request.validate_callback(url)
    except (MissingIssuer, MismatchingIssuer):
        raise BankError("iss", f"iss={params.get('iss', '')!r}") from None
    except MismatchingState:
        raise BankError("state") from None
    except AuthorizationResponseError as exc:
        detail = f"{exc.error}: {exc.description or ''}".strip().rstrip(":")
        raise BankError("denied" if exc.error == "access_denied" else "refused", detail) from None
    except InvalidAuthResponse as exc:
        raise BankError("refused", f"The answer is not usable ({exc}).") from None


def finish_kyc(
    bank: Bank, transaction: Mapping[str, Any] | None, params: Mapping[str, str]
) -> KycResult:
    """Complete the journey from the callback's ``params`` and the ``transaction`` kept since
    ``start_kyc``: redeem the code, verify the ID token, fetch the company data, verify the
    consent receipt. Raises ``BankError``."""
    if not transaction or not isinstance(transaction.get("categories"), list):
        raise BankError("not_started")
    client = oauth_client(bank)
    request = authorization_request(client, bank, transaction)
    response = check_callback(request, params)

    try:
        token = client.authorization_code(response, validate=False)
    except EndpointError as exc:
        raise BankError("token", _endpoint_error("The token endpoint", exc)) from None
    except (OAuth2Error, requests.RequestException, ValueError) as exc:
        raise BankError(
            "token", f"The token endpoint did not answer as expected ({exc})."
        ) from None
    if not isinstance(token, DPoPToken) or str(token.token_type).lower() != "dpop":
        raise BankError("token", f"The access token is not DPoP-bound ({token.token_type}).")
    claims = verify_id_token(client, bank, token, response)
    details = granted_details(token.kwargs.get("authorization_details"), transaction["categories"])
    receipt_jwt = token.kwargs.get("consent_receipt")
    receipt = (
        verify_receipt(
            str(receipt_jwt),
            jwks=client.authorization_server_jwks,
            issuer=bank.issuer,
            client_id=bank.client_id,
        )
        if receipt_jwt
        else None
    )
    company_data = fetch_company_data(client, bank, token)
    return KycResult(
        claims=claims,
        company_data=company_data,
        authorization_details=details,
        receipt=receipt,
        scope=str(token.scope or ""),
        token_type=str(token.token_type),
    )


def verify_id_token(
    client: OAuth2Client, bank: Bank, token: DPoPToken, response: Any
) -> dict[str, Any]:
    """The ID token's claims once the library has checked its signature (against the JWKS,
    with the registered alg), ``aud``, ``azp``, ``exp``, ``nonce`` and ``at_hash``, and the bank
    its ``iss``, ``iat`` and ``sub``. Raises ``BankError`` ("id_token")."""
    if token.id_token is None:
        raise BankError("id_token", "The token response has no ID token.")
    # requests-oauth2client 1.8.0's DPoPToken.validate_id_token() rebuilds the token without
    # its DPoP key and fails: the checks run on a plain copy (they use access_token, id_token).
    plain = BearerToken(access_token=token.access_token, id_token=token.id_token)
    try:
        with warnings.catch_warnings():
            # jwskate only warns when a key is used with another alg than its own: refuse.
            warnings.simplefilter("error")
            verified = plain.validate_id_token(client, response)
    except (ValueError, KeyError, TypeError, AttributeError, Warning) as exc:
        # AttributeError: jwskate's answer to a claim the token lacks (a missing nonce).
        raise BankError("id_token", str(exc) or repr(exc)) from None
    id_token = verified.id_token
    if not isinstance(id_token, jwskate.SignedJwt):
        raise BankError("id_token", "The ID token is not a signed JWT.")
    claims = dict(id_token.claims)
    # The library checks iss only against an issuer the response itself would carry.
    if claims.get("iss") != bank.issuer:
        raise BankError("id_token", "The ID token comes from another issuer.")
    if claims.get("nonce") != response.nonce:
        raise BankError("id_token", "The ID token's nonce is not this journey's.")
    if not isinstance(claims.get("iat"), int) or not claims.get("sub"):
        raise BankError("id_token", "The ID token has no iat or no sub.")
    return claims


def granted_details(value: object, requested: Iterable[str]) -> list[dict[str, Any]]:
    """The token response's ``authorization_details``: a list of objects, whose ``corp_data``
    categories are among those ``requested``. Raises ``BankError`` ("token")."""
    if value is None:
        raise BankError("token", "The token response names no granted authorization_details.")
    if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
        raise BankError("token", "authorization_details is not a list of objects.")
    asked = set(requested)
    for detail in value:
        if detail.get("type") != RAR_TYPE:
            continue
        categories = detail.get("categories")
        if not isinstance(categories, list) or not set(categories) <= asked:
            raise BankError("token", "Corp ID granted categories the bank did not ask for.")
    return list(value)


def verify_receipt(
    receipt: str, *, jwks: jwskate.JwkSet, issuer: str, client_id: str
) -> dict[str, Any]:
    """The consent receipt's ``{"header", "claims"}`` once its ``typ`` is a consent receipt's,
    its signature is verified against Corp ID's JWKS (asymmetric algorithms only, key found by
    ``kid``), its ``iss`` is the issuer and it names this bank as the client. Raises
    ``BankError`` ("receipt")."""
    try:
        jwt = jwskate.SignedJwt(receipt)
    except (ValueError, TypeError) as exc:
        raise BankError("receipt", f"The consent receipt is not a JWT ({exc}).") from None
    if jwt.headers.get("typ") != RECEIPT_TYP:
        raise BankError(
            "receipt", f"This is not a consent receipt (typ {jwt.headers.get('typ')!r})."
        )
    alg = jwt.headers.get("alg")
    if alg not in RECEIPT_ALGS:
        raise BankError("receipt", f"The consent receipt is signed with {alg!r}.")
    kid = jwt.headers.get("kid")
    try:
        key = jwks.get_jwk_by_kid(str(kid))
        if (key.alg and key.alg != alg) or alg not in key.supported_signing_algorithms():
            raise BankError("receipt", f"Key {kid} is not for {alg}.")
        valid = jwt.verify_signature(key, alg=alg)
    except (KeyError, ValueError, TypeError) as exc:
        raise BankError("receipt", f"No published key verifies the receipt ({exc}).") from None
    if not valid:
        raise BankError("receipt", "The consent receipt's signature does not verify.")
    claims = dict(jwt.claims)
    if claims.get("iss") != issuer:
        raise BankError("receipt", "The consent receipt comes from another issuer.")
    named = claims.get("client")
    if not isinstance(named, dict) or named.get("client_id") != client_id:
        raise BankError("receipt", "The consent receipt is for another client.")
    return {"header": dict(jwt.headers), "claims": claims}


def fetch_company_data(client: OAuth2Client, bank: Bank, token: DPoPToken) -> dict[str, Any]:
    """``GET`` the company data API with the DPoP-bound access token (the library adds a proof
    with ``ath`` and retries once with a ``DPoP-Nonce``). Raises ``BankError`` ("data")."""
    try:
        response = client.session.get(
            bank.data_api, auth=token, headers={"Accept": "application/json"}
        )
    except (requests.RequestException, ValueError) as exc:
        raise BankError("data", f"The company data API did not answer ({exc}).") from None
    if response.status_code != 200:
        raise BankError(
            "data",
            f"The company data API answered {response.status_code}: "
            f"{response.headers.get('WWW-Authenticate') or response.text[:200]}",
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BankError("data", "The company data API answered something other than an object.")
    return body


# --- what the pages show ----------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One released category as the bank shows it: its values and where they come from."""

    category: str
    values: dict[str, Any]
    source: str | None
    as_of: str | None
    # The IDA trust framework its verified_claims name, if any.
    trust_framework: str | None = None


def sections(company_data: Mapping[str, Any]) -> list[Section]:
    """The released categories of a company data API answer, in the order of ``CATEGORIES``.

    Each category is ``{"values": {...}, "provenance": {"source", "as_of"}, "verified_claims":
    {"verification": {"trust_framework", ...}, ...}}`` under ``categories`` (provenance members
    beside the values are read too)."""
    found = company_data.get("categories")
    by_category = found if isinstance(found, Mapping) else company_data
    result = []
    for category in CATEGORIES:
        entry = by_category.get(category)
        if not isinstance(entry, Mapping):
            continue
        provenance = entry.get("provenance")
        provenance = provenance if isinstance(provenance, Mapping) else entry
        values = entry.get("values")
        if not isinstance(values, Mapping):
            values = {
                k: v
                for k, v in entry.items()
                if k not in ("provenance", "source", "as_of", "verified_claims")
            }
        source, as_of = provenance.get("source"), provenance.get("as_of")
        verified = entry.get("verified_claims")
        verification = verified.get("verification") if isinstance(verified, Mapping) else None
        framework = (
            verification.get("trust_framework") if isinstance(verification, Mapping) else None
        )
        result.append(
            Section(
                category=category,
                values=dict(values),
                source=str(source) if source is not None else None,
                as_of=str(as_of) if as_of is not None else None,
                trust_framework=str(framework) if framework is not None else None,
            )
        )
    return result
