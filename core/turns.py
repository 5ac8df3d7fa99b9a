"""A keyed FIFO lock: one holder per key at a time, the others served in the order they came."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedFifoLock(Generic[K]):
    """What an asyncio.Lock per key would do, without making one for each message: most
    callers find nobody ahead of them and cost a dictionary entry.

    take_now(key) takes the key if it is free; otherwise the caller awaits wait(key), which
    returns when the key is handed to it. release(key) hands it to the next still waiting.
    """

    def __init__(self) -> None:
        # Per key held: the turns of those waiting behind the holder (None: nobody waits).
        self._waiting: dict[K, deque[asyncio.Future[None]] | None] = {}

    def take_now(self, key: K) -> bool:
        """Take the key if nobody holds it; False if the caller must wait()."""
        if key in self._waiting:
            return False
        self._waiting[key] = None
        return True

    async def wait(self, key: K) -> None:
        """After take_now() said no: wait for the key behind its holder and those waiting."""
        queue = self._waiting[key]
        if queue is None:
            queue = self._waiting[key] = deque()
        turn = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancelled():
                self.release(key)  # handed over just as the caller was cancelled
            raise

    def release(self, key: K) -> None:
        """Hand the key to the next still waiting, if any."""
        queue = self._waiting[key]
        while queue:
            turn = queue.popleft()
            if not turn.done():  # not given up (cancelled) while waiting
                turn.set_result(None)
                return
        del self._waiting[key]

    def __len__(self) -> int:
        """The keys held."""
        return len(self._waiting)
