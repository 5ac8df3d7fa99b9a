"""What the web channel lets one client address (or one socket) do: new visitors, uploads
and mechanic invite attempts are limited, so guessing and floods cost the guesser, not us."""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web

from core.ratelimit import KeyedBuckets
from core.runtime import Runtime

log = logging.getLogger("autodoctor.channels.web")

# Failed invite codes one socket may try before it is refused any more.
INVITE_TRIES_PER_SOCKET = 3


def client_address(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """The client's IP address: the peer's, or, when the peer is a trusted proxy, the last
    address it put in X-Forwarded-For (the one it saw)."""
    peer = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and peer in trusted_proxies:
        last = forwarded.split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return peer
    return peer


class Guards:
    """The per-address limits of one service process (see [rate_limits] in config.toml)."""

    def __init__(self, runtime: Runtime) -> None:
        limits = runtime.config.rate_limits
        self.runtime = runtime
        self.trusted = frozenset(runtime.config.server.trusted_proxies)
        per_minute = limits.widget_messages_per_minute
        # Messages one visitor may send: a minute's allowance, refilled evenly.
        self.messages = KeyedBuckets(per_minute / 60, per_minute, max_keys=100_000)
        self.new_visitors = KeyedBuckets(limits.new_visitors_per_hour / 3600,
                                         limits.new_visitors_per_hour, max_keys=100_000)
        self.uploads = KeyedBuckets(limits.uploads_per_hour / 3600, limits.uploads_per_hour,
                                    max_keys=100_000)
        self.invite_failures = KeyedBuckets(limits.invite_failures_per_hour / 3600,
                                            limits.invite_failures_per_hour, max_keys=100_000)

    def address_of(self, request: web.Request) -> str:
        return client_address(request, self.trusted)

    def may_try_invite(self, address: str) -> bool:
        """Whether this address may try an invite code now (its failures are limited)."""
        return self.invite_failures.get(address).available()

    def invite_failed(self, address: str, code: str) -> None:
        """Counts, logs and charges to the address a refused invite code (a mechanic's typo,
        or someone guessing)."""
        self.invite_failures.allow(address)
        self.runtime.metrics.invite_failures.inc()
        log.warning("widget invite refused client=%s code_length=%s", address, len(code))
