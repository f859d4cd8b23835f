"""tidings.client against real servers: every transport, resume across a restart, gaps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import ServerProcess, free_port, subscribers, wait_until

from tidings.client import AsyncClient, ChannelDeleted, Client, Message, PresenceEvent, RequestRefused


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_subscribe_on_every_transport_gets_everything_in_order(
    server: ServerProcess, channel: str, transport: str
) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            first = await client.publish(channel, "before")
            got: list[Message] = []

            async def read() -> None:
                async for message in client.subscribe(channel, last_id=first.id, transport=transport):  # type: ignore[arg-type]
                    got.append(message)
                    if len(got) == 5:
                        return

            reader = asyncio.create_task(read())
            for i in range(5):
                await client.publish(channel, {"i": i})
            await asyncio.wait_for(reader, 10)
            assert [m.data for m in got] == [{"i": i} for i in range(5)]
            assert got[-1].cursor == got[-1].id and got[0].channel == channel

    asyncio.run(scenario())


def test_a_subscription_rides_out_a_server_restart_and_reports_the_gap(
    start_server: Callable[..., ServerProcess], channel: str
) -> None:
    port = str(free_port())
    srv = start_server("--port", port)
    gaps: list[list[str]] = []

    async def scenario() -> None:
        nonlocal srv
        async with AsyncClient(srv.url) as client:
            messages = client.subscribe(channel, transport="sse", on_gap=gaps.append)
            before = asyncio.create_task(anext(messages))
            await asyncio.to_thread(wait_until, lambda: _count(srv, channel) == 1, 5, "the subscription")
            await client.publish(channel, "before")
            assert (await asyncio.wait_for(before, 10)).data == "before"
            srv.terminate()
            srv = start_server("--port", port)  # the memory broker starts empty: a gap
            after = asyncio.create_task(anext(messages))
            await asyncio.to_thread(wait_until, lambda: _count(srv, channel) == 1, 15, "the client to resubscribe")
            await client.publish(channel, "after")
            assert (await asyncio.wait_for(after, 15)).data == "after"
            assert gaps == [[channel]]
            await messages.aclose()

    asyncio.run(scenario())


def test_blocking_client_and_missed_messages(start_server: Callable[..., ServerProcess], channel: str) -> None:
    srv = start_server("--buffer-size", "2")
    gaps: list[list[str]] = []
    with Client(srv.url) as client:
        first = client.publish(channel, "first")
        assert first.subscribers == 0 and first.channel == channel
        for data in ("a", "b", "c"):
            client.publish(channel, data)
        messages = client.subscribe(channel, last_id=first.id, poll_timeout=0, on_gap=gaps.append)
        assert [m.data for m in (next(messages), next(messages))] == ["b", "c"]
        assert gaps == [[channel]]
        messages.close()
        with pytest.raises(RequestRefused) as refused:
            client.publish("bad name!", 1)
        assert refused.value.status == 400 and refused.value.error == "invalid_channel"


def _count(srv: ServerProcess, channel: str) -> int:
    import httpx

    with httpx.Client(base_url=srv.url, timeout=10) as http:
        return subscribers(http, channel)


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_deleting_a_channel_ends_a_subscription_naming_it(server: ServerProcess, channel: str, transport: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            messages = client.subscribe(channel + "x", channel, transport=transport)  # type: ignore[arg-type]
            ended = asyncio.create_task(anext(messages))
            await asyncio.to_thread(wait_until, lambda: _count(server, channel) == 1, 5, "the subscription")
            await client.http.delete(f"/pub/{channel}")
            with pytest.raises(ChannelDeleted) as deleted:
                await asyncio.wait_for(ended, 10)
            assert deleted.value.channel == channel

    asyncio.run(scenario())


def test_the_old_name_of_request_refused_still_works_and_warns() -> None:
    import tidings.client

    with pytest.warns(DeprecationWarning, match="RequestRefused"):
        old = tidings.client.TidingsError  # type: ignore[attr-defined]
    assert old is RequestRefused


@pytest.mark.parametrize("transport", ["longpoll", "sse", "ws"])
def test_presence_and_its_events_on_every_transport(server: ServerProcess, channel: str, transport: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url) as client:
            heard: asyncio.Queue[PresenceEvent] = asyncio.Queue()

            async def listen() -> None:
                async for _ in client.subscribe(
                    channel,
                    transport=transport,  # type: ignore[arg-type]
                    user="lis",
                    on_presence=heard.put_nowait,
                ):
                    pass

            listener = asyncio.create_task(listen())
            try:
                await asyncio.wait_for(_until_listed(client, channel, {"lis"}), 10)
                # ann: another client, on a connection of its own
                async with AsyncClient(server.url) as other:
                    ann = asyncio.create_task(_drain(other.subscribe(channel, transport="sse", user="ann")))
                    event = await asyncio.wait_for(heard.get(), 10)
                    assert event == PresenceEvent("join", channel, "ann", None)
                    listed = await client.presence(channel)
                    assert {u.user: u.transports for u in listed.users} == {
                        "lis": [{"ws": "websocket"}.get(transport, transport)],
                        "ann": ["sse"],
                    }
                    assert listed.you is None and listed.anonymous == 0
                    ann.cancel()
            finally:
                listener.cancel()

    asyncio.run(scenario())


async def _until_listed(client: AsyncClient, channel: str, users: set[str]) -> None:
    while {u.user for u in (await client.presence(channel)).users} != users:
        await asyncio.sleep(0.02)


async def _drain(messages: AsyncIterator[Message]) -> None:
    async for _ in messages:
        pass
