"""In-process wake-ups: 'identity N has new messages', for open widget sockets and the outbox."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("autodoctor.hub")


class Mailbox:
    """One subscriber's wake-ups: the rows committed in this process, handed over as they are,
    or `reread` when a wake-up came without them (from another process), when the subscriber
    must read what is new from the database."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.rows: list[Any] = []
        self.reread = False
        self._held = 0

    def deliver(self, rows: list[Any] | None) -> None:
        if rows is None:
            self.reread = True
        else:
            self.rows.extend(rows)
        if not self._held:
            self.event.set()

    def hold(self) -> None:
        """Keep what comes from now on without waking the waiter: the subscriber takes it
        itself at release() (a socket sending the replies to the message it has just handed
        in, without a second task waking up to do it)."""
        self._held += 1

    def release(self) -> tuple[list[Any], bool]:
        """End a hold(); what came meanwhile (or since the last take), as take() gives it."""
        self._held -= 1
        return self.take()

    def take(self) -> tuple[list[Any], bool]:
        """What came since the last take: (rows, whether to read the database too)."""
        rows, reread = self.rows, self.reread
        self.rows, self.reread = [], False
        self.event.clear()
        return rows, reread


class Hub:
    """Subscribers wait on an identity; publish() wakes every waiter for it.

    The transcript in the database is the only copy of a message. Wake-ups from this process
    carry the committed rows, so an open socket can send them without reading them back; a
    wake-up from another process carries only the identity, and the subscriber reads the
    database. A missed wake-up loses nothing: the next read finds the message.
    """

    def __init__(self) -> None:
        self._waiters: dict[int, set[Mailbox]] = defaultdict(set)
        self.outbox_wakeup = asyncio.Event()
        self.bridge: PgBridge | None = None

    def subscribe(self, identity_id: int) -> Mailbox:
        mailbox = Mailbox()
        self._waiters[identity_id].add(mailbox)
        return mailbox

    def unsubscribe(self, identity_id: int, mailbox: Mailbox) -> None:
        waiters = self._waiters.get(identity_id)
        if waiters is not None:
            waiters.discard(mailbox)
            if not waiters:
                del self._waiters[identity_id]

    def publish(self, identity_ids: Iterable[int],
                rows: Mapping[int, list[Any]] | None = None, *, outbox: bool = True) -> None:
        """Wake local waiters (with the rows committed for each identity, where given), the
        outbox dispatcher if `outbox`, and other processes when a bridge is attached."""
        ids = set(identity_ids)
        self.wake(ids, rows, outbox=outbox)
        if self.bridge is not None:
            self.bridge.forward(ids)

    def wake(self, identity_ids: Iterable[int],
             rows: Mapping[int, list[Any]] | None = None, *, outbox: bool = True) -> None:
        for identity_id in identity_ids:
            mailboxes = self._waiters.get(identity_id)
            if mailboxes:
                committed = rows.get(identity_id) if rows is not None else None
                for mailbox in mailboxes:
                    mailbox.deliver(committed)
        if outbox:
            self.outbox_wakeup.set()


CHANNEL = "autodoctor_wakeup"
# How long a wake-up may wait for others to share its NOTIFY.
COALESCE_SECONDS = 0.002
MAX_PAYLOAD = 7900  # PostgreSQL refuses payloads of 8000 bytes or more


class PgBridge:
    """Carries wake-ups between processes sharing PostgreSQL, with LISTEN/NOTIFY.

    Best effort by design: a lost notification only delays delivery until the next poll or
    reconnect, because the database, not the notification, holds every message.
    """

    def __init__(self, hub: Hub, dsn: str) -> None:
        self.hub = hub
        self.dsn = dsn
        self.origin = uuid.uuid4().hex[:8]
        self._conn: Any = None
        self._pending: set[asyncio.Task[None]] = set()
        self._queued: set[int] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one asyncpg connection runs one command at a time

    async def start(self) -> None:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn)
        await self._conn.add_listener(CHANNEL, self._on_notify)
        self.hub.bridge = self

    async def stop(self) -> None:
        self.hub.bridge = None
        for task in list(self._pending):
            task.cancel()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def forward(self, identity_ids: set[int]) -> None:
        """Tell the other processes, within COALESCE_SECONDS: commits that land together
        share one NOTIFY (each is a round trip to the database)."""
        if self._conn is None:
            return
        self._queued |= identity_ids
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
            self._pending.add(self._flusher)
            self._flusher.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        await asyncio.sleep(COALESCE_SECONDS)
        ids, self._queued, self._flusher = sorted(self._queued), set(), None
        chunk: list[str] = []
        for identity_id in map(str, ids):
            if chunk and sum(map(len, chunk)) + len(chunk) + len(identity_id) > MAX_PAYLOAD:
                await self._notify(self.origin + ":" + ",".join(chunk))
                chunk = []
            chunk.append(identity_id)
        if chunk or not ids:
            await self._notify(self.origin + ":" + ",".join(chunk))

    async def _notify(self, payload: str) -> None:
        try:
            async with self._lock:
                await self._conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        except Exception:  # noqa: BLE001 - best effort, see the class docstring
            log.warning("wake-up notify failed", exc_info=True)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, _, ids = payload.partition(":")
        if origin == self.origin:
            return
        self.hub.wake(int(i) for i in ids.split(",") if i.isdigit())
