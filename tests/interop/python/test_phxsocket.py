"""phxsocket (PyPI, threads + websockets) as a lock device.

phxsocket speaks the V1 serializer (`vsn=1.0.0`, JSON object frames), sends no
join_ref and uses *integer* refs counting from 0; it matches replies by comparing
the echoed `ref` with the integer it sent, so this also checks that the hub echoes
refs with their JSON type intact.
"""

from __future__ import annotations

import queue
import threading

import pytest
from phxsocket import Client

from conftest import assert_fresh_lock, uniq

TIMEOUT_S = 5


def call(fn, *args, timeout: float = TIMEOUT_S):
    """Run a blocking phxsocket call (which has no timeout of its own) with a timeout."""
    result: list = []
    error: list = []

    def run() -> None:
        try:
            result.append(fn(*args))
        except BaseException as e:  # noqa: BLE001
            error.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"{getattr(fn, '__qualname__', fn)} got no answer within {timeout} s")
    if error:
        raise error[0]
    return result[0]


def reply_of(sent, timeout: float = TIMEOUT_S) -> dict:
    """The phx_reply payload ({status, response}) of a push made with reply=True."""
    assert sent.event.wait(timeout), f"no reply within {timeout} s"
    return sent.message


@pytest.fixture
def client(hub):
    clients: list[Client] = []

    def make(name: str | None = None) -> Client:
        c = Client(hub.ws_url, {"name": name or uniq("py-phxsocket")})
        call(c.connect)
        clients.append(c)
        return c

    yield make
    for c in clients:
        try:
            c.close()
        except Exception:  # noqa: BLE001 -- already closed
            pass


def joined(client_factory, params=None):
    c = client_factory()
    serial = uniq("SN")
    ch = c.channel(f"lock:{serial}", params or {})
    resp = call(ch.join)
    return c, ch, serial, resp


def test_join_reply_shape(client):
    _, _, serial, resp = joined(client)
    assert_fresh_lock(resp, serial)


def test_reset_same_shape_as_join(client):
    _, ch, serial, resp = joined(client)
    r = reply_of(ch.push("reset", {}, reply=True))
    assert r["status"] == "ok", r
    assert_fresh_lock(r["response"], serial)
    assert r["response"] == resp


def test_same_serial_same_uuid_across_devices(client):
    _, _, serial, first = joined(client)
    c2 = client()
    again = call(c2.channel(f"lock:{serial}", {}).join)
    assert again["uuid"] == first["uuid"]


def test_unknown_event_error_and_channel_survives(client):
    _, ch, _, resp = joined(client)
    r = reply_of(ch.push("definitely:unknown", {"x": 1}, reply=True))
    assert r == {"status": "error", "response": {"reason": "unknown event"}}
    r2 = reply_of(ch.push("reset", {}, reply=True))
    assert r2["status"] == "ok", r2
    assert r2["response"]["uuid"] == resp["uuid"]


def test_state_push_after_put(client, hub):
    # `state` is pushed only to a lock that asked for it in its join params.
    _, ch, serial, _ = joined(client, {"accepts": ["state"]})
    states: queue.Queue = queue.Queue()
    ch.on("state", states.put)
    status, body = hub.api("PUT", f"/api/locks/{serial}/state", {"locked": False})
    assert status == 200, body
    assert states.get(timeout=TIMEOUT_S) == {"locked": False}


def test_pairing_round_trip(client, hub):
    _, ch, serial, lock = joined(client)
    mode_pair: queue.Queue = queue.Queue()
    ch.on("mode:pair", mode_pair.put)
    status, req = hub.api("POST", f"/api/locks/{serial}/pair", {"name": "py tag", "type": "tag", "ttl_secs": 60})
    assert status == 201, req
    payload = mode_pair.get(timeout=TIMEOUT_S)
    assert {"pair_id", "lock", "name", "type", "expires_at"} <= payload.keys(), payload
    assert payload["pair_id"] == req["pair_id"]

    # Tampered first: refused.
    bad = reply_of(ch.push("pair:complete", {**payload, "name": "not what you sent", "serial": "PY-TAMPER"}, reply=True))
    assert bad["status"] == "error", bad
    assert isinstance(bad["response"].get("reason"), str) and bad["response"]["reason"], bad

    item = uniq("PYTAG")
    ok = reply_of(ch.push("pair:complete", {**payload, "serial": item}, reply=True))
    assert ok == {"status": "ok", "response": {}}

    status, pairings = hub.api("GET", "/api/pairings")
    assert status == 200, pairings
    serials = [i.get("serial") for i in pairings["items"]]
    assert item in serials, pairings
    assert "PY-TAMPER" not in serials, pairings


def test_missing_name_is_refused_with_403(hub):
    c = Client(hub.ws_url, {})
    with pytest.raises(Exception) as exc:
        call(c.connect)
    # websockets >= 14: InvalidStatus(response); older: InvalidStatusCode(status_code).
    e = exc.value
    status = getattr(getattr(e, "response", None), "status_code", None) or getattr(e, "status_code", None)
    assert status == 403, f"expected HTTP 403 on the upgrade, got {e!r}"
