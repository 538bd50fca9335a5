"""phoenix-channels-python-client (PyPI, asyncio) against lock channels.

This client is subscribe-only (it exposes whether a join succeeded, not the join
reply, and has no push API), so it covers: connecting with extra query params (it
always adds `api_key`), joining over V2 *and* V1, receiving hub pushes (`state`),
refusal of a connection without `name` (403, which it treats as terminal), and
automatic reconnect + rejoin after a hub restart.

Client quirk (not a hub bug): in V2 mode, version 0.4.1 drops every frame whose
join_ref differs from its join's, including topic broadcasts, which Phoenix sends
with a null join_ref (`[null, null, topic, event, payload]`). The hub therefore
delivers its pushes to a lock (`state`, `mode:pair`) as per-channel pushes carrying
the channel's join_ref (`[J, null, topic, event, payload]`, Phoenix's intercepted
broadcast), and `state` delivery is checked over both V2 and V1.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from phoenix_channels_python_client import PHXChannelsClient, ReconnectPolicy
from phoenix_channels_python_client.exceptions import PHXConnectionError

from conftest import uniq

TIMEOUT_S = 5

# Short delays so the restart test stays fast; everything else is the library default.
FAST = ReconnectPolicy(
    base_delay_s=0.05,
    max_delay_s=0.5,
    service_restart_min_delay_s=0.05,
    service_restart_max_delay_s=0.2,
    rapid_first_min_delay_s=0.05,
    rapid_second_min_delay_s=0.1,
    rapid_cooldown_base_s=0.5,
    rapid_cooldown_max_s=1.0,
)


def client_for(hub, name: str | None, version: str = "2.0", **kw: Any) -> PHXChannelsClient:
    url = hub.ws_url if name is None else f"{hub.ws_url}?name={name}"
    return PHXChannelsClient(url, api_key="unused-by-homehub", protocol_version=version, **kw)


async def put_state(hub, serial: str, state: dict) -> None:
    status, body = await asyncio.to_thread(hub.api, "PUT", f"/api/locks/{serial}/state", state)
    assert status == 200, body


@pytest.mark.parametrize("version", ["2.0", "1.0"])
def test_join(hub, version):
    async def scenario() -> None:
        serial = uniq("SN")
        topic = f"lock:{serial}"
        async with client_for(hub, uniq("py-pcpc"), version) as client:
            await client.subscribe_to_topic(topic)  # raises unless the join reply is ok
            assert client.is_topic_joined(topic)
            # A second lock on the same connection.
            await client.subscribe_to_topic(f"lock:{uniq('SN')}")
            await client.unsubscribe_from_topic(topic)  # phx_leave -> ok reply
            assert not client.is_topic_joined(topic)

    assert client_for(hub, "x", version).get_protocol_handler().protocol_version.vsn.startswith(version[0])
    asyncio.run(scenario())


@pytest.mark.parametrize("version", ["2.0", "1.0"])
def test_hub_pushes(hub, version):
    async def scenario() -> None:
        serial = uniq("SN")
        topic = f"lock:{serial}"
        pushes: asyncio.Queue = asyncio.Queue()
        states: asyncio.Queue = asyncio.Queue()

        async with client_for(hub, uniq("py-pcpc"), version) as client:
            await client.subscribe_to_topic(topic)  # raises unless the join reply is ok
            assert client.is_topic_joined(topic)

            async def on_mode_pair(payload: dict) -> None:
                await pushes.put(payload)

            # A push meant for one lock carries its join_ref, which this library needs on V2.
            client.add_event_handler(topic, "mode:pair", on_mode_pair)
            status, req = await asyncio.to_thread(
                hub.api, "POST", f"/api/locks/{serial}/pair", {"name": f"py {version}"}
            )
            assert status == 201, req
            got = await asyncio.wait_for(pushes.get(), TIMEOUT_S)
            assert got["pair_id"] == req["pair_id"] and got["name"] == f"py {version}", got

            if version == "1.0":
                # This library cannot send join params, so its lock cannot ask for `state`
                # pushes ({"accepts": ["state"]}); a watcher of events:<serial> sees the
                # change as a broadcast. (On V2 the library drops frames whose join_ref is
                # null, which every Phoenix broadcast has: see tests/interop/README.md.)
                watch = f"events:{serial}"
                await client.subscribe_to_topic(watch)

                async def on_state(payload: dict) -> None:
                    await states.put(payload)

                client.add_event_handler(watch, "state", on_state)
                await put_state(hub, serial, {"locked": False, "via": version})
                got = await asyncio.wait_for(states.get(), TIMEOUT_S)
                assert got == {"serial": serial, "state": {"locked": False, "via": version}}

            # The lock exists now, with a uuid the admin API reports.
            status, lock = await asyncio.to_thread(hub.api, "GET", f"/api/locks/{serial}")
            assert status == 200, lock
            assert isinstance(lock.get("uuid"), str), lock

    asyncio.run(scenario())


def test_missing_name_is_terminal_refusal(hub):
    async def scenario() -> None:
        with pytest.raises(PHXConnectionError) as exc:
            async with client_for(hub, None):
                pass
        assert "403" in str(exc.value), str(exc.value)

    asyncio.run(scenario())


def test_reconnects_and_rejoins_after_restart_v1(hub):
    async def scenario() -> None:
        serial = uniq("SN")
        topic = f"lock:{serial}"
        states: asyncio.Queue = asyncio.Queue()
        reconnected = asyncio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        async with client_for(
            hub, uniq("py-pcpc-restart"), "1.0", reconnect_policy=FAST, on_reconnect=on_reconnect
        ) as client:
            await client.subscribe_to_topic(topic)
            watch = f"events:{serial}"
            await client.subscribe_to_topic(watch)

            async def on_state(payload: dict) -> None:
                await states.put(payload)

            client.add_event_handler(watch, "state", on_state)

            await asyncio.to_thread(hub.restart)
            await asyncio.wait_for(reconnected.wait(), 10)

            async def rejoined() -> None:
                while not (client.is_topic_joined(topic) and client.is_topic_joined(watch)):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(rejoined(), 10)
            # The rejoined channels receive broadcasts from the new hub process.
            await put_state(hub, serial, {"locked": False})
            got = await asyncio.wait_for(states.get(), TIMEOUT_S)
            assert got == {"serial": serial, "state": {"locked": False}}

    asyncio.run(scenario())
