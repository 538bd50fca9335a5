// The official `phoenix` JS client across a hub restart: the client reconnects and
// rejoins by itself (default reconnect/rejoin timers), and the lock keeps its uuid.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import { Hub, uniq, join, joinRecordingRejoins, push, disconnect, waitFor, UUID_RE } from "./helpers.mjs";

const hub = new Hub("restart");
const sockets = [];

before(() => hub.start()); // first start: --bind 127.0.0.1:0, the port is read back
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await hub.cleanup();
});

hub.test("after a hub restart the client rejoins by itself and gets the same uuid and state", async () => {
  const socket = await hub.connect(uniq("js-restart"));
  sockets.push(socket);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);

  const joins = await joinRecordingRejoins(ch);
  const first = joins[0];
  assert.match(first.uuid, UUID_RE, JSON.stringify(first));

  // Change the intended state, so the restart has to bring back more than the uuid.
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));

  const port = hub.port;
  const exit = await hub.stop();
  assert.ok(!exit?.forced, "hub must exit promptly on SIGTERM");
  await waitFor(() => socket.closeEvents.length > 0, 5000, "the client to notice the close");
  assert.notEqual(socket.closeEvents[0], 1000,
    "the hub closed sockets with 1000 on shutdown: phoenix.js will NOT reconnect after a server-sent 1000 (use 1001/1012)");
  assert.notEqual(ch.state, "joined");

  await hub.start(port);
  assert.equal(hub.port, port);

  await waitFor(() => joins.length >= 2, 15_000,
    `the channel to rejoin (close codes seen: ${JSON.stringify(socket.closeEvents)}, channel state ${ch.state})`);
  const second = joins[1];
  assert.equal(ch.state, "joined");
  assert.equal(second.uuid, first.uuid, "uuid survives a restart");
  assert.equal(second.serial, serial);
  assert.deepEqual(second.state, { locked: false }, "intended state survives a restart");
  assert.deepEqual({ ...second, state: first.state }, first, "the rest of the record is unchanged");

  // The rejoined channel works.
  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.equal(r.response.uuid, first.uuid);

  // A fresh client after the restart sees the same uuid too.
  const other = await hub.connect(uniq("js-restart-2"));
  sockets.push(other);
  const j = await join(other.channel(`lock:${serial}`));
  assert.equal(j.status, "ok", JSON.stringify(j));
  assert.equal(j.response.uuid, first.uuid);
});
