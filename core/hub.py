"""In-process wake-ups: 'identity N has new messages', for open widget sockets and the outbox."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable


class Hub:
    """Subscribers wait on an identity; publish() wakes every waiter for it.

    Nothing is carried in the event itself: the transcript in the database is the only copy,
    a woken subscriber reads what is new from there, so a missed wake-up loses nothing.
    """

    def __init__(self) -> None:
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self.outbox_wakeup = asyncio.Event()

    def subscribe(self, identity_id: int) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters[identity_id].add(event)
        return event

    def unsubscribe(self, identity_id: int, event: asyncio.Event) -> None:
        waiters = self._waiters.get(identity_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[identity_id]

    def publish(self, identity_ids: Iterable[int]) -> None:
        for identity_id in identity_ids:
            for event in self._waiters.get(identity_id, ()):
                event.set()
        self.outbox_wakeup.set()

    def connected(self) -> int:
        return sum(len(v) for v in self._waiters.values())
