"""Test helpers shared by unit and functional tests (a software WebAuthn authenticator)."""
