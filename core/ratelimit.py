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
        self._lock = asyncio.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def pause(self, seconds: float) -> None:
        """Hold everything back (a provider's retry_after)."""
        self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
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


class ChannelLimiter:
    """One bucket for the channel, one per chat (the least recently used are forgotten)."""

    def __init__(self, per_second: float, per_chat_per_second: float | None,
                 max_chats: int = 10_000) -> None:
        # Burst 1: evenly spaced sends. A full-rate burst meets a provider counting "per any
        # second" (Telegram) with 429s right after a pause.
        self.channel = TokenBucket(per_second, 1.0)
        self.per_chat = per_chat_per_second
        self.chats: OrderedDict[str, TokenBucket] = OrderedDict()
        self.max_chats = max_chats

    def chat(self, address: str) -> TokenBucket | None:
        if self.per_chat is None:
            return None
        bucket = self.chats.pop(address, None) or TokenBucket(self.per_chat, 1.0)
        self.chats[address] = bucket
        while len(self.chats) > self.max_chats:
            self.chats.popitem(last=False)
        return bucket

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
