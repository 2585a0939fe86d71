"""Functional-test fixtures: one live Corp ID server per test session, driven over HTTP by real
client libraries and by a ``requests`` "browser" that carries the sign-in cookie.

The live server runs the real app (werkzeug, threaded) on 127.0.0.1 with its issuer set to
its own address; signing keys are generated once per session and every other table is emptied
after each test. Tests reach the database through ``ctx`` (an app context in the test thread)
to create people and clients and to move clocks (expiry) without sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import jwskate
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from flask import Flask
from joserfc import jwt as jose_jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from werkzeug.serving import BaseWSGIServer, make_server

from idp import create_app, schema
from idp.audit.models import append_only_lifted
from idp.audit.services import stop_sealer
from idp.extensions import db
from idp.keys import services as keys

SECRET_KEY = "functional-tests-secret-key-0123456789abcdef"
KEEP_TABLES = {"signing_keys", "alembic_version"}
LOGIN_COOKIE = "corpid_session"
RP_REDIRECT = "https://rp.example/cb"
# JWK members that only private or symmetric keys carry (RFC 7517/7518).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k", "oth")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# --- the live server --------------------------------------------------------------------------

class ServerErrors:
    """WSGI middleware noting every 5xx the live server answers: bad input must never get
    one (SECURITY.md), whatever a test itself asserts."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def watch(status: str, headers: Any, exc_info: Any = None) -> Any:
            if status.startswith("5"):
                self.seen.append(f"{environ.get('REQUEST_METHOD')} "
                                 f"{environ.get('PATH_INFO')} -> {status}")
            return start_response(status, headers, exc_info)

        return self.app(environ, watch)


@dataclass
class Live:
    app: Flask
    issuer: str
    server: BaseWSGIServer
    errors: ServerErrors

    def url(self, path: str) -> str:
        return self.issuer + path

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.app.config["IDP"]
        return config

    def discovery(self) -> dict[str, Any]:
        response = requests.get(self.url("/.well-known/openid-configuration"), timeout=10)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document

    def jwks(self) -> dict[str, Any]:
        response = requests.get(self.discovery()["jwks_uri"], timeout=10)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document


@contextlib.contextmanager
def scratch_postgres(base: str, prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own next to ``base`` (whose role may create databases),
    dropped afterwards; yields its URL."""
    from sqlalchemy import create_engine, make_url, text

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def live_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite by default; a scratch PostgreSQL database when ``IDP_TEST_DATABASE_URL`` is set
    (the suite's other fixtures truncate their own schema between tests, so the live server
    keeps a database of its own)."""
    base = os.environ.get("IDP_TEST_DATABASE_URL", "")
    if not base:
        yield f"sqlite:///{tmp_path_factory.mktemp('corpid-db') / 'idp.sqlite3'}"
        return
    with scratch_postgres(base, "corpid_live") as url:
        yield url


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, live_database: str,
                redis_url: str | None) -> Iterator[Live]:
    """The app served on 127.0.0.1 at a free port, issuer ``http://127.0.0.1:<port>``; on
    Redis too when ``IDP_REDIS_URL`` is set (``redis_url`` from tests/conftest.py)."""
    folder = tmp_path_factory.mktemp("corpid-live")
    # Bind first (port 0: the kernel picks a free one), then build the app for that address.
    server = make_server("127.0.0.1", 0, Flask("placeholder"), threaded=True)
    issuer = f"http://127.0.0.1:{server.server_port}"
    app = create_app({"ISSUER": issuer, "DATABASE_URL": live_database,
                      "KEYS_DIR": str(folder / "keys"), "SECRET_KEY": SECRET_KEY,
                      "REDIS_URL": redis_url or "", "LOG_LEVEL": "WARNING",
                      "WEBAUTHN_ATTESTATION": "none"})
    app.config["TESTING"] = True
    with app.app_context():
        schema.upgrade()
        keys.ensure_keys(actor="tests")
    errors = ServerErrors(app)
    server.app = errors
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Live(app=app, issuer=issuer, server=server, errors=errors)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        stop_sealer(app)  # before its database goes away
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        redis_client = app.extensions.get("idp.redis")
        if redis_client is not None:
            redis_client.close()


def _reset(app: Flask) -> None:
    """Empty every table but the signing keys; flush this worker's Redis database."""
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn, append_only_lifted(conn):
            for table in reversed(db.metadata.sorted_tables):
                if table.name not in KEEP_TABLES:
                    conn.execute(table.delete())
    redis_client = app.extensions.get("idp.redis")
    if redis_client is not None:
        redis_client.flushdb()


@pytest.fixture
def live(live_server: Live, request: pytest.FixtureRequest) -> Iterator[Live]:
    """The live server, with every table but the signing keys emptied after the test, and a
    check that it answered no 5xx during the test (xfail tests aside: they document bugs)."""
    keys.clear_caches()  # module-level: another app in this process may have filled them
    _reset(live_server.app)
    live_server.errors.seen.clear()
    yield live_server
    seen, live_server.errors.seen[:] = list(live_server.errors.seen), []
    _reset(live_server.app)
    keys.clear_caches()
    if request.node.get_closest_marker("xfail") is None:
        assert not seen, f"the server answered 5xx: {seen}"


@pytest.fixture
def ctx(live: Live) -> Iterator[Live]:
    """An app context in the test thread, for services and direct database checks.

    Call ``db.session.rollback()`` before reading what the server changed (SQLite keeps a
    read snapshot open until the transaction ends)."""
    with live.app.app_context():
        yield live
        db.session.remove()


# --- people and clients -----------------------------------------------------------------------

@dataclass
class Org:
    br_number: str
    name_en: str
    name_zh: str | None
    roles: list[str]
    id: int = 0


@dataclass
class PersonInfo:
    id: int
    subject: str
    email: str | None
    display_name: str
    companies: list[Org] = field(default_factory=list)


_br_counter = iter(range(10_000_000, 99_999_999, 7919))


@pytest.fixture
def make_person(ctx: Live) -> Callable[..., PersonInfo]:
    """Create a person with memberships: ``make_person(companies=[{"roles": [...]}, ...])``."""

    def factory(*, name: str = "Chan Tai Man", email: str | None = "tai.man@acme.example",
                companies: list[dict[str, Any]] | None = None) -> PersonInfo:
        from idp.orgs.models import Company, Membership, Person

        person = Person(display_name=name, email=email)
        db.session.add(person)
        db.session.flush()
        orgs = []
        for spec in companies or [{}]:
            org = Org(br_number=spec.get("br_number") or str(next(_br_counter)),
                      name_en=spec.get("name_en", "Acme Trading Limited"),
                      name_zh=spec.get("name_zh", "頂尖貿易有限公司"),
                      roles=list(spec.get("roles", ["admin", "signatory"])))
            company = Company(br_number=org.br_number, name_en=org.name_en, name_zh=org.name_zh)
            db.session.add(company)
            db.session.flush()
            db.session.add(Membership(person_id=person.id, company_id=company.id,
                                      roles=org.roles))
            org.id = company.id
            orgs.append(org)
        db.session.commit()
        return PersonInfo(person.id, person.subject, email, name, orgs)

    return factory


@dataclass
class RP:
    """A registered relying party as the RP knows itself."""

    id: int
    client_id: str
    secret: str | None
    auth_method: str
    redirect_uri: str
    redirect_uris: list[str]
    private_jwk: jwskate.Jwk | None = None
    id_token_alg: str = "RS256"

    def private_key_pem(self) -> bytes:
        assert self.private_jwk is not None
        pem: bytes = self.private_jwk.to_pem()
        return pem


_KEY_POOL: dict[str, list[jwskate.Jwk]] = {}


def pooled_key(alg: str, index: int) -> jwskate.Jwk:
    """The ``index``-th private key for ``alg``, generated once per process: RSA generation,
    and even rebuilding a jwskate RSA key from its JWK, is slow."""
    pool = _KEY_POOL.setdefault(alg, [])
    while len(pool) <= index:
        pool.append(jwskate.Jwk.generate(alg=alg, kid=f"{alg.lower()}-{len(pool)}"))
    return pool[index]


@pytest.fixture
def key_source() -> Callable[[str], jwskate.Jwk]:
    """Private keys for this test, each distinct from the others it got: ``key_source(alg)``."""
    used: dict[str, int] = {}

    def next_key(alg: str) -> jwskate.Jwk:
        used[alg] = used.get(alg, -1) + 1
        return pooled_key(alg, used[alg])

    return next_key


@pytest.fixture
def make_client(ctx: Live, key_source: Callable[[str], jwskate.Jwk]) -> Callable[..., RP]:
    """Register a client: ``make_client("private_key_jwt", key_alg="ES256", ...)``."""

    def factory(auth_method: str = "client_secret_basic", *, redirect_uris: list[str] | None = None,
                key_alg: str = "ES256", name: str = "Relying Party", **settings: Any) -> RP:
        from idp.clients.services import create_client

        redirect_uris = redirect_uris or [RP_REDIRECT]
        private_jwk = None
        if auth_method == "private_key_jwt" and "jwks" not in settings:
            private_jwk = key_source(key_alg)
            settings["jwks"] = {"keys": [private_jwk.public_jwk().to_dict()]}
        client, secret = create_client(name=name, redirect_uris=redirect_uris,
                                       auth_method=auth_method, actor="tests", **settings)
        return RP(id=client.id, client_id=client.client_id, secret=secret,
                  auth_method=auth_method, redirect_uri=redirect_uris[0],
                  redirect_uris=list(redirect_uris), private_jwk=private_jwk,
                  id_token_alg=client.id_token_alg)

    return factory


# --- the browser ------------------------------------------------------------------------------

@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]]
    buttons: list[tuple[str, str]]

    def value(self, name: str) -> str | None:
        return next((v for k, v in self.fields if k == name), None)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower(), [], []))
        elif self.forms and tag == "input" and a.get("name"):
            if a.get("type") == "radio" and "checked" not in a:
                return
            self.forms[-1].fields.append((a["name"], a.get("value", "")))
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1].buttons.append((a["name"], a.get("value", "")))


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


class Browser:
    """A person's browser: a cookie jar that follows only Corp ID's own redirects."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.http = requests.Session()
        self.sid: str | None = None
        self.session_id: int | None = None
        self.auth_time: int | None = None

    def sign_in(self, person: PersonInfo, *, acr: str = "phrh",
                amr: tuple[str, ...] = ("hwk", "mfa")) -> str:
        """Start a sign-in session for ``person`` and put its secret in the cookie jar."""
        from idp.authn.services import start_session
        from idp.orgs.models import Person

        with self.live.app.app_context():
            row = db.session.get(Person, person.id)
            assert row is not None
            session, secret = start_session(person=row, security_key_id=None, acr=acr,
                                            amr=list(amr))
            self.sid, self.session_id = session.sid, session.id
            self.auth_time = int(session.auth_time.timestamp())
            db.session.remove()
        self.http.cookies.set(LOGIN_COOKIE, secret, domain="127.0.0.1", path="/")
        return secret

    def is_ours(self, url: str) -> bool:
        return url.startswith(self.live.issuer + "/")

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 15)
        return self.http.request(method, url, allow_redirects=False, **kwargs)

    def follow(self, response: requests.Response) -> requests.Response:
        """Follow 3xx hops that stay on Corp ID; stop at the first that leaves it."""
        for _ in range(10):
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            target = urljoin(response.url, location)
            if not self.is_ours(target):
                return response
            response = self.request("GET", target)
        raise AssertionError("redirect loop")

    def go(self, url: str) -> requests.Response:
        return self.follow(self.request("GET", url))

    def submit(self, page: requests.Response, form: Form | None = None,
               **overrides: str) -> requests.Response:
        """Submit the page's (first) form with its hidden fields plus ``overrides``; the raw
        answer (not followed)."""
        form = form or parse_forms(page.text)[0]
        data = dict(form.fields)
        data.update(overrides)
        return self.request("POST", urljoin(page.url, form.action), data=data)

    def run(self, url: str, *, decision: str = "allow", company: int | None = None
            ) -> requests.Response:
        """Walk an authorization request to its answer to the RP: choose ``company`` (or the
        first) when asked, give ``decision`` when consent is asked."""
        response = self.go(url)
        for _ in range(4):
            if response.status_code != 200 or not self.is_ours(response.url):
                return response
            page = page_kind(response)
            if page == "company":
                overrides = {"company": str(company)} if company is not None else {}
                response = self.follow(self.submit(response, **overrides))
            elif page == "consent":
                response = self.follow(self.submit(response, decision=decision))
            else:
                return response
        return response


def page_kind(response: requests.Response) -> str:
    """What a Corp ID page answering an authorization request is."""
    if response.status_code in (301, 302, 303, 307, 308):
        return "redirect"
    if "text/html" not in response.headers.get("Content-Type", ""):
        return "other"
    if 'id="webauthn" data-mode="login"' in response.text:
        return "login"
    forms = parse_forms(response.text)
    for form in forms:
        if form.action.endswith("/authorize/consent"):
            return "consent"
        if form.action.endswith("/authorize/company"):
            return "company"
        if form.method == "post" and form.value("iss") is not None:
            return "form_post"
    return "page"


@dataclass
class Callback:
    """What reached the RP: where, how, and with which parameters."""

    target: str
    mode: str
    params: dict[str, str]
    raw: list[tuple[str, str]]

    def url(self) -> str:
        """The callback as a URL (form_post fields folded into the query, for client libraries
        that take a URL)."""
        return f"{self.target}?{urlencode(self.raw)}"


def callback(response: requests.Response) -> Callback:
    """Parse the answer to the RP: a 303 to the redirect URI or a form_post page."""
    if response.status_code == 303:
        location = response.headers["Location"]
        parts = urlsplit(location)
        raw = parse_qsl(parts.query, keep_blank_values=True)
        target = location.split("?", 1)[0]
        return Callback(target, "query", dict(raw), raw)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    forms = parse_forms(response.text)
    assert len(forms) == 1, response.text[:500]
    form = forms[0]
    assert form.method == "post"
    return Callback(form.action, "form_post", dict(form.fields), list(form.fields))


@pytest.fixture
def browser(live: Live) -> Callable[[], Browser]:
    """Make a fresh browser (no cookies)."""
    made: list[Browser] = []

    def factory() -> Browser:
        b = Browser(live)
        made.append(b)
        return b

    yield factory  # type: ignore[misc]
    for b in made:
        b.http.close()


# --- protocol helpers -------------------------------------------------------------------------

def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def authorize_url(live: Live, rp: RP, *, scope: str = "openid", challenge: str | None = None,
                  state: str | None = "st-123", nonce: str | None = "n-456",
                  redirect_uri: str | None = None, **extra: str) -> str:
    """An authorization request URL built by hand (for negative cases)."""
    params: dict[str, str] = {"response_type": "code", "client_id": rp.client_id,
                              "redirect_uri": redirect_uri or rp.redirect_uri, "scope": scope}
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method="S256")
    if state is not None:
        params["state"] = state
    if nonce is not None:
        params["nonce"] = nonce
    params.update(extra)
    return live.url("/authorize") + "?" + urlencode(params)


def oauth_session(live: Live, rp: RP, *, scope: str = "openid") -> OAuth2Session:
    """Authlib's requests client for a secret or public client."""
    return OAuth2Session(rp.client_id, rp.secret, token_endpoint_auth_method=rp.auth_method,
                         revocation_endpoint_auth_method=rp.auth_method, scope=scope,
                         redirect_uri=rp.redirect_uri, code_challenge_method="S256")


def client_auth(live: Live, rp: RP) -> tuple[dict[str, str], tuple[str, str] | None]:
    """Form fields and basic credentials that authenticate ``rp`` by its registered method."""
    if rp.auth_method == "client_secret_basic":
        assert rp.secret is not None
        return {}, (rp.client_id, rp.secret)
    if rp.auth_method == "client_secret_post":
        assert rp.secret is not None
        return {"client_id": rp.client_id, "client_secret": rp.secret}, None
    if rp.auth_method == "none":
        return {"client_id": rp.client_id}, None
    # The issuer: the one audience FAPI 2.0 clients may use (basic ones may also name /token).
    return {"client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion_for(rp, aud=live.issuer)}, None


def assertion_for(rp: RP, *, aud: str, **claims: Any) -> str:
    """A valid RFC 7523 client assertion for ``rp``; ``claims`` override (None removes)."""
    import time

    assert rp.private_jwk is not None
    now = int(time.time())
    body = {"iss": rp.client_id, "sub": rp.client_id, "aud": aud, "iat": now,
            "exp": now + 60, "jti": secrets.token_urlsafe(16)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return str(jwskate.Jwt.sign(body, rp.private_jwk, alg=rp.private_jwk.alg))


def post(live: Live, path: str, rp: RP | None = None, data: dict[str, Any] | None = None,
         **kwargs: Any) -> requests.Response:
    """POST a form to ``path``, authenticated as ``rp`` (if given) by its registered method."""
    body = dict(data or {})
    if rp is not None:
        fields, basic = client_auth(live, rp)
        body.update(fields)
        if basic is not None:
            kwargs.setdefault("auth", basic)
    timeout = kwargs.pop("timeout", 15)
    return requests.post(live.url(path), data=body, allow_redirects=False, timeout=timeout,
                         **kwargs)


def introspect(live: Live, rp: RP, token: str, **extra: str) -> dict[str, Any]:
    response = post(live, "/introspect", rp, {"token": token, **extra})
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    result: dict[str, Any] = response.json()
    return result


def verify_jwt(live: Live, token: str, *, alg: str, audience: str | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a JWT Corp ID signed, independently (joserfc), against the JWKS advertised in
    discovery. Returns ``(header, claims)``; checks iss, exp, iat and (if given) aud."""
    import time

    keyset = KeySet.import_key_set(live.jwks())
    with warnings.catch_warnings():
        # joserfc flags the "EdDSA" name as superseded by RFC 9864; it is what OIDC uses.
        warnings.filterwarnings("ignore", category=SecurityWarning, message="EdDSA")
        token_obj = jose_jwt.decode(token, keyset, algorithms=[alg])
    header, claims = dict(token_obj.header), dict(token_obj.claims)
    assert header["alg"] == alg
    assert claims["iss"] == live.issuer
    now = time.time()
    assert claims["iat"] <= now + 5
    assert claims["exp"] > now
    if audience is not None:
        aud = claims["aud"]
        assert aud == audience or (isinstance(aud, list) and audience in aud)
    return header, claims


def half_hash(value: str, alg: str) -> str:
    """at_hash / c_hash (OIDC Core 3.1.3.6), computed here rather than by Corp ID's helper."""
    func = hashlib.sha512 if alg == "EdDSA" else hashlib.sha256
    digest = func(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_json_error(response: requests.Response, status: int, error: str | None = None, *,
                      described: bool = True) -> dict[str, Any]:
    """An RFC-shaped JSON error: status, error, error_description (unless ``described`` is
    False: see test_bad_input's refresh-grant xfail), no-store."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers.get("Cache-Control") == "no-store"
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str)
    assert body["error"]
    if described:
        assert isinstance(body.get("error_description"), str)
    if error is not None:
        assert body["error"] == error, body
    return body


@dataclass
class CodeResult:
    """A code flow run to the callback, with what the RP needs to redeem it."""

    rp: RP
    cb: Callback
    verifier: str
    nonce: str | None

    @property
    def code(self) -> str:
        return self.cb.params["code"]


@pytest.fixture
def signed_in(make_person: Callable[..., PersonInfo], browser: Callable[[], Browser]
              ) -> Callable[..., tuple[PersonInfo, Browser]]:
    """A person with one company, signed in in a fresh browser."""

    def factory(**person: Any) -> tuple[PersonInfo, Browser]:
        who = make_person(**person)
        b = browser()
        b.sign_in(who)
        return who, b

    return factory


@pytest.fixture
def get_code(live: Live) -> Callable[..., CodeResult]:
    """Run the code flow in ``browser`` (consenting) up to the RP's callback."""

    def run(b: Browser, rp: RP, *, scope: str = "openid", **extra: str) -> CodeResult:
        verifier, challenge = pkce_pair()
        nonce = extra.pop("nonce", "n-" + secrets.token_hex(6))
        url = authorize_url(live, rp, scope=scope, challenge=challenge, nonce=nonce, **extra)
        cb = callback(b.run(url))
        assert "code" in cb.params, cb.params
        return CodeResult(rp, cb, verifier, nonce)

    return run


def redeem(live: Live, result: CodeResult, *, rp: RP | None = None, verifier: str | None = None,
           redirect_uri: str | None = None) -> requests.Response:
    """Redeem a code by hand (for negative cases)."""
    rp = rp or result.rp
    return post(live, "/token", rp, {
        "grant_type": "authorization_code", "code": result.code,
        "redirect_uri": redirect_uri or result.rp.redirect_uri,
        "code_verifier": verifier or result.verifier})


def userinfo(live: Live, access_token: str, method: str = "GET") -> requests.Response:
    """Call userinfo with the token as a Bearer header (RFC 6750 §2.1)."""
    return requests.request(method, live.url("/userinfo"), timeout=10,
                            headers={"Authorization": f"Bearer {access_token}"})


# --- hardware-key sign-in through the real WebAuthn ceremonies ---------------------------------

@dataclass
class KeyHolder:
    """A person enrolled through an invitation link with a software security key."""

    person: PersonInfo
    authenticator: Any  # tests.support.authenticator.SoftAuthenticator
    browser: Browser


@pytest.fixture
def invite(ctx: Live) -> Callable[..., str]:
    """Create an invitation: ``invite(company=None, email=..., roles=[...])`` -> link URL (a new
    company "Acme Trading Limited" unless ``company`` (a BR number) is given)."""
    from idp.orgs import services as orgs

    def factory(*, company: str | None = None, email: str = "tai.man@acme.example",
                roles: list[str] | None = None, ttl: int | None = None) -> str:
        if company is None:
            br = str(next(_br_counter))
            row = orgs.create_company(br_number=br, name_en="Acme Trading Limited",
                                      name_zh="頂尖貿易有限公司", actor="tests")
        else:
            row = orgs.get_company_by_br(company)
        _, token = orgs.create_invitation(company=row, email=email,
                                          roles=roles or ["admin", "signatory"],
                                          invited_by="operator:tests", ttl=ttl)
        return orgs.invite_url(token)

    return factory


@pytest.fixture
def soft_key(live: Live) -> Callable[..., Any]:
    """A software security key for the live server's origin: ``soft_key(alg=-7)``."""
    from tests.support.authenticator import SoftAuthenticator

    def factory(**kwargs: Any) -> SoftAuthenticator:
        return SoftAuthenticator(origin=live.issuer, **kwargs)

    return factory


@pytest.fixture
def enrolled(ctx: Live, invite: Callable[..., str], soft_key: Callable[..., Any],
             browser: Callable[[], Browser]) -> Callable[..., KeyHolder]:
    """Enrol a person through the REAL ceremony (invitation link, options, software key,
    verify) in a fresh browser; the browser ends signed in."""
    from sqlalchemy import select

    from idp.orgs.models import Membership, Person
    from tests.support import ceremony

    def factory(*, name: str = "Chan Tai Man", email: str = "tai.man@acme.example",
                roles: list[str] | None = None, authenticator: Any = None,
                **create_kwargs: Any) -> KeyHolder:
        link = invite(email=email, roles=roles)
        key = authenticator or soft_key()
        b = browser()
        page = b.go(link)
        assert page.status_code == 200, page.text[:300]
        answer = ceremony.enrol(b.http, page, key, display_name=name, **create_kwargs)
        assert answer.status_code == 200, answer.text[:300]
        db.session.rollback()
        row = db.session.scalars(
            select(Person).where(Person.email == email).order_by(Person.id.desc())).first()
        assert row is not None
        orgs = [Org(m.company.br_number, m.company.name_en, m.company.name_zh, list(m.roles),
                    m.company_id)
                for m in db.session.scalars(select(Membership)
                                            .where(Membership.person_id == row.id))]
        info = PersonInfo(row.id, row.subject, row.email, row.display_name, orgs)
        return KeyHolder(info, key, b)

    return factory


def key_sign_in(b: Browser, url: str, authenticator: Any, **get_kwargs: Any
                ) -> requests.Response:
    """Start an authorization at ``url``, sign in on the login page with ``authenticator``
    through the real ceremony, and follow on (company, consent pages are returned as is)."""
    from tests.support import ceremony

    page = b.go(url)
    assert page.status_code == 200, (page.status_code, page.url)
    assert page_kind(page) == "login", page.url
    answer = ceremony.login(b.http, page, authenticator, **get_kwargs)
    assert answer.status_code == 200, answer.text[:300]
    return b.go(urljoin(page.url, answer.json()["next"]))


def key_sign_in_to_client(b: Browser, url: str, authenticator: Any) -> requests.Response:
    """``key_sign_in`` when the person was asked nothing more: the sign-in answer sends the
    browser straight back to the client; returned as the 303 that carries it."""
    from tests.support import ceremony

    page = b.go(url)
    assert page_kind(page) == "login", page.url
    answer = ceremony.login(b.http, page, authenticator)
    assert answer.status_code == 200, answer.text[:300]
    target = answer.json()["next"]
    assert not target.startswith("/"), target  # not another Corp ID page
    return as_redirect(target)


def as_redirect(location: str) -> requests.Response:
    """A sign-in answer's ``next`` as the 303 to the client it stands for."""
    back = requests.Response()
    back.status_code = 303
    back.headers["Location"] = location
    return back


def stored_challenges() -> list[dict[str, Any]]:
    """The WebAuthn challenges as stored, in Redis when it is configured, else in the
    database: what each is found by (``key``), its ``data`` and its lifetime in seconds."""
    import json

    from flask import current_app
    from sqlalchemy import select

    from idp.authn.models import WebAuthnChallenge

    client = current_app.extensions.get("idp.redis")
    if client is not None:
        keys = sorted(client.scan_iter("idp:webauthn-challenge:*"))
        return [{"key": k.decode(), "data": json.loads(client.get(k)), "ttl": client.ttl(k)}
                for k in keys]
    db.session.rollback()
    return [{"key": row.challenge_hash, "data": row.data, "ceremony": row.ceremony,
             "ttl": (row.expires_at - row.created_at).total_seconds()}
            for row in db.session.scalars(select(WebAuthnChallenge))]


def expire_challenges() -> None:
    """Let every stored WebAuthn challenge expire now."""
    import datetime as dt

    from flask import current_app
    from sqlalchemy import update

    from idp.authn.models import WebAuthnChallenge
    from idp.db import utcnow

    client = current_app.extensions.get("idp.redis")
    if client is not None:
        for key in client.scan_iter("idp:webauthn-challenge:*"):
            client.delete(key)  # what Redis does at expiry
        return
    db.session.execute(update(WebAuthnChallenge).values(
        expires_at=utcnow() - dt.timedelta(seconds=1)))
    db.session.commit()
