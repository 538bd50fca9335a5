// The official `phoenix` JS client against the `lock:<serial>` channel:
// connect params, join reply shape, reset, unknown events, `state` pushes,
// and refused connections.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import {
  Hub,
  uniq,
  join,
  push,
  awaitPush,
  nextEvent,
  disconnect,
  sleep,
  upgradeStatusOf,
  UUID_RE,
  LOCK_KEYS,
} from "./helpers.mjs";

const hub = new Hub("lock");
const sockets = [];

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await hub.cleanup();
});

async function connect(name) {
  const s = await hub.connect(name);
  sockets.push(s);
  return s;
}

/** Asserts the documented join/reset reply of a lock seen for the first time. */
function assertFreshLock(resp, serial) {
  assert.equal(typeof resp, "object", `reply is not an object: ${JSON.stringify(resp)}`);
  for (const k of LOCK_KEYS) assert.ok(k in resp, `reply lacks "${k}": ${JSON.stringify(resp)}`);
  assert.match(resp.uuid, UUID_RE, "uuid is a UUID string");
  assert.equal(resp.serial, serial);
  assert.equal(resp.name, serial, "a new lock is named after its serial");
  assert.equal(resp.mode, 1, "a new lock is in mode 1 (integer)");
  assert.deepEqual(resp.feature_flags, ["lock"], "a new lock has the lock feature (HOMEHUB_LOCK_FEATURE_FLAGS)");
  assert.deepEqual(resp.config, {});
  assert.deepEqual(resp.state, { locked: true }, "default intended state is fail-secure");
}

hub.test("join a new lock: ok with uuid, serial, name, mode, feature_flags, config, state", async () => {
  const socket = await connect(uniq("js-join"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, {});
  const r = await join(ch);
  assert.equal(r.status, "ok", `join reply: ${JSON.stringify(r)}`);
  assertFreshLock(r.response, serial);
  assert.equal(ch.state, "joined");
});

hub.test("uuid is stable for a serial and distinct between serials", async () => {
  const serialA = uniq("SN-A");
  const serialB = uniq("SN-B");

  const s1 = await connect(uniq("js-uuid-1"));
  const a1 = await join(s1.channel(`lock:${serialA}`));
  const b1 = await join(s1.channel(`lock:${serialB}`));
  assert.equal(a1.status, "ok", JSON.stringify(a1));
  assert.equal(b1.status, "ok", JSON.stringify(b1));
  assert.notEqual(a1.response.uuid, b1.response.uuid, "different serials get different uuids");

  // Another device, another connection: same serial -> same uuid.
  const s2 = await connect(uniq("js-uuid-2"));
  const a2 = await join(s2.channel(`lock:${serialA}`));
  assert.equal(a2.status, "ok", JSON.stringify(a2));
  assert.equal(a2.response.uuid, a1.response.uuid);
  assert.deepEqual(a2.response, a1.response, "second join returns the same lock record");

  // The admin API agrees.
  const api = await hub.api("GET", `/api/locks/${encodeURIComponent(serialA)}`);
  assert.equal(api.status, 200, JSON.stringify(api));
  assert.equal(api.body.uuid, a1.response.uuid);
});

hub.test("reset replies ok with the same shape as the join reply", async () => {
  const socket = await connect(uniq("js-reset"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", `reset reply: ${JSON.stringify(r)}`);
  assertFreshLock(r.response, serial);
  assert.deepEqual(r.response, j.response, "reset answers what join answered");
});

hub.test("unknown event: error {reason: 'unknown event'} and the channel stays joined", async () => {
  const socket = await connect(uniq("js-unknown"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const r = await push(ch, "no_such_event", { some: "payload" });
  assert.equal(r.status, "error", `reply to unknown event: ${JSON.stringify(r)}`);
  assert.deepEqual(r.response, { reason: "unknown event" });

  // Neither phx_error nor phx_close: the client still considers the channel joined...
  await sleep(100);
  assert.equal(ch.state, "joined", "channel must stay joined after an unknown event");

  // ... and the server agrees: a normal event still works.
  const again = await push(ch, "reset", {});
  assert.equal(again.status, "ok", `reset after unknown event: ${JSON.stringify(again)}`);
  assert.equal(again.response.uuid, j.response.uuid);
});

hub.test("PUT /api/locks/{serial}/state pushes `state` with the new state; reset reads it back", async () => {
  const socket = await connect(uniq("js-state"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const next = nextEvent(ch, "state");
  const newState = { locked: false, auto_relock_secs: 30 };
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, newState);
  assert.equal(put.status, 200, `PUT state: ${JSON.stringify(put)}`);
  assert.deepEqual(await next, newState, "`state` payload is the new intended state");

  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.deepEqual(r.response.state, newState, "reset reads the intended state fresh from the store");
  assert.equal(r.response.uuid, j.response.uuid);

  // A second change is pushed too (lock back).
  const next2 = nextEvent(ch, "state");
  const put2 = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: true });
  assert.equal(put2.status, 200, JSON.stringify(put2));
  assert.deepEqual(await next2, { locked: true });
});

hub.test("admin API refuses a missing or wrong bearer token with 401", async () => {
  const serial = uniq("SN");
  const none = await hub.api("PUT", `/api/locks/${serial}/state`, { locked: false }, { token: null });
  assert.equal(none.status, 401, JSON.stringify(none));
  const wrong = await hub.api("GET", "/api/pairings", undefined, { token: "not-the-token" });
  assert.equal(wrong.status, 401, JSON.stringify(wrong));
});

/** Connects a phoenix.js socket with `params`; expects onError and never onOpen. */
async function assertRefused(params) {
  const socket = hub.socket(params, { reconnectAfterMs: () => 200 });
  let opened = false;
  socket.onOpen(() => {
    opened = true;
  });
  let timer;
  const errored = new Promise((res) => {
    timer = setTimeout(() => res("timeout"), 3000);
    socket.onError((e) => res(e));
  });
  socket.connect();
  const first = await errored;
  clearTimeout(timer);
  assert.notEqual(first, "timeout", "onError did not fire within 3 s");
  // Give a reconnect attempt or two the chance to (wrongly) succeed.
  await sleep(500);
  socket.disconnect();
  assert.equal(opened, false, `connection with params ${JSON.stringify(params)} must never open`);
}

/** The raw HTTP status of the upgrade request (the browser-like client cannot see it). */
const upgradeStatus = (query) => upgradeStatusOf(`${hub.socketUrl}/websocket?${query}`);

hub.test("missing `name` connect param: the connection never opens (onError fires)", async () => {
  await assertRefused({});
  assert.equal(await upgradeStatus("vsn=2.0.0"), 403, "upgrade without name is refused with HTTP 403");
});

hub.test("invalid `name` values are refused like a missing name", async () => {
  await assertRefused({ name: "has space" });
  assert.equal(await upgradeStatus("name=&vsn=2.0.0"), 403, "empty name");
  assert.equal(await upgradeStatus(`name=${"a".repeat(65)}&vsn=2.0.0`), 403, "65-char name");
  assert.equal(await upgradeStatus("name=bad%2Fname&vsn=2.0.0"), 403, "name with '/'");
  // The boundary that must work: 64 chars of the allowed alphabet.
  assert.equal(await upgradeStatus(`name=${"Az09._:-".repeat(8)}&vsn=2.0.0`), 101, "64-char valid name");
});

hub.test("an invalid serial is refused at join with {reason: 'invalid serial'}", async () => {
  const socket = await connect(uniq("js-badserial"));
  for (const serial of ["has space", "x".repeat(65), "slash/serial"]) {
    const ch = socket.channel(`lock:${serial}`);
    const r = await join(ch);
    assert.equal(r.status, "error", `join lock:${serial}: ${JSON.stringify(r)}`);
    assert.deepEqual(r.response, { reason: "invalid serial" }, `join lock:${serial}`);
    ch.leave(); // stop phoenix.js from retrying the join
  }
  // 64 chars of the allowed alphabet is fine.
  const ok = await join(socket.channel(`lock:${"Az09._:-".repeat(8)}`));
  assert.equal(ok.status, "ok", JSON.stringify(ok));
});

hub.test("leave, then join again on the same socket: same lock", async () => {
  const socket = await connect(uniq("js-leave"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));
  const left = await awaitPush(ch.leave(5000));
  assert.equal(left.status, "ok", `leave reply: ${JSON.stringify(left)}`);
  assert.equal(ch.state, "closed");

  const ch2 = socket.channel(`lock:${serial}`);
  const j2 = await join(ch2);
  assert.equal(j2.status, "ok", JSON.stringify(j2));
  assert.equal(j2.response.uuid, j.response.uuid);
  const r = await push(ch2, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
});

hub.test("heartbeats are answered (fast heartbeat interval keeps the socket open)", async () => {
  // phoenix.js closes the socket ("heartbeat timeout") if a heartbeat is not
  // answered with the same ref before the next one is due.
  const socket = await hub.connect(uniq("js-heartbeat"), { heartbeatIntervalMs: 100 });
  sockets.push(socket);
  const ch = socket.channel(`lock:${uniq("SN")}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));
  let heartbeats = 0;
  socket.onMessage((msg) => {
    if (msg.topic === "phoenix" && msg.event === "phx_reply") heartbeats += 1;
  });
  await sleep(700);
  assert.ok(heartbeats >= 3, `only ${heartbeats} heartbeat replies in 700 ms`);
  assert.deepEqual(socket.closeEvents, [], "socket was closed (heartbeat timeout?)");
  assert.equal(socket.isConnected(), true);
  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
});
