"""A small relying party served only by ``idp demo`` (under ``/demo-rp``).

It behaves as a relying party elsewhere would: it talks to Corp ID only over HTTP, through
its published endpoints found by discovery, with Authlib's OAuth 2.0 client. It shares
nothing with the provider but the process (and the demo client's registration, looked up by
name to learn its ``client_id``).
"""
