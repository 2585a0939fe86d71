"""The protocol engine: Authlib's server, our grants, endpoints and checks."""

from __future__ import annotations

from flask import Flask

from idp.oauth import active_cache  # noqa: F401 - registers the revocation listeners
from idp.oauth.checks import AuthorizationChecks
from idp.oauth.discovery import SCOPES
from idp.oauth.endpoints import Introspection, Revocation
from idp.oauth.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    DPoPBinding,
    OpenIDConnectCode,
    PrivateKeyJWT,
    RefreshTokenGrant,
    S256CodeChallenge,
    generate_token,
)
from idp.oauth.server import AuthorizationServer

authorization = AuthorizationServer()
authorization.register_grant(
    AuthorizationCodeGrant,
    [
        S256CodeChallenge(required=True),
        OpenIDConnectCode(),
        AuthorizationChecks(),
        DPoPBinding(),
    ],
)
authorization.register_grant(RefreshTokenGrant, [DPoPBinding()])
authorization.register_grant(ClientCredentialsGrant, [DPoPBinding()])
authorization.register_endpoint(Introspection)
authorization.register_endpoint(Revocation)


def init_oauth(app: Flask) -> None:
    """Bind the authorization server to ``app`` and register the protocol views."""
    authorization.init_app(app)
    authorization.scopes_supported = list(SCOPES)
    authorization.register_token_generator("default", generate_token)
    authorization.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT())

    from idp.admin.views import bp as admin_bp
    from idp.authn.views import bp as authn_bp
    from idp.consent.views import bp as consent_bp
    from idp.oauth.views import bp
    from idp.orgs.views import bp as orgs_bp

    app.register_blueprint(bp)
    app.register_blueprint(authn_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(orgs_bp)
    app.register_blueprint(consent_bp)
