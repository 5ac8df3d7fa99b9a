"""The message ids a widget connection has sent lately."""

from __future__ import annotations

from collections import deque


class RecentIds:
    """The ids sent lately on one connection (a bounded set)."""

    def __init__(self, size: int = 1000) -> None:
        self._order: deque[int] = deque(maxlen=size)
        self._ids: set[int] = set()

    def remember(self, message_id: int) -> None:
        if len(self._order) == self._order.maxlen:
            self._ids.discard(self._order[0])
        self._order.append(message_id)
        self._ids.add(message_id)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids
