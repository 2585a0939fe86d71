"""The demo bank's pages: the account-opening page (choose what to share, "Verify with Corp
ID"), the start of the journey, the callback, the verified company data, and "start again".
Registered by ``create_app`` only in demo mode.

The bank keeps its state in cookies of its own (signed, HttpOnly, path ``/demo-bank/``), never
in the provider's session: it stands for a site elsewhere. The verified account can pass the
4 KB a cookie holds, so it is spread over a few numbered cookies.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from itsdangerous import BadData, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from idp.data.categories import CATEGORIES
from idp.demo import DEMO_BANK_PATH, demo_bank_urls, find_demo_bank_client
from idp.demo_bank import services as bank_services
from idp.demo_bank.services import CATEGORY_LABELS, Bank, BankError

bp = Blueprint("demo_bank", __name__, url_prefix=DEMO_BANK_PATH)


@bp.app_template_filter("bank_json")
def _bank_json(value: Any) -> str:
    """JSON for people: indented, Chinese left readable (autoescaped by Jinja)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


@bp.app_template_filter("bank_date")
def _bank_date(value: int | float) -> str:
    """A timestamp as its UTC date (YYYY-MM-DD)."""
    try:
        return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return str(value)


TRANSACTION_COOKIE = "corpid_demo_bank_tx"
ACCOUNT_COOKIE = "corpid_demo_bank"
# Seconds a journey may take from the button to the callback.
TRANSACTION_TTL = 10 * 60
# Seconds the bank remembers a verified company in this browser.
ACCOUNT_TTL = 60 * 60
# Characters per cookie, and cookies per value (browsers keep 4096 bytes per cookie).
CHUNK = 3800
MAX_CHUNKS = 4
# Language tags passed on to Corp ID (BCP 47 shapes, space-separated, bounded).
UI_LOCALES = re.compile(
    r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*( [A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*){0,4}"
)
# HTTP status of each failure page: the person's own choice is not an error.
STATUS = {
    "setup": 503,
    "provider": 502,
    "token": 502,
    "id_token": 502,
    "data": 502,
    "receipt": 502,
    "denied": 200,
}


def _serializer() -> URLSafeTimedSerializer:
    from idp.keys.services import derive_secret

    return URLSafeTimedSerializer(
        derive_secret(current_app.config["IDP"], "demo-bank"), salt="corp-id/demo-bank"
    )


def _names(name: str) -> list[str]:
    return [name] + [f"{name}.{i}" for i in range(1, MAX_CHUNKS)]


def _load(name: str, max_age: int) -> dict[str, Any]:
    parts = []
    for cookie in _names(name):
        part = request.cookies.get(cookie)
        if not part:
            break
        parts.append(part)
    raw = "".join(parts)
    if not raw or len(raw) > CHUNK * MAX_CHUNKS:
        return {}
    try:
        value = _serializer().loads(raw, max_age=max_age)
    except BadData:
        return {}
    return value if isinstance(value, dict) else {}


def _store(response: BaseResponse, name: str, value: dict[str, Any] | None, max_age: int) -> bool:
    """Set (or with ``value`` None, delete) the cookies holding ``value``; False when it is too
    big to keep."""
    https = str(current_app.config["IDP"]["ISSUER"]).startswith("https://")
    raw = _serializer().dumps(value) if value is not None else ""
    chunks = [raw[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]
    if len(chunks) > MAX_CHUNKS:
        chunks = []  # too big to keep: the page was shown once
    for index, cookie in enumerate(_names(name)):
        if index < len(chunks):
            response.set_cookie(
                cookie,
                chunks[index],
                max_age=max_age,
                path=f"{DEMO_BANK_PATH}/",
                secure=https,
                httponly=True,
                samesite="Lax",
            )
        elif cookie in request.cookies or value is None:
            response.delete_cookie(cookie, path=f"{DEMO_BANK_PATH}/", secure=https, httponly=True)
    return value is None or bool(chunks)


def _bank() -> Bank:
    client = find_demo_bank_client()
    if client is None:
        raise BankError("setup", "The demo bank is not registered: run `idp demo`.")
    client_key, dpop_key = bank_services.load_keys(current_app.config["IDP"]["KEYS_DIR"])
    _, redirect_uri = demo_bank_urls()
    return Bank(
        issuer=str(current_app.config["IDP"]["ISSUER"]),
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        client_key=client_key,
        dpop_key=dpop_key,
    )


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(
        render_template(
            f"demo_bank/{template}",
            categories=CATEGORIES,
            labels=CATEGORY_LABELS,
            **context,
        ),
        status=status,
        mimetype="text/html",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _account_page(account: dict[str, Any]) -> Response:
    data = account.get("company_data")
    return _page(
        "account.html",
        account=account,
        sections=bank_services.sections(data if isinstance(data, dict) else {}),
    )


def _failure(exc: BankError) -> Response:
    return _page("error.html", STATUS.get(exc.kind, 400), kind=exc.kind, detail=exc.detail)


@bp.get("/")
def index() -> Response:
    account = _load(ACCOUNT_COOKIE, ACCOUNT_TTL).get("account")
    if account:
        return _account_page(account)
    return _page("index.html", chosen=set(CATEGORIES))


@bp.get("/start")
def start() -> BaseResponse:
    asked = set(request.args.getlist("category"))
    chosen = [c for c in CATEGORIES if c in asked]
    if not chosen:
        return _page("index.html", 400, chosen=set(), choose_one=True)
    ui_locales = request.args.get("ui_locales") or None
    if ui_locales is not None and not UI_LOCALES.fullmatch(ui_locales):
        ui_locales = None  # not a list of language tags: Corp ID chooses from the browser
    try:
        url, transaction = bank_services.start_kyc(
            _bank(), categories=chosen, ui_locales=ui_locales
        )
    except BankError as exc:
        return _failure(exc)
    response = redirect(url, 303)
    _store(response, TRANSACTION_COOKIE, {"transaction": transaction}, TRANSACTION_TTL)
    return response


@bp.get("/callback")
def callback() -> BaseResponse:
    transaction = _load(TRANSACTION_COOKIE, TRANSACTION_TTL).get("transaction")
    params = {k: v for k, v in request.args.items() if isinstance(v, str)}
    try:
        result = bank_services.finish_kyc(_bank(), transaction, params)
    except BankError as exc:
        failed = _failure(exc)
        _store(failed, TRANSACTION_COOKIE, None, 0)
        return failed
    response: BaseResponse = redirect(url_for("demo_bank.index"), 303)
    if not _store(response, ACCOUNT_COOKIE, {"account": result.as_dict()}, ACCOUNT_TTL):
        response = _account_page(result.as_dict())  # too big to keep: shown this once
    _store(response, TRANSACTION_COOKIE, None, 0)
    return response


@bp.post("/forget")
def forget() -> BaseResponse:
    response = redirect(url_for("demo_bank.index"), 303)
    _store(response, ACCOUNT_COOKIE, None, 0)
    return response
