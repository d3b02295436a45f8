"""Who may look and act: one shared token, sessions in a signed cookie, CSRF tokens.

* The operator proves they know the token once, in the login form; the browser then
  holds a session cookie (HttpOnly, SameSite=Strict) signed with a key derived from the
  token, so every process serving the same token accepts it and changing the token
  ends every session. JSON clients send ``Authorization: Bearer <token>`` instead.
* Wrong tokens are counted per client address, in the login form and in the
  ``Authorization`` header alike: too many in a short time lock the address out
  (:class:`LoginThrottle`), so a token cannot be guessed at full speed by either.
* Every form carries a CSRF token bound to the session; JSON calls made with the session
  cookie send it in the ``X-CSRF-Token`` header.
* Logging out revokes the session's id in this process until the session would have
  expired anyway, so a copy of the cookie (and its CSRF token) is worth nothing after it.
  The cookie stays stateless otherwise: only revoked ids are remembered.
* The token itself is never logged, shown in a repr or put in an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MIN_TOKEN_LENGTH",
    "Auth",
    "LoginThrottle",
    "Session",
    "bearer_of",
    "generate_token",
]

MIN_TOKEN_LENGTH = 16
SESSION_MAX_AGE = 12 * 3600  # seconds a login lasts
FLASH_MAX_AGE = 120


def generate_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def bearer_of(header: str | None) -> str | None:
    """The token an ``Authorization: Bearer <token>`` header offers; None for no header
    or another scheme."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A browser's session: a random id, whether it logged in, and when it was issued."""

    sid: str
    authed: bool
    issued_at: float
    #: made for this request: its cookie must be sent
    fresh: bool = False


class Auth:
    """Checks the token and signs what the dashboard hands to browsers."""

    def __init__(self, token: str) -> None:
        if not isinstance(token, str):
            raise ValueError("the dashboard token must be a string")
        if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
            raise ValueError(
                f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters, without "
                "surrounding spaces; generate one with: python -c "
                '"import secrets; print(secrets.token_urlsafe(32))"'
            )
        self._digest = hashlib.sha256(token.encode()).digest()
        self._key = hmac.new(token.encode(), b"sqqueue-dashboard-signing-key", "sha256").digest()
        #: ids of sessions logged out -> when they would have expired (then forgotten)
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "<Auth (token hidden)>"

    def token_matches(self, given: str) -> bool:
        """Whether ``given`` is the token (in constant time)."""
        candidate = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(candidate, self._digest)

    def bearer_matches(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token."""
        given = bearer_of(header)
        return given is not None and self.token_matches(given)

    # -- signing ---------------------------------------------------------------------------

    def sign(self, data: dict[str, Any], purpose: str) -> str:
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        mac = hmac.new(self._key, f"{purpose}:{body}".encode(), "sha256").digest()
        return f"{body}.{_b64(mac)}"

    def unsign(self, value: str | None, purpose: str) -> dict[str, Any] | None:
        """The data of a value made by :meth:`sign` for ``purpose``; None if forged."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        expected = hmac.new(self._key, f"{purpose}:{body}".encode(), "sha256").digest()
        try:
            if not hmac.compare_digest(_unb64(mac), expected):
                return None
            data = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        return data if isinstance(data, dict) else None

    # -- sessions --------------------------------------------------------------------------

    def new_session(self, authed: bool, now: float | None = None) -> Session:
        issued = time.time() if now is None else now
        return Session(secrets.token_urlsafe(16), authed, issued, fresh=True)

    def session_cookie(self, session: Session) -> str:
        return self.sign(
            {"sid": session.sid, "auth": session.authed, "iat": session.issued_at}, "session"
        )

    def read_session(self, cookie: str | None, now: float | None = None) -> Session:
        """The session a cookie holds; a new anonymous one if it is missing, forged or old."""
        now = time.time() if now is None else now
        data = self.unsign(cookie, "session")
        if data is not None:
            sid, authed, issued = data.get("sid"), data.get("auth"), data.get("iat")
            if (
                isinstance(sid, str)
                and isinstance(authed, bool)
                and isinstance(issued, (int, float))
                and 0 <= now - issued < SESSION_MAX_AGE
                and not self.revoked(sid)
            ):
                return Session(sid, authed, float(issued))
        return self.new_session(False, now)

    def revoke(self, session: Session, now: float | None = None) -> None:
        """End ``session`` for good (logging out): its cookie is refused from now on.

        Only logged-in sessions are remembered, each until it would have expired, so the
        set stays as small as the logins made in the last 12 hours: an anonymous session
        opens nothing, and a flood of anonymous logouts must not grow it."""
        if not session.authed or session.fresh:
            return
        now = time.time() if now is None else now
        with self._lock:
            for sid in [s for s, until in self._revoked.items() if until <= now]:
                del self._revoked[sid]
            self._revoked[session.sid] = session.issued_at + SESSION_MAX_AGE

    def revoked(self, sid: str) -> bool:
        """Whether the session ``sid`` was logged out."""
        with self._lock:
            return sid in self._revoked

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of a session: forms and JSON calls by cookie must carry it."""
        return _b64(hmac.new(self._key, f"csrf:{session.sid}".encode(), "sha256").digest())

    def csrf_matches(self, session: Session, given: str | None) -> bool:
        if session.fresh or not given:
            return False  # a session made just now was not the one the form came from
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())


class LoginThrottle:
    """Refuses a client's tokens after too many wrong ones in a short time: ``limit``
    wrong tokens within ``period`` seconds lock the client out until the oldest of them
    is ``period`` seconds old. The login form and the ``Authorization`` header count
    together. ``clock`` gives the time in seconds (monotonic; a test may pass its own)."""

    def __init__(
        self, limit: int = 10, period: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.period = period
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] <= now - self.period:
            failures.popleft()
        return failures

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """None when ``client`` may try a token, else the whole seconds until it may."""
        now = self.clock() if now is None else now
        with self._lock:
            failures = self._recent(client, now)
            wait = None
            if len(failures) >= self.limit:
                wait = max(1, math.ceil(failures[-self.limit] + self.period - now))
            if not failures:
                self._failures.pop(client, None)
            return wait

    def allowed(self, client: str, now: float | None = None) -> bool:
        """Whether ``client`` may try a token."""
        return self.retry_after(client, now) is None

    def failed(self, client: str, now: float | None = None) -> None:
        """Count a wrong token from ``client``."""
        now = self.clock() if now is None else now
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._failures) > 10_000:  # bounded memory under a flood of addresses
                oldest = min(self._failures, key=lambda c: self._failures[c][-1])
                del self._failures[oldest]
