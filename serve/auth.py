"""Optional bearer-token auth: the token comes from an environment variable named in the config."""

from __future__ import annotations

import hmac
import os

DEFAULT_TOKEN_ENV = "DITSCALE_API_TOKEN"


class AuthError(Exception):
    """A request lacks a valid bearer token (maps to HTTP 401)."""


class BearerAuth:
    """Checks `Authorization: Bearer <token>` against a configured token; disabled when there is none."""

    def __init__(self, token: str | None) -> None:
        # Compare bytes so hmac.compare_digest accepts any characters in the token.
        self._token = token.encode("utf-8") if token else None

    @classmethod
    def from_env(cls, env_name: str | None = DEFAULT_TOKEN_ENV, *, required: bool = False) -> "BearerAuth":
        """Auth reading the token from `$env_name`; `required` fails closed when the variable is unset."""
        # Stripped: a token mounted from a file (a Kubernetes secret, `echo > file`) usually ends in a newline no
        # client sends, and would turn every request into a 401.
        token = os.environ.get(env_name, "").strip() if env_name else ""
        if required and not token:
            raise ValueError(
                f"auth.required is true but the environment variable {env_name!r} that holds the API "
                f"token is unset or empty"
            )
        return cls(token or None)

    @property
    def enabled(self) -> bool:
        """Whether requests must carry the token."""
        return self._token is not None

    def check(self, scheme: str | None, credentials: str | bytes | None) -> None:
        """Raise AuthError unless auth is disabled or (scheme, credentials) is the right bearer token.

        `credentials` as the header's raw bytes (what an HTTP client sends: a non-ASCII token as UTF-8), or as text.
        """
        if self._token is None:
            return
        if not credentials or (scheme or "").lower() != "bearer":
            raise AuthError("missing bearer token: send 'Authorization: Bearer <token>'")
        given = credentials if isinstance(credentials, bytes) else credentials.encode("utf-8")
        # Constant-time comparison so the response time does not leak how much of the token matched.
        if not hmac.compare_digest(given, self._token):
            raise AuthError("invalid bearer token")
