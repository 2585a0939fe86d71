"""Signing keys: public JWK in clear, private key encrypted (AES-256-GCM) at rest."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from idp.db import Base, utcnow


class SigningKey(Base):
    """One signing key. Its state follows from its timestamps (see ``idp.keys.services``):
    next (before ``activates_at``), active, retired (after ``retired_at``), removed
    (``removed_at`` set, or no token it signed can still be valid)."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    alg: Mapped[str] = mapped_column(String(16), index=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    # AES-GCM: nonce || ciphertext of the PKCS#8 DER private key, with the kid as associated data.
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    activates_at: Mapped[dt.datetime]
    retired_at: Mapped[dt.datetime | None]
    removed_at: Mapped[dt.datetime | None]
