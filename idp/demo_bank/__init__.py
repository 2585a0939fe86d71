"""A demo bank served only by ``idp demo`` (under ``/demo-bank``): "Open a business account —
verify your company with Corp ID".

It is a relying party at FAPI 2.0 strength, as a bank elsewhere would run it: it talks to Corp ID
only over HTTP, through the endpoints found by discovery, with a FAPI-capable client library
(requests-oauth2client): PAR authenticated with ``private_key_jwt``, DPoP, PKCE, RFC 9396
``authorization_details`` for company data, RFC 9207 ``iss`` checks, then the company data API
with the DPoP-bound access token and the consent receipt checked against the JWKS. It shares
nothing with the provider but the process, its key files under ``keys/`` (made by the demo
seed) and its registration, looked up by name to learn its ``client_id``.
"""
