"""Bearer keys, compared by their sha256 (the per-key rate limit is `serve.ratelimit`). Pure: no I/O."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Iterable

from .config import ApiKey, hash_key


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a configured key, or (no keys configured) the client address."""

    name: str
    key: ApiKey | None

    def may_use(self, route: str) -> bool:
        return self.key is None or self.key.routes is None or route in self.key.routes

    def may_pick(self, prompt: str) -> bool:
        """Whether this caller may use the route's prompt of that name (X-Promptlift-Prompt)."""
        return self.key is None or self.key.prompts is None or prompt in self.key.prompts

    @property
    def admin(self) -> bool:
        return self.key is not None and self.key.admin


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyStore:
    """Configured keys by hash; `find` hashes the presented token and compares in constant time."""

    def __init__(self, keys: Iterable[ApiKey]):
        self.keys = tuple(keys)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def find(self, token: str | None) -> ApiKey | None:
        if not token:
            return None
        digest = hash_key(token)
        found = None
        for k in self.keys:  # no early exit: the time taken does not tell which key matched
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


__all__ = ["Caller", "KeyStore", "bearer_token"]
