"""Token buckets for provider limits (Telegram: 30 msg/s per bot, 1 msg/s per chat)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict


class TokenBucket:
    """`rate` tokens a second, bursts up to `burst`; acquire() waits for a token."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.updated = time.monotonic()
        self.blocked_until = 0.0
        # Made by the first acquire(): a person's bucket (try_acquire only) needs none.
        self._lock: asyncio.Lock | None = None

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def pause(self, seconds: float) -> None:
        """Hold everything back (a provider's retry_after)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def restart(self) -> None:
        """Count the next token from now (the one taken is being used only now)."""
        self.tokens = min(self.tokens, 0.0)
        self.updated = time.monotonic()

    def available(self) -> bool:
        """Whether a token is there now (none is taken)."""
        now = time.monotonic()
        if now < self.blocked_until:
            return False
        self._refill(now)
        return self.tokens >= 1

    def try_acquire(self) -> bool:
        """Take a token if one is there now, without waiting."""
        now = time.monotonic()
        if now < self.blocked_until:
            return False
        self._refill(now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    continue
                self._refill(now)
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class KeyedBuckets:
    """One bucket per key (a chat, a visitor); the least recently used are forgotten."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, key: str) -> TokenBucket:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def allow(self, key: str) -> bool:
        """A token for this key now, or False (no waiting): for limits on people."""
        return self.get(key).try_acquire()


class ChannelLimiter:
    """One bucket for the channel, one per chat (the least recently used are forgotten)."""

    # Sends are paced this much under the provider's published limits: the provider counts
    # by its own clock when requests arrive, and the network moves them by milliseconds, so
    # sends spaced exactly at the limit are refused now and then.
    HEADROOM = 0.9

    def __init__(self, per_second: float, per_chat_per_second: float | None,
                 max_chats: int = 10_000) -> None:
        # Burst 1: evenly spaced sends. A full-rate burst meets a provider counting "per any
        # second" (Telegram) with 429s right after a pause.
        self.channel = TokenBucket(per_second * self.HEADROOM, 1.0)
        self.chats = (KeyedBuckets(per_chat_per_second * self.HEADROOM, 1.0, max_chats)
                      if per_chat_per_second is not None else None)

    def chat(self, address: str) -> TokenBucket | None:
        return self.chats.get(address) if self.chats is not None else None

    def pause(self, address: str, seconds: float) -> None:
        """After a 429: nothing more on this channel, nor to this chat, for `seconds`."""
        self.channel.pause(seconds)
        chat = self.chat(address)
        if chat is not None:
            chat.pause(seconds)

    async def acquire(self, address: str) -> None:
        chat = self.chat(address)
        if chat is not None:
            await chat.acquire()
        await self.channel.acquire()
        if chat is not None:
            # The send happens now, maybe long after the chat's token was taken (the channel
            # had others queued): the chat's next send waits a full interval from now.
            chat.restart()
