"""Browser sessions of the web portal: server-side, so a logout or lockout ends them at once.

The cookie holds a random secret; only its SHA-256 is stored (``token_hash``), like API tokens.
Each session carries its own CSRF token, which every form post and htmx request must echo.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from latentops.core.orm import Base, TimestampMixin


class WebSession(TimestampMixin, Base):
    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    # How the user signed in: "password" or "oidc" (single sign-on).
    method: Mapped[str] = mapped_column(sa.String(16), default="password")
    client: Mapped[str] = mapped_column(sa.String(200), default="")
    expires_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
