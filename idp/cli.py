"""The ``idp`` command: operator tasks, each a thin wrapper around a service.

Commands that print data take ``--json`` for scripts. Our typed errors (and database or
configuration errors) end the command with a one-line message on stderr and exit status 1,
never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
from alembic.util.exc import CommandError as AlembicCommandError
from flask import Flask
from flask.cli import ScriptInfo
from sqlalchemy.exc import SQLAlchemyError

from idp.clients.models import AuthMethod, ClientProfile, SubjectType
from idp.clients.services import GRANT_TYPES, ID_TOKEN_ALGS
from idp.errors import IdpError
from idp.keys.services import SUPPORTED_ALGS as KEY_ALGS
from idp.orgs.models import Role

F = TypeVar("F", bound=Callable[..., Any])

AUTH_METHODS = tuple(m.value for m in AuthMethod)
ACTOR = "operator:cli"


class IdpGroup(click.Group):
    """A group that turns our errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except IdpError as exc:
            raise click.ClickException(exc.message) from None
        except AlembicCommandError as exc:
            raise click.ClickException(f"migration error: {exc}") from None
        except SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise click.ClickException(
                f"database error ({type(exc).__name__}): {detail[0] if detail else ''}"
            ) from None


def load_app(**overrides: Any) -> Flask:
    """The app to act on: the one a test runner passes in, else ``create_app(overrides)``."""
    ctx = click.get_current_context(silent=True)
    info = ctx.find_object(ScriptInfo) if ctx is not None else None
    if info is not None and info.create_app is not None:
        return info.load_app()
    from idp import create_app

    try:
        return create_app(overrides or None)
    except ValueError as exc:  # settings refused by idp.config.validate_config
        raise click.ClickException(f"configuration: {exc}") from None


def with_app(func: F) -> F:
    """Run the command inside the app's application context."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with load_app().app_context():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit(data: Any, as_json: bool, lines: list[str] | None = None) -> None:
    """Print ``data`` as JSON for scripts, or ``lines`` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for line in lines or []:
            click.echo(line)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(cls=IdpGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Corp ID: the OpenID Connect provider for Hong Kong companies."""


def main() -> None:
    """Entry point of the ``idp`` script."""
    cli.main(prog_name="idp")


# --- init, serve, demo ------------------------------------------------------------------------


def _initialise() -> dict[str, Any]:
    from idp import schema
    from idp.keys import services as keys

    before, after = schema.upgrade()
    created = keys.ensure_keys(actor=ACTOR)
    return {"database": {"from": before, "to": after}, "keys_created": created}


def _init_lines(result: dict[str, Any]) -> list[str]:
    database = result["database"]
    if database["from"] == database["to"]:
        lines = [f"database: already at migration {database['to']}"]
    else:
        lines = [f"database: migrated from {database['from'] or 'empty'} to {database['to']}"]
    if result["keys_created"]:
        lines += [f"keys: created {kid}" for kid in result["keys_created"]]
    else:
        lines.append("keys: every algorithm has a signing key")
    return lines


@cli.command()
@json_option
@with_app
def init(as_json: bool) -> None:
    """Create or upgrade the database (Alembic) and make sure signing keys exist."""
    result = _initialise()
    emit(result, as_json, _init_lines(result))


def _check_ready() -> None:
    from idp import schema
    from idp.extensions import db
    from idp.keys import services as keys

    at_head, current, head = schema.is_at_head()
    if not at_head:
        raise click.ClickException(
            f"the database is at migration {current or 'none'}, not at {head}: "
            "run `idp init` first (serve never migrates)"
        )
    active = {k.alg for k in keys.list_keys() if k.state == "active"}
    missing = [alg for alg in KEY_ALGS if alg not in active]
    if missing:
        raise click.ClickException(
            f"no active signing key for {', '.join(missing)}: run `idp init` or `idp keys rotate`"
        )
    db.session.remove()
    for engine in db.engines.values():  # workers open their own connections after the fork
        engine.dispose()


def _run_gunicorn(*, host: str, port: int, workers: int, threads: int, timeout: int) -> None:
    from gunicorn.app.base import BaseApplication

    bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    options = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else "sync",
        "timeout": timeout,
        "proc_name": "corp-id",
    }

    class CorpIdServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24
                # One shared per-user socket path would collide between instances.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Flask:
            from idp import create_app

            return create_app()  # in each worker: nothing shared across the fork

    CorpIdServer().run()


def _run_granian(*, host: str, port: int, workers: int, threads: int, timeout: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "idp:create_app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        factory=True,
        workers=workers,
        blocking_threads=threads,
    ).serve()


SERVERS = {"gunicorn": _run_gunicorn, "granian": _run_granian}


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    type=click.IntRange(1, 512),
    default=None,
    help="Worker processes [default: 2 x CPUs + 1].",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Threads per worker (granian blocking threads; gunicorn: more than 1 is gthread).",
)
@click.option(
    "--timeout",
    type=click.IntRange(1, 3600),
    default=30,
    show_default=True,
    help="Seconds before a silent worker is restarted (gunicorn).",
)
@click.option(
    "--server",
    type=click.Choice(sorted(SERVERS)),
    default="granian",
    show_default=True,
    help="WSGI server: granian (default; keeps connections alive at a fraction of the cost, "
    "see bench/README.md) or gunicorn.",
)
def serve(
    host: str, port: int, workers: int | None, threads: int, timeout: int, server: str
) -> None:
    """Run the production server. Refuses to start unless the database is migrated."""
    with load_app().app_context():
        _check_ready()
    workers = workers or 2 * (os.cpu_count() or 1) + 1
    click.echo(f"serving Corp ID with {server} on {host}:{port} ({workers} workers)", err=True)
    SERVERS[server](host=host, port=port, workers=workers, threads=threads, timeout=timeout)


def _run_dev_server(app: Flask, host: str, port: int) -> None:
    app.run(host=host, port=port, debug=False, use_reloader=False, threaded=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@json_option
def demo(host: str, port: int, as_json: bool) -> None:
    """Initialise, seed a demo company, the demo relying party and the demo bank, and run the
    development server."""
    from idp.demo import seed_demo

    overrides: dict[str, Any] = {"DEMO": True}
    if not os.environ.get("IDP_ISSUER"):
        # WebAuthn needs a domain as relying-party ID: localhost works, 127.0.0.1 does not.
        overrides["ISSUER"] = f"http://localhost:{port}"
    app = load_app(**overrides)
    with app.app_context():
        result = _initialise()
        seed = seed_demo()
    issuer = app.config["IDP"]["ISSUER"]
    lines = [
        *_init_lines(result),
        f"issuer: {issuer}",
        f"company: {seed.br_number} {'(created)' if seed.company_created else '(exists)'}",
    ]
    if seed.invite_url:
        lines.append(f"admin invitation (single use, open it first): {seed.invite_url}")
    else:
        lines.append("admin invitation: the company already has an admin")
    lines += [
        f"demo client (public, PKCE): {seed.client_id}",
        f"demo client redirect URIs: {' '.join(seed.redirect_uris)}",
        f"demo relying party (Login with Corp ID): {seed.demo_rp_url}",
        f"demo bank client (fapi2, private_key_jwt + DPoP): {seed.bank_client_id}",
        f"demo bank (open a business account, KYC with Corp ID): {seed.demo_bank_url}",
    ]
    emit({**result, "issuer": issuer, **seed.as_dict()}, as_json, lines)
    _run_dev_server(app, host, port)


# --- clients ----------------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def client() -> None:
    """Register and manage relying parties."""


def _client_options(*, create: bool) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        options = [
            click.option("--name", required=create, help="Shown to people on consent."),
            click.option(
                "--redirect-uri",
                "redirect_uris",
                multiple=True,
                help="Exact redirect URI (repeatable; replaces the list on update).",
            ),
            click.option("--auth-method", type=click.Choice(AUTH_METHODS), required=create),
            click.option(
                "--jwks-file",
                type=click.Path(exists=True, dir_okay=False),
                help="JSON file with the client's public JWK Set (private_key_jwt).",
            ),
            click.option("--jwks-uri", help="https URL of the client's JWK Set ('' clears)."),
            click.option("--scope", "scopes", multiple=True, help="Allowed scope (repeatable)."),
            click.option(
                "--grant-type",
                "grant_types",
                multiple=True,
                type=click.Choice(GRANT_TYPES),
            ),
            click.option("--id-token-alg", type=click.Choice(ID_TOKEN_ALGS)),
            click.option(
                "--subject-type",
                type=click.Choice([t.value for t in SubjectType]),
                default=None,
                help="public, or pairwise (the default for --profile fapi2).",
            ),
            click.option("--post-logout-redirect-uri", "post_logout_redirect_uris", multiple=True),
            click.option("--backchannel-logout-uri", help="Back-channel logout URL ('' clears)."),
            click.option(
                "--profile",
                type=click.Choice([p.value for p in ClientProfile]),
                default="basic" if create else None,
            ),
            click.option(
                "--authorised-members-only/--any-member",
                "members_authorised_only",
                default=False if create else None,
                help="Only members holding an e-service authorisation for it may sign in.",
            ),
            json_option,
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _read_jwks(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read a JWK Set from {path}: {exc}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f"{path} does not hold a JWK Set object")
    return data


def _client_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The options the operator gave, named as the service names them."""
    settings: dict[str, Any] = {}
    for key in ("name", "auth_method", "id_token_alg", "subject_type", "profile"):
        if options.get(key) is not None:
            settings[key] = options[key]
    for key in ("redirect_uris", "scopes", "grant_types", "post_logout_redirect_uris"):
        if options.get(key):
            settings[key] = list(options[key])
    if options.get("backchannel_logout_uri") is not None:
        settings["backchannel_logout_uri"] = options["backchannel_logout_uri"] or None
    if options.get("jwks_file"):
        settings["jwks"] = _read_jwks(options["jwks_file"])
    if options.get("jwks_uri") is not None:
        settings["jwks_uri"] = options["jwks_uri"] or None
    if options.get("members_authorised_only") is not None:
        settings["members_authorised_only"] = options["members_authorised_only"]
    return settings


def _client_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in data.items():
        if isinstance(value, list):
            value = " ".join(value) or "-"
        elif isinstance(value, dict):
            value = json.dumps(value)
        lines.append(f"{key + ':':<28}{'-' if value is None else value}")
    return lines


@client.command("create")
@_client_options(create=True)
@with_app
def client_create(as_json: bool, **options: Any) -> None:
    """Register a relying party; prints its client_id and (once) its secret."""
    from idp.clients import services as clients

    settings = {"redirect_uris": [], **_client_settings(options)}
    created, secret = clients.create_client(**settings, actor=ACTOR)
    lines = [f"client_id:     {created.client_id}"]
    if secret:
        lines.append(f"client_secret: {secret}")
        lines.append("(the secret is shown once: store it now; only its hash is kept)")
    shown: dict[str, Any] = {"client_id": created.client_id, "client_secret": secret}
    if created.profile.value == "fapi2":
        # RFC 9126 §6: the bank must push its authorization requests.
        shown["require_pushed_authorization_requests"] = True
        lines.append("require_pushed_authorization_requests: true")
    emit(shown, as_json, lines)


@client.command("list")
@json_option
@with_app
def client_list(as_json: bool) -> None:
    """List relying parties."""
    from idp.clients import services as clients

    rows = [clients.client_as_dict(c) for c in clients.list_clients()]
    lines = [
        f"{r['client_id']:<24} {r['status']:<9} {r['auth_method']:<20} {r['name']}" for r in rows
    ] or ["no clients"]
    emit(rows, as_json, lines)


@client.command("show")
@click.argument("client_id")
@json_option
@with_app
def client_show(client_id: str, as_json: bool) -> None:
    """Show one relying party's registration."""
    from idp.clients import services as clients

    data = clients.client_as_dict(clients.get_client(client_id))
    emit(data, as_json, _client_lines(data))


@client.command("update")
@click.argument("client_id")
@_client_options(create=False)
@with_app
def client_update(client_id: str, as_json: bool, **options: Any) -> None:
    """Change a relying party's settings (only the options given)."""
    from idp.clients import services as clients

    changes = _client_settings(options)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    data = clients.client_as_dict(clients.update_client(client_id, actor=ACTOR, **changes))
    lines = _client_lines(data)
    if (
        data["auth_method"] in ("client_secret_basic", "client_secret_post")
        and not data["has_secret"]
    ):
        lines.append(
            f"note: the client has no secret yet: run `idp client rotate-secret {client_id}`"
        )
    emit(data, as_json, lines)


@client.command("rotate-secret")
@click.argument("client_id")
@json_option
@with_app
def client_rotate_secret(client_id: str, as_json: bool) -> None:
    """Issue a new client secret; the old one stops working at once."""
    from idp.clients import services as clients

    secret = clients.rotate_secret(client_id, actor=ACTOR)
    emit(
        {"client_id": client_id, "client_secret": secret},
        as_json,
        [
            f"client_secret: {secret}",
            "(the secret is shown once: store it now; the old secret no longer works)",
        ],
    )


@client.command("disable")
@click.argument("client_id")
@json_option
@with_app
def client_disable(client_id: str, as_json: bool) -> None:
    """Disable a relying party and revoke every token issued to it."""
    from idp.clients import services as clients

    data = clients.client_as_dict(clients.disable_client(client_id, actor=ACTOR))
    emit(data, as_json, [f"disabled {client_id}; its grants and tokens are revoked"])


# --- organisations ----------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def org() -> None:
    """Register companies and invite their people."""


@org.command("create")
@click.option("--br-number", required=True, help="Business Registration number (8 digits).")
@click.option("--name", required=True, help="Registered English name.")
@click.option("--admin-email", required=True, help="Address of the first administrator.")
@json_option
@with_app
def org_create(br_number: str, name: str, admin_email: str, as_json: bool) -> None:
    """Register a company and print its first administrator's invitation link."""
    from idp.orgs import services as orgs

    company, invitation, token = orgs.create_org_with_admin(
        br_number=br_number, name=name, admin_email=admin_email, actor=ACTOR
    )
    url = orgs.invite_url(token)
    emit(
        {"org_id": company.id, "br_number": company.br_number, "invite_url": url},
        as_json,
        [
            f"company: {company.br_number} {company.name_en}",
            f"admin invitation for {invitation.email} (single use, expires "
            f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):",
            url,
        ],
    )


@org.command("invite")
@click.argument("br_number")
@click.option("--email", required=True)
@click.option(
    "--role",
    "roles",
    multiple=True,
    default=("member",),
    show_default=True,
    type=click.Choice([r.value for r in Role]),
)
@json_option
@with_app
def org_invite(br_number: str, email: str, roles: tuple[str, ...], as_json: bool) -> None:
    """Invite a person to a company; prints the single-use link."""
    from idp.orgs import services as orgs

    company = orgs.get_company_by_br(br_number)
    invitation, token = orgs.create_invitation(
        company=company, email=email, roles=list(roles), invited_by=ACTOR
    )
    url = orgs.invite_url(token)
    emit(
        {
            "org_id": company.id,
            "br_number": company.br_number,
            "invite_url": url,
            "expires_at": invitation.expires_at.isoformat(),
        },
        as_json,
        [url],
    )


# --- operators --------------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def operator() -> None:
    """Operators: the people who run Corp ID from the operator console."""


@operator.command("create")
@click.option("--email", required=True, help="Address of the new operator.")
@json_option
@with_app
def operator_create(email: str, as_json: bool) -> None:
    """Invite a new operator; prints the single-use link that enrols their security key."""
    from idp.admin import services as admin

    invitation, token = admin.create_operator_invitation(email=email, created_by=ACTOR)
    url = admin.operator_enrol_url(token)
    emit(
        {
            "email": invitation.email,
            "enrol_url": url,
            "expires_at": invitation.expires_at.isoformat(),
        },
        as_json,
        [
            f"operator invitation for {invitation.email} (single use, expires "
            f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):",
            url,
        ],
    )


# --- signing keys -----------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def keys() -> None:
    """Signing keys: list, rotate, retire."""


@keys.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include removed keys.")
@json_option
@with_app
def keys_list(include_removed: bool, as_json: bool) -> None:
    """List signing keys and their states (next, active, retired, removed)."""
    from idp.keys import services as key_service

    rows = [k.as_dict() for k in key_service.list_keys(include_removed=include_removed)]
    lines = [
        f"{r['kid']:<32} {r['alg']:<6} {r['state']:<8} from {r['activates_at']}"
        + (f" retired {r['retired_at']}" if r["retired_at"] else "")
        for r in rows
    ]
    emit(rows, as_json, lines or ["no keys: run `idp init`"])


@keys.command("rotate")
@click.option("--alg", type=click.Choice(KEY_ALGS), help="Only this algorithm [default: all].")
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Seconds the new key is published before it signs [default: IDP_KEY_ROTATION_OVERLAP].",
)
@json_option
@with_app
def keys_rotate(alg: str | None, overlap: int | None, as_json: bool) -> None:
    """Publish a new key now; it signs after the overlap, when the old one retires."""
    from idp.keys import services as key_service

    created = key_service.rotate(alg, overlap=overlap, actor=ACTOR)
    rows = [
        {"kid": k.kid, "alg": k.alg, "activates_at": k.activates_at.isoformat()} for k in created
    ]
    emit(
        rows,
        as_json,
        [f"{r['kid']} ({r['alg']}) published; signs from {r['activates_at']}" for r in rows],
    )


@keys.command("retire")
@click.argument("kid")
@json_option
@with_app
def keys_retire(kid: str, as_json: bool) -> None:
    """Stop signing with a key now; it stays published until its tokens expire."""
    from idp.keys import services as key_service

    key = key_service.retire(kid, actor=ACTOR)
    data = {
        "kid": key.kid,
        "alg": key.alg,
        "retired_at": key.retired_at.isoformat() if key.retired_at else None,
    }
    emit(data, as_json, [f"retired {key.kid}; published until its tokens have expired"])


# --- audit ------------------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def audit() -> None:
    """The tamper-evident audit log."""


def _seal_all() -> int:
    """Seal until nothing committed is left (or another sealer has the head); how many."""
    from idp.audit import services as audit_service

    total = 0
    while True:
        sealed = audit_service.seal_pending()
        total += sealed
        if sealed < audit_service.SEAL_LIMIT:
            return total


def _backlog_line(unsealed: int, age: float | None) -> str:
    if not unsealed:
        return "no events waiting to be sealed"
    return f"{unsealed} events not sealed yet (oldest {age or 0:.1f} s old)"


@audit.command("seal")
@click.option("--follow", is_flag=True, help="Keep sealing, every AUDIT_SEAL_INTERVAL seconds.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Seconds between rounds with --follow (default AUDIT_SEAL_INTERVAL, or 1).",
)
@json_option
@with_app
def audit_seal(follow: bool, interval: float | None, as_json: bool) -> None:
    """Link committed audit events into the hash chain (the sealer threads of the workers do
    it too; this is for operators, cron, or AUDIT_SEAL_INTERVAL=0)."""
    import time

    from flask import current_app

    from idp.audit import services as audit_service
    from idp.extensions import db

    if interval is None:
        interval = float(current_app.config["IDP"]["AUDIT_SEAL_INTERVAL"]) or 1.0
    while True:
        sealed = _seal_all()
        pending = audit_service.backlog()
        db.session.rollback()  # end the read, so the next round sees new commits
        if not follow or sealed:
            age = pending.age_seconds()
            data = {"sealed": sealed, "unsealed": pending.unsealed, "oldest_unsealed_age": age}
            emit(data, as_json, [f"sealed {sealed} events; {_backlog_line(pending.unsealed, age)}"])
        if not follow:
            return
        time.sleep(interval)


@audit.command("verify")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Events read per query.",
)
@click.option("--no-seal", is_flag=True, help="Check the chain as it is; do not seal first.")
@json_option
@with_app
def audit_verify(batch: int, no_seal: bool, as_json: bool) -> None:
    """Seal the committed events (unless --no-seal), then check the audit log's hash chain
    from the first event to the head; name the first broken link and say how many events are
    not sealed yet. Exit status 1 when the chain is broken."""
    from idp.audit import services as audit_service

    if not no_seal:
        _seal_all()
    report = audit_service.verify_chain(batch=batch)
    waiting = _backlog_line(report.unsealed, report.oldest_unsealed_age)
    if report.ok:
        lines = [
            f"ok: {report.checked} events, chain head {report.last_seq} {report.last_hash}",
            waiting,
        ]
    else:
        lines = [
            f"BROKEN at event {report.first_broken_seq}: {report.reason}",
            f"{report.checked} events good before it (last good: {report.last_seq})",
            waiting,
        ]
    emit(report.as_dict(), as_json, lines)
    if not report.ok:
        click.get_current_context().exit(1)


# --- logout -----------------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def logout() -> None:
    """Back-channel logout notices to relying parties."""


@logout.command("deliver")
@click.option(
    "--limit", type=click.IntRange(min=1), default=500, show_default=True, help="At most this many."
)
@json_option
@with_app
def logout_deliver(limit: int, as_json: bool) -> None:
    """Send the back-channel logouts that are due (first tries that did not happen, retries).

    Run it from cron every minute; several machines may run it at once."""
    from idp.oauth import backchannel

    attempts = backchannel.deliver_due(limit=limit)
    rows = [{"client_id": a.client_id, "outcome": a.outcome, "error": a.error} for a in attempts]
    lines = [
        f"{r['client_id']}: {r['outcome']}" + (f" ({r['error']})" if r["error"] else "")
        for r in rows
    ]
    emit(rows, as_json, lines or ["nothing due"])


# --- housekeeping -----------------------------------------------------------------------------


@cli.command()
@json_option
@with_app
def purge(as_json: bool) -> None:
    """Delete protocol state nobody can use any more (expired codes, pending authorizations,
    challenges, settled back-channel logouts...). Run it from cron, e.g. hourly."""
    from idp.oauth import tokens

    counts = tokens.purge_expired()
    emit(counts, as_json, [f"{name}: {count} deleted" for name, count in counts.items()])


# --- company register -------------------------------------------------------------------------


@cli.group(cls=IdpGroup)
def companies() -> None:
    """The company register: import it from CSV, search it."""


@companies.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--resume", is_flag=True, help="Continue the last unfinished run of this file.")
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write rejected rows [default: FILE.rejects.csv beside FILE].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 20_000),
    default=2000,
    show_default=True,
    help="Records per transaction.",
)
@json_option
@with_app
def companies_import(
    file: str, resume: bool, rejects_path: str | None, batch_size: int, as_json: bool
) -> None:
    """Load the company register from FILE.csv: upsert by BR number, in batches.

    Columns (header row, any order): br_number, name_en, name_zh, status, address,
    incorporated_on, company_type, officers, source, as_of. Bad rows are reported in the rejects
    file and never stop the import; a failed batch is rolled back whole and --resume continues.
    """
    import sys

    from idp.orgs import register

    def run(progress: Callable[[int], None] | None) -> register.ImportResult:
        return register.import_register(
            file,
            actor=ACTOR,
            rejects_path=rejects_path,
            resume=resume,
            batch_size=batch_size,
            progress=progress,
        )

    if as_json:
        result = run(None)
    else:
        with click.progressbar(
            length=os.path.getsize(file), label="importing", file=sys.stderr, show_pos=False
        ) as bar:
            result = run(bar.update)
    data = result.as_dict()
    lines = [
        f"records: {result.records} (inserted {result.inserted}, updated {result.updated}, "
        f"rejected {result.rejected}) in {result.seconds:.1f} s",
        f"status changes: {result.status_changes} "
        f"({result.companies_ended} companies deregistered or dissolved)",
        f"rejected rows: {result.rejects_file}",
    ]
    if result.resumed_from_record:
        lines.insert(0, f"resumed after record {result.resumed_from_record}")
    if result.ignored_columns:
        lines.append(f"ignored columns: {', '.join(result.ignored_columns)}")
    emit(data, as_json, lines)


@companies.command("search")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", help="BR number of the last company of the previous page.")
@json_option
@with_app
def companies_search(query: str, limit: int, after: str | None, as_json: bool) -> None:
    """Find companies by BR number (8 digits) or by English or Chinese name prefix."""
    from idp.orgs import register

    found = register.search_companies(query, limit=limit, after=after)
    rows = [
        {
            "br_number": c.br_number,
            "name_en": c.name_en,
            "name_zh": c.name_zh,
            "status": c.status.value,
        }
        for c in found
    ]
    lines = [
        f"{r['br_number']}  {r['status']:<12} {r['name_en']}"
        + (f"  {r['name_zh']}" if r["name_zh"] else "")
        for r in rows
    ]
    emit(rows, as_json, lines or ["no companies found"])
