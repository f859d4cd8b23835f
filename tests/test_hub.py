"""The pure core, driven directly with a hand-held clock: no loop, no sockets."""

from __future__ import annotations

import pytest

from tidings.encoding import encode_json
from tidings.errors import BuffersFull, InvalidChannel, InvalidCursor, TooManyChannels
from tidings.hub import (
    FRAMING_OVERHEAD,
    MESSAGE_OVERHEAD,
    NOW,
    ZERO_ID,
    Cursor,
    Hub,
    Message,
    MessageId,
    already_seen,
    cursor_token,
    parse_channels,
)

T0 = 1_700_000_000_000


class Recorder:
    def __init__(self) -> None:
        self.woken: list[Message] = []
        self.closed: list[str] = []

    def wake(self, message: Message) -> bool:
        self.woken.append(message)
        return True

    def deliver(self, message: Message) -> None:
        self.woken.append(message)

    def channel_closed(self, channel: str) -> None:
        self.closed.append(channel)


def publish(hub: Hub, channel: str, data: object, now: int) -> Message:
    message = hub.make_message(channel, encode_json(data), now)
    hub.ingest(message, now)
    return message


def make_hub(size: int = 100, ttl: float = 3600.0) -> Hub:
    return Hub(buffer_size=size, buffer_ttl=ttl, now_ms=T0)


def test_ids_increase_within_and_across_milliseconds() -> None:
    hub = make_hub()
    a = publish(hub, "c", 1, T0 + 5)
    b = publish(hub, "c", 2, T0 + 5)
    c = publish(hub, "c", 3, T0 + 6)
    assert [str(m.id) for m in (a, b, c)] == [f"{T0 + 5}-0", f"{T0 + 5}-1", f"{T0 + 6}-0"]


def test_ids_never_go_backwards_when_the_clock_does() -> None:
    hub = make_hub()
    a = publish(hub, "c", 1, T0 + 100)
    b = publish(hub, "c", 2, T0 + 50)
    assert b.id > a.id
    assert b.id == MessageId(T0 + 100, 1)


def test_message_json_is_encoded_once_with_every_field() -> None:
    hub = make_hub()
    m = publish(hub, "c", {"nick": "ann", "message": "héllo"}, T0 + 1)
    assert m.json == (
        f'{{"id":"{T0 + 1}-0","channel":"c","data":{{"nick":"ann","message":"héllo"}},"time":{T0 + 1}}}'.encode()
    )


def test_ring_keeps_the_newest_and_reports_a_gap_for_older_cursors() -> None:
    hub = make_hub(size=3)
    msgs = [publish(hub, "c", i, T0 + i) for i in range(1, 6)]
    batch = hub.read(["c"], Cursor(default=msgs[0].id), T0 + 10)
    assert [m.data for m in batch.messages] == [3, 4, 5]
    assert batch.gaps == ["c"]
    # The cursor just before the oldest buffered message missed nothing.
    batch = hub.read(["c"], Cursor(default=msgs[1].id), T0 + 10)
    assert [m.data for m in batch.messages] == [3, 4, 5]
    assert batch.gaps == []
    assert batch.positions == {"c": msgs[4].id}


def test_ttl_expires_messages_and_cursor_at_the_last_one_sees_no_gap() -> None:
    hub = make_hub(ttl=1.0)
    m1 = publish(hub, "c", 1, T0 + 10)
    m2 = publish(hub, "c", 2, T0 + 600)
    later = T0 + 1300  # m1 expired, m2 not
    assert [m.data for m in hub.read(["c"], Cursor(oldest=True), later).messages] == [2]
    assert hub.read(["c"], Cursor(default=m1.id), later).gaps == []
    assert hub.read(["c"], Cursor(default=MessageId(T0, 0)), later).gaps == ["c"]
    assert hub.info("c", T0 + 5000).buffered == 0
    batch = hub.read(["c"], Cursor(default=m2.id), T0 + 5000)
    assert batch.messages == [] and batch.gaps == [] and batch.positions == {"c": m2.id}


def test_read_without_cursor_starts_now_and_never_creates_channels() -> None:
    hub = make_hub()
    batch = hub.read(["nothing"], NOW, T0 + 1)
    assert batch.messages == [] and batch.positions == {"nothing": hub.floor}
    assert "nothing" not in hub.channels
    publish(hub, "c", 1, T0 + 1)
    assert hub.read(["c"], NOW, T0 + 2).messages == []


def test_batches_are_limited_and_continue_exactly() -> None:
    hub = make_hub(size=500)
    for i in range(250):
        publish(hub, "c", i, T0 + 1 + i)
    cursor = Cursor(oldest=True)
    seen: list[int] = []
    while True:
        batch = hub.read(["c"], cursor, T0 + 1000)
        if not batch.messages:
            break
        assert len(batch.messages) <= 100
        seen.extend(m.data for m in batch.messages)
        cursor = Cursor.parse(cursor_token(["c"], batch.positions))
    assert seen == list(range(250))


def test_multi_channel_read_merges_in_id_order_with_one_cursor() -> None:
    hub = make_hub()
    publish(hub, "a", "a1", T0 + 1)
    publish(hub, "b", "b1", T0 + 2)
    publish(hub, "a", "a2", T0 + 3)
    batch = hub.read(["a", "b", "c"], Cursor(oldest=True), T0 + 4, limit=2)
    assert [m.data for m in batch.messages] == ["a1", "b1"]
    assert batch.more
    token = cursor_token(["a", "b", "c"], batch.positions)
    rest = hub.read(["a", "b", "c"], Cursor.parse(token), T0 + 5)
    assert [m.data for m in rest.messages] == ["a2"]


def test_oldest_continues_from_the_start_of_the_buffer_not_from_zero() -> None:
    hub = make_hub(size=3)
    for i in range(4):
        publish(hub, "a", f"a{i}", T0 + 1 + i)  # a0 leaves the buffer
    publish(hub, "b", "b0", T0 + 5)
    batch = hub.read(["a", "b"], Cursor(oldest=True), T0 + 6, limit=1)
    assert [m.data for m in batch.messages] == ["a1"] and batch.more
    # b was cut off by the limit: its position is where its buffer starts, which sent back
    # is no gap (a position of zero would be: the buffer does not reach back that far).
    token = cursor_token(["a", "b"], batch.positions)
    rest = hub.read(["a", "b"], Cursor.parse(token), T0 + 7)
    assert [m.data for m in rest.messages] == ["a2", "a3", "b0"] and rest.gaps == []
    # `starts`, the cursor from before the batch's first message, reads the same batch again.
    again = hub.read(["a", "b"], Cursor.parse(cursor_token(["a", "b"], batch.starts)), T0 + 8)
    assert [m.data for m in again.messages] == ["a1", "a2", "a3", "b0"] and again.gaps == []


def test_cursor_tokens_parse_and_reject_garbage() -> None:
    assert Cursor.parse(None) is NOW
    assert Cursor.parse("oldest").oldest
    assert Cursor.parse("12-3").position("x") == MessageId(12, 3)
    c = Cursor.parse("room.1:5-0,b:7-2")
    assert c.position("room.1") == MessageId(5, 0) and c.position("b") == MessageId(7, 2)
    assert c.position("other") is None
    for bad in ("abc", "12", "-1-2", "a:b", "a/b:1-2", "1-2-3", "9" * 50 + "-1"):
        with pytest.raises(InvalidCursor):
            Cursor.parse(bad)


def test_channel_names_are_validated() -> None:
    assert parse_channels("a,b.c:d-e_f,a") == ("a", "b.c:d-e_f")
    for bad in ("", "a/b", "a b", "x" * 129, "a,,b", "ü"):
        with pytest.raises(InvalidChannel):
            parse_channels(bad)
    with pytest.raises(InvalidChannel):
        parse_channels(",".join(f"c{i}" for i in range(33)))


def test_waiters_are_woken_once_and_removed() -> None:
    hub = make_hub()
    waiter = Recorder()
    hub.wait(["a", "b"], waiter)
    assert hub.info("a", T0).subscribers == 1 and hub.info("b", T0).subscribers == 1
    publish(hub, "a", 1, T0 + 1)
    assert [m.data for m in waiter.woken] == [1]
    assert hub.info("a", T0).subscribers == 0
    hub.unwait(["a", "b"], waiter)  # what a woken long-poll does with its other channels
    assert hub.info("b", T0).subscribers == 0


def test_streams_receive_every_message_until_they_leave() -> None:
    hub = make_hub()
    stream = Recorder()
    hub.join(["a"], stream)
    assert hub.ingest(hub.make_message("a", b"1", T0 + 1), T0 + 1) == 1
    publish(hub, "a", 2, T0 + 2)
    hub.leave(["a"], stream)
    publish(hub, "a", 3, T0 + 3)
    assert [m.data for m in stream.woken] == [1, 2]


def test_delete_tells_every_subscriber_and_ids_continue_after() -> None:
    hub = make_hub()
    waiter, stream = Recorder(), Recorder()
    last = publish(hub, "a", 1, T0 + 5)
    hub.wait(["a"], waiter)
    hub.join(["a"], stream)
    assert hub.delete("a") == 2
    assert waiter.closed == ["a"] and stream.closed == ["a"]
    assert hub.delete("a") is None
    again = publish(hub, "a", 2, T0 + 1)
    assert again.id > last.id


def test_the_sweep_looks_at_what_expires_and_what_went_idle_however_it_did() -> None:
    hub = make_hub(ttl=1.0)
    publish(hub, "read", 1, T0)
    hub.info("read", T0 + 1001)  # (emptied by a read, not by the sweep)
    waiter = Recorder()
    hub.wait(["polled"], waiter)
    hub.unwait(["polled"], waiter)  # (never published: idle once its poll ends)
    for n in range(3000):  # published and deleted over and over: old schedule entries pile up
        publish(hub, "churn", n, T0 + n)
        hub.delete("churn")
    publish(hub, "churn", "last", T0 + 3000)
    publish(hub, "kept", 1, T0 + 3500)
    assert hub.sweep(T0 + 3999) == 2  # "read" and "polled"; "churn" not due yet
    assert len(hub.expiries) < 100  # (made anew: stale entries do not pile up for the TTL)
    assert hub.sweep(T0 + 4001) == 1 and set(hub.channels) == {"kept"}
    assert hub.sweep(T0 + 4501) == 1 and hub.channels == {} and hub.buffered_bytes == 0


def test_history_put_back_in_front_expires_on_its_own_time() -> None:
    hub = make_hub(ttl=1.0)
    publish(hub, "a", "new", T0 + 500)
    older = [Message.from_data(MessageId(T0, 0), "a", "old", T0)]
    hub.backfill("a", older, ZERO_ID, T0 + 500)
    assert hub.get("a") is not None and hub.get("a").buffered == 2  # type: ignore[union-attr]
    hub.sweep(T0 + 1001)  # the old one's time, not the newer one's
    assert [m.data for m in hub.get("a").ring or ()] == ["new"]  # type: ignore[union-attr]


def test_sweep_reclaims_idle_channels_and_remembers_where_ids_were() -> None:
    hub = make_hub(ttl=1.0)
    last = publish(hub, "a", 1, T0 + 10)
    hub.wait(["b"], Recorder())
    assert hub.sweep(T0 + 100) == 0
    assert hub.sweep(T0 + 5000) == 1  # "a" expired and idle; "b" has a waiter
    assert set(hub.channels) == {"b"}
    # A cursor at the reclaimed channel's last id missed nothing; an older one did.
    assert hub.read(["a"], Cursor(default=last.id), T0 + 6000).gaps == []
    assert hub.read(["a"], Cursor(default=MessageId(T0, 0)), T0 + 6000).gaps == ["a"]
    assert publish(hub, "a", 2, T0 + 1).id > last.id


def test_a_cursor_from_before_this_hub_started_is_a_gap() -> None:
    hub = make_hub()
    assert hub.read(["x"], Cursor(default=MessageId(T0 - 1, 0)), T0 + 1).gaps == ["x"]
    assert hub.read(["x"], Cursor(default=hub.floor), T0 + 1).gaps == []


def test_a_live_message_reaches_subscribers_but_moves_no_cursor() -> None:
    hub = Hub(now_ms=T0)
    stored = publish(hub, "c", "kept", T0 + 1)
    waiter, stream = Recorder(), Recorder()
    hub.wait(["c"], waiter)
    hub.join(["c"], stream)
    live = Message.from_data(MessageId(T0 + 5, 0), "c", "passing", T0 + 5, live=True)
    assert hub.ingest(live, T0 + 5) == 2
    assert waiter.woken == [live] and stream.woken == [live]
    assert live.id == stored.id  # the cursor it carries is the last stored one
    assert b'"id":null' in live.json
    batch = hub.read(["c"], Cursor.parse("oldest"), T0 + 6)
    assert batch.messages == [stored]  # not buffered
    after = publish(hub, "c", "next", T0 + 7)
    assert after.id > stored.id


def test_backfill_puts_older_history_back_and_ingests_newer() -> None:
    # A node whose bus subscription began at T0+100 knows nothing before; the broker's
    # history fills that in, and what is newer than the node's last id is delivered.
    hub = Hub(now_ms=T0 + 100, buffer_size=10)
    old = [Message.from_data(MessageId(T0 + i, 0), "c", i, T0 + i) for i in (10, 20, 30)]
    cursor = Cursor.parse(f"{T0 + 10}-0")
    batch = hub.read(["c"], cursor, T0 + 101)
    assert batch.incomplete == ["c"] and batch.gaps == ["c"] and batch.messages == []
    waiter = Recorder()
    hub.wait(["c"], waiter)
    newer = Message.from_data(MessageId(T0 + 150, 0), "c", "new", T0 + 150)
    hub.backfill("c", [*old[1:], newer], MessageId(T0 + 10, 0), T0 + 151)
    assert waiter.woken == [newer]
    batch = hub.read(["c"], cursor, T0 + 151)
    assert batch.gaps == [] and batch.incomplete == []
    assert [m.data for m in batch.messages] == [20, 30, "new"]
    # `oldest` before the history's start is incomplete (worth asking the broker) but no gap.
    batch = hub.read(["c"], Cursor.parse("oldest"), T0 + 151)
    assert batch.incomplete == ["c"] and batch.gaps == []


def test_backfill_keeps_the_buffer_bound() -> None:
    hub = Hub(now_ms=T0 + 100, buffer_size=2)
    old = [Message.from_data(MessageId(T0 + i, 0), "c", i, T0 + i) for i in (10, 20, 30)]
    hub.backfill("c", old, MessageId(T0, 0), T0 + 101)
    batch = hub.read(["c"], Cursor.parse(f"{T0}-0"), T0 + 101)
    assert [m.data for m in batch.messages] == [20, 30] and batch.gaps == ["c"]


def test_backfill_does_not_buffer_twice_a_message_that_came_after_a_loss() -> None:
    # After a loss the horizon is the id of the message that followed it, which is buffered:
    # a history that holds that message too must not put it back a second time.
    hub = Hub(now_ms=T0, buffer_size=10, follows_bus=True, buffers_are_cache=True)
    hub.known_from("c", MessageId(T0 + 50, 0))
    after = Message.from_data(MessageId(T0 + 60, 0), "c", "after", T0 + 60, after_loss=True)
    hub.ingest(after, T0 + 60)
    copy = Message.from_data(MessageId(T0 + 60, 0), "c", "after", T0 + 60)
    hub.backfill("c", [copy], MessageId(T0 + 50, 0), T0 + 61)
    batch = hub.read(["c"], Cursor.parse(f"{T0 + 10}-0"), T0 + 61)
    assert [m.data for m in batch.messages] == ["after"] and batch.gaps == ["c"]


def test_rebase_moves_the_floor_for_channels_not_seen() -> None:
    hub = Hub(now_ms=T0 + 100)
    hub.rebase(MessageId(T0 + 50, 0))  # the bus's clock may be behind this process's
    assert hub.read(["new"], Cursor.parse(f"{T0 + 20}-0"), T0 + 60).gaps == ["new"]
    assert hub.read(["new"], Cursor.parse(f"{T0 + 50}-0"), T0 + 60).gaps == []
    message = Message.from_data(MessageId(T0 + 60, 0), "new", "x", T0 + 60)
    assert hub.ingest(message, T0 + 60) == 0 and hub.read(["new"], Cursor.parse("oldest"), T0 + 61).messages == [
        message
    ]


class Declining(Recorder):
    """A long-poll whose client already has messages up to `seen`."""

    def __init__(self, seen: MessageId) -> None:
        super().__init__()
        self.seen = seen

    def wake(self, message: Message) -> bool:
        return message.id > self.seen and super().wake(message)


def test_following_a_bus_a_cursor_ahead_of_the_hub_is_kept() -> None:
    # The client saw message 5 on another process; this hub has not received it yet.
    lagging = Hub(now_ms=T0, follows_bus=True)
    ahead = Cursor.parse(f"{T0 + 5}-0")
    assert lagging.read(["c"], ahead, T0 + 1).positions == {"c": MessageId(T0 + 5, 0)}
    waiter = Declining(MessageId(T0 + 5, 0))
    lagging.wait(["c"], waiter)
    seen = Message.from_data(MessageId(T0 + 5, 0), "c", "seen", T0 + 5)
    assert lagging.ingest(seen, T0 + 6) == 0 and waiter.woken == []  # declined, still waiting
    new = Message.from_data(MessageId(T0 + 7, 0), "c", "new", T0 + 7)
    assert lagging.ingest(new, T0 + 7) == 1 and waiter.woken == [new]
    # Without a bus, a cursor ahead means the clock went back: continue from the hub's last id.
    alone = Hub(now_ms=T0)
    assert alone.read(["c"], ahead, T0 + 1).positions == {"c": MessageId(T0, 0)}


def test_already_seen_is_up_to_the_cursor_of_the_message_channel_and_never_live() -> None:
    at = {"c": MessageId(T0 + 5, 0)}
    assert already_seen(Message.from_data(MessageId(T0 + 5, 0), "c", "had", T0 + 5), at)
    assert not already_seen(Message.from_data(MessageId(T0 + 5, 1), "c", "new", T0 + 5), at)
    assert not already_seen(Message.from_data(MessageId(T0 + 1, 0), "other", "new", T0 + 1), at)
    assert not already_seen(Message.from_data(MessageId(T0 + 5, 0), "c", "passing", T0 + 5, live=True), at)


def test_a_message_after_a_loss_makes_older_cursors_gaps() -> None:
    hub = Hub(now_ms=T0)
    first = publish(hub, "c", "first", T0 + 1)
    waiter = Recorder()
    hub.wait(["c"], waiter)
    after = Message.from_data(MessageId(T0 + 5, 0), "c", "after", T0 + 5, after_loss=True)
    hub.ingest(after, T0 + 5)
    assert waiter.woken == [after]
    batch = hub.read(["c"], Cursor.parse(str(first.id)), T0 + 6)
    assert batch.gaps == ["c"] and batch.messages == [after]
    assert hub.read(["c"], Cursor.parse(str(after.id)), T0 + 6).gaps == []


def test_known_from_forgets_what_it_cannot_vouch_for() -> None:
    hub = Hub(now_ms=T0)
    old = publish(hub, "c", "old", T0 + 1)
    hub.known_from("c", MessageId(T0 + 10, 0))
    assert hub.read(["c"], Cursor.parse(str(old.id)), T0 + 11).gaps == ["c"]
    assert hub.read(["c"], Cursor.parse("oldest"), T0 + 11).messages == []
    later = publish(hub, "c", "later", T0 + 12)
    assert later.id > MessageId(T0 + 10, 0)
    assert hub.read(["c"], Cursor.parse(f"{T0 + 10}-0"), T0 + 13).messages == [later]


# -- memory caps: what the buffers hold, and what a hub at a cap takes


def held(hub: Hub) -> int:
    """What every buffered message holds, counted the slow way."""
    return sum(m.cost for ch in hub.channels.values() for m in ch.ring or ())


def test_a_message_costs_its_json_its_framings_and_bookkeeping() -> None:
    hub = make_hub()
    message = publish(hub, "c", {"nick": "ann", "message": "hi"}, T0 + 1)
    assert message.cost == MESSAGE_OVERHEAD + len(message.json) == hub.buffered_bytes
    framing = message.frame("sse", lambda m: b"data: %s\n\n" % m.json)
    message.frame("sse", lambda m: b"built twice")  # built once: counted once
    assert hub.buffered_bytes == MESSAGE_OVERHEAD + len(message.json) + FRAMING_OVERHEAD + len(framing)
    assert message.data == {"nick": "ann", "message": "hi"}  # decoded again from the JSON


def test_buffered_bytes_follow_appends_trims_and_expiry_exactly() -> None:
    hub = make_hub(size=3, ttl=1.0)
    sent = [publish(hub, "c", "x" * i, T0 + i) for i in range(1, 6)]
    assert hub.buffered_bytes == held(hub) == sum(m.cost for m in sent[2:])  # trimmed to the newest 3
    sent[0].frame("sse", lambda m: m.json)  # framed after it left the buffer: not counted
    sent[4].frame("sse", lambda m: m.json)
    assert hub.buffered_bytes == held(hub) == sum(m.cost for m in sent[2:])
    hub.read(["c"], NOW, T0 + 1005)  # 3 and 4 are over a second old now
    assert [m.data for m in hub.channels["c"].ring or ()] == ["xxxxx"]
    assert hub.buffered_bytes == held(hub) == sent[4].cost
    hub.sweep(T0 + 2000)
    assert hub.channels == {} and hub.buffered_bytes == 0


def test_delete_reclaim_and_forgetting_give_back_every_byte() -> None:
    hub = make_hub(ttl=1.0)
    for i in range(4):
        publish(hub, "a", i, T0 + i)
        publish(hub, "b", i, T0 + i)
        publish(hub, "c", i, T0 + 500 + i)
    hub.delete("a")
    assert hub.buffered_bytes == held(hub) > 0
    hub.known_from("c", MessageId(T0 + 600, 0))  # nothing before can be vouched for: dropped
    after = Message.from_data(MessageId(T0 + 700, 0), "b", "after", T0 + 700, after_loss=True)
    hub.ingest(after, T0 + 700)
    assert hub.buffered_bytes == held(hub) == after.cost
    old = [Message.from_data(MessageId(T0 + 600 + i, 0), "b", i, T0 + 600 + i) for i in range(3)]
    hub.backfill("b", old, MessageId(T0 + 500, 0), T0 + 701)
    assert hub.buffered_bytes == held(hub) == after.cost + sum(m.cost for m in old)
    assert hub.sweep(T0 + 5000) == 2 and hub.buffered_bytes == 0


def test_the_channel_cap_refuses_new_channels_not_the_ones_held() -> None:
    hub = Hub(now_ms=T0, max_channels=2)
    publish(hub, "a", 1, T0 + 1)
    hub.wait(["b"], Recorder())
    with pytest.raises(TooManyChannels):
        hub.make_message("c", b"1", T0 + 2)
    with pytest.raises(TooManyChannels):
        hub.make_room(["a", "c"])
    hub.make_room(["a", "b"])
    assert publish(hub, "a", 2, T0 + 3).data == 2 and publish(hub, "b", 3, T0 + 3).data == 3
    hub.delete("a")
    hub.make_room(["c"])
    assert publish(hub, "c", 4, T0 + 4).data == 4


def test_the_byte_cap_refuses_new_buffers_not_a_channel_giving_up_its_own_older_messages() -> None:
    hub = make_hub(size=2, ttl=1.0)
    one = publish(hub, "a", "x", T0).cost
    hub.max_buffered_bytes = 3 * one
    publish(hub, "a", "y", T0 + 1)
    z = publish(hub, "b", "z", T0 + 2)
    with pytest.raises(BuffersFull):
        hub.make_message("c", b'"w"', T0 + 3)  # a new buffer: nothing of its own to give up
    assert publish(hub, "a", "v", T0 + 3).data == "v"  # takes the place of the oldest of "a"
    # "b" is below --buffer-size, but at the cap it gives up its own oldest (never "a"'s) ...
    assert publish(hub, "b", "w", T0 + 3).data == "w"
    assert [m.data for m in hub.channels["b"].ring or ()] == ["w"]
    assert [m.data for m in hub.channels["a"].ring or ()] == ["y", "v"]
    assert hub.buffered_bytes == 3 * one
    # ... and a cursor that needed it is told so.
    assert hub.read(["b"], Cursor.parse(f"{T0}-0"), T0 + 4).gaps == ["b"]
    assert hub.read(["b"], Cursor.parse(str(z.id)), T0 + 4).gaps == []
    with pytest.raises(BuffersFull):  # bigger than all of "b" can give
        hub.make_message("b", encode_json("w" * 2 * len(z.json)), T0 + 3)
    hub.sweep(T0 + 1004)  # older messages expire
    assert publish(hub, "c", "u", T0 + 1004).data == "u"


def test_messages_from_the_bus_are_kept_only_as_far_as_they_fit() -> None:
    hub = Hub(now_ms=T0, max_channels=1)
    first = publish(hub, "a", "first", T0 + 1)
    hub.max_buffered_bytes = 2 * first.cost
    # A new channel beyond the cap: not held, but older cursors know they missed it.
    elsewhere = Message.from_data(MessageId(T0 + 2, 0), "b", "elsewhere", T0 + 2)
    assert hub.ingest(elsewhere, T0 + 2) == 0 and "b" not in hub.channels
    assert hub.read(["b"], Cursor.parse(f"{T0 + 1}-0"), T0 + 3).gaps == ["b"]
    assert hub.read(["b"], Cursor.parse(str(elsewhere.id)), T0 + 3).gaps == []
    assert hub.next_id("b", T0 + 3) > elsewhere.id
    # Past the byte cap: the channel drops its oldest for it, and itself if it is too big.
    stream = Recorder()
    hub.join(["a"], stream)
    second = Message.from_data(MessageId(T0 + 4, 0), "a", "second", T0 + 4)
    big = Message.from_data(MessageId(T0 + 5, 0), "a", "x" * 1000, T0 + 5)
    assert hub.ingest(second, T0 + 4) == 1 and hub.ingest(big, T0 + 5) == 1
    assert stream.woken == [second, big]  # delivered all the same
    assert hub.channels["a"].ring is not None and list(hub.channels["a"].ring) == []
    assert hub.buffered_bytes == 0 and hub.read(["a"], Cursor.parse(str(second.id)), T0 + 6).gaps == ["a"]
    assert hub.read(["a"], Cursor.parse(str(big.id)), T0 + 6).gaps == []


def test_a_cache_at_the_channel_cap_makes_way_for_a_newcomer() -> None:
    # Bus traffic keeps a cache full; a new subscriber must not be refused while cached
    # channels nobody here subscribes to could go.
    hub = Hub(now_ms=T0, max_channels=3, follows_bus=True, buffers_are_cache=True)
    hub.join(["kept"], Recorder())
    for i in range(3):
        hub.ingest(Message.from_data(MessageId(T0 + 1 + i, 0), f"c{i}", i, T0 + 1 + i), T0 + 5)
    assert set(hub.channels) == {"kept", "c0", "c1"}
    hub.make_room(["new1", "new2"])
    assert set(hub.channels) == {"kept"}  # the oldest unsubscribed ones went
    hub.join(["new1", "new2"], Recorder())
    with pytest.raises(TooManyChannels):  # every channel held has a subscriber
        hub.make_room(["new3"])


def test_a_cache_at_a_cap_gives_back_what_it_caches_on_sweep() -> None:
    hub = Hub(now_ms=T0, max_channels=10, follows_bus=True, buffers_are_cache=True)
    for i in range(12):
        hub.ingest(Message.from_data(MessageId(T0 + 1 + i, 0), f"c{i}", i, T0 + 1 + i), T0 + 20)
    assert len(hub.channels) == 10  # c10 and c11 were not taken
    hub.join(["c0"], Recorder())
    hub.sweep(T0 + 20)
    assert len(hub.channels) == 9 and "c0" in hub.channels  # down to 90%, subscribed channels kept
    assert hub.read(["c1"], Cursor.parse(f"{T0}-0"), T0 + 21).incomplete == ["c1"]  # the broker fills it in
    # Over the byte cap, subscribed channels drop their buffers too.
    hub.max_buffered_bytes = hub.buffered_bytes - 1
    hub.sweep(T0 + 21)
    assert hub.buffered_bytes <= hub.max_buffered_bytes * 9 // 10
    assert hub.buffered_bytes == held(hub)
