"""core.hub: wake-ups for an identity's subscribers, and a subscriber's hold on its own."""

from __future__ import annotations

from core.hub import Hub


async def test_a_wake_up_carries_the_rows_or_asks_for_a_read() -> None:
    hub = Hub()
    mailbox = hub.subscribe(7)
    hub.wake([7], {7: ["row 1"]})
    hub.wake([8], {8: ["not for 7"]})
    assert mailbox.event.is_set()
    assert mailbox.take() == (["row 1"], False)
    assert not mailbox.event.is_set()
    hub.wake([7])  # from another process: no rows, read the database
    assert mailbox.take() == ([], True)
    hub.unsubscribe(7, mailbox)
    hub.wake([7], {7: ["row 2"]})
    assert mailbox.take() == ([], False)


async def test_a_held_mailbox_keeps_what_comes_without_waking_its_waiter() -> None:
    hub = Hub()
    mailbox = hub.subscribe(7)
    mailbox.hold()
    hub.wake([7], {7: ["reply 1", "reply 2"]})
    hub.wake([7])
    assert not mailbox.event.is_set()  # the waiting pusher stays asleep
    assert mailbox.release() == (["reply 1", "reply 2"], True)
    assert not mailbox.event.is_set()
    hub.wake([7], {7: ["later"]})  # released: wake-ups wake again
    assert mailbox.event.is_set() and mailbox.take() == (["later"], False)


async def test_holds_nest_and_the_last_release_lets_wake_ups_through() -> None:
    hub = Hub()
    mailbox = hub.subscribe(7)
    mailbox.hold()
    mailbox.hold()
    hub.wake([7], {7: ["a"]})
    assert mailbox.release() == (["a"], False)
    hub.wake([7], {7: ["b"]})
    assert not mailbox.event.is_set()
    assert mailbox.release() == (["b"], False)
    hub.wake([7], {7: ["c"]})
    assert mailbox.event.is_set()
