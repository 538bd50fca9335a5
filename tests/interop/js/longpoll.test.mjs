// The official `phoenix` JS client over the long-poll transport (`transport: LongPoll`,
// `/socket/longpoll`): join, push/reply, batched pushes, server pushes, relay packets with a
// WebSocket device (JSON and binary), session expiry, reconnect after a hub restart, and
// `longPollFallbackMs` when WebSockets are refused or blackholed by a proxy in front of the hub.
//
// The hub runs with HOMEHUB_LONGPOLL_WINDOW_MS=1000, so a parked GET returns after 1 s and an
// abandoned session is dropped after about 2 s.

import { before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import {
  Hub,
  Socket,
  LongPoll,
  WebSocket,
  uniq,
  join,
  joinRecordingRejoins,
  push,
  nextEvent,
  disconnect,
  waitFor,
  sleep,
  tryConnect,
  UUID_RE,
  LOCK_KEYS,
} from "./helpers.mjs";

const WINDOW_MS = 1000;
const hub = new Hub("longpoll", { env: { HOMEHUB_LONGPOLL_WINDOW_MS: String(WINDOW_MS) } });
const sockets = [];
const proxies = [];

// Every long-poll request phoenix.js makes goes through the global fetch (Node has no
// XMLHttpRequest). Record them, so a test can check what actually went over the wire.
const lpRequests = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (url, opts = {}) => {
  const u = String(url);
  if (u.includes("/socket/longpoll")) {
    lpRequests.push({ method: opts.method || "GET", url: u, body: typeof opts.body === "string" ? opts.body : null });
  }
  return realFetch(url, opts);
};

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  for (const p of proxies) await p.close();
  await hub.cleanup();
});

/** A phoenix.js socket over LongPoll, open. */
async function lpConnect(name, opts = {}) {
  const socket = hub.socket({ name }, { transport: LongPoll, ...opts });
  sockets.push(socket);
  const outcome = await tryConnect(socket, 5000);
  assert.equal(outcome, "open", `long-poll socket ${name} did not open (errors: ${JSON.stringify(socket.errorEvents)})`);
  assert.ok(socket.connection.transport instanceof LongPoll, "the connection runs over LongPoll");
  return socket;
}

/** A phoenix.js socket over WebSocket, open. */
async function wsConnect(name) {
  const socket = await hub.connect(name);
  sockets.push(socket);
  return socket;
}

function assertFreshLock(resp, serial) {
  assert.equal(typeof resp, "object", `reply is not an object: ${JSON.stringify(resp)}`);
  assert.deepEqual(Object.keys(resp).sort(), LOCK_KEYS, `reply keys: ${JSON.stringify(resp)}`);
  assert.match(resp.uuid, UUID_RE, "uuid is a UUID string");
  assert.equal(resp.serial, serial);
  assert.equal(resp.name, serial);
  assert.equal(resp.mode, 1);
  assert.deepEqual(resp.feature_flags, ["lock"], "a new lock has the lock feature (HOMEHUB_LOCK_FEATURE_FLAGS)");
  assert.deepEqual(resp.config, {});
  assert.deepEqual(resp.state, { locked: true });
}

async function devices() {
  const r = await hub.api("GET", "/api/devices");
  assert.equal(r.status, 200, JSON.stringify(r));
  return r.body.devices;
}

hub.test("long-poll: join a lock → ok with the documented reply; the hub lists the device", async () => {
  const name = uniq("lp-join");
  const socket = await lpConnect(name);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", `join reply: ${JSON.stringify(j)}`);
  assertFreshLock(j.response, serial);
  assert.equal(ch.state, "joined");

  const dev = (await devices()).find((d) => d.name === name);
  assert.ok(dev, `device ${name} not in /api/devices`);
  assert.equal(dev.door, "phoenix");
  assert.deepEqual(dev.topics, [`lock:${serial}`]);

  // The same lock over WebSocket: same uuid (one socket implementation behind both doors).
  const ws = await wsConnect(uniq("lp-join-ws"));
  const j2 = await join(ws.channel(`lock:${serial}`));
  assert.equal(j2.status, "ok", JSON.stringify(j2));
  assert.deepEqual(j2.response, j.response);
});

hub.test("long-poll: reset → ok with the join reply; unknown event → error, channel stays joined", async () => {
  const socket = await lpConnect(uniq("lp-reset"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", `reset reply: ${JSON.stringify(r)}`);
  assert.deepEqual(r.response, j.response);

  const u = await push(ch, "no_such_event", { x: 1 });
  assert.equal(u.status, "error", JSON.stringify(u));
  assert.deepEqual(u.response, { reason: "unknown event" });
  assert.equal(ch.state, "joined");

  // A reply that has to wait for the next poll: nothing queued for > 1 window, then a push.
  await sleep(WINDOW_MS + 300);
  const again = await push(ch, "reset", {});
  assert.equal(again.status, "ok", JSON.stringify(again));
  assert.equal(again.response.uuid, j.response.uuid);
});

hub.test("long-poll: pushes made in one tick go as one ndjson POST and every one is answered", async () => {
  const socket = await lpConnect(uniq("lp-batch"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const before_ = lpRequests.length;
  const N = 20;
  const pushes = [];
  for (let i = 0; i < N; i++) pushes.push(push(ch, i % 5 === 4 ? "no_such_event" : "reset", { i }));
  const replies = await Promise.all(pushes);
  replies.forEach((r, i) => {
    if (i % 5 === 4) assert.deepEqual(r, { status: "error", response: { reason: "unknown event" } }, `push ${i}`);
    else assert.deepEqual(r, { status: "ok", response: j.response }, `push ${i}`);
  });

  const posts = lpRequests.slice(before_).filter((r) => r.method === "POST");
  const lines = posts.map((p) => (p.body || "").split("\n").length);
  assert.equal(lines.reduce((a, b) => a + b, 0), N, `POST line counts ${JSON.stringify(lines)}`);
  assert.ok(Math.max(...lines) > 1, `pushes were not batched: POST line counts ${JSON.stringify(lines)}`);
});

hub.test("long-poll: PUT /api/locks/{serial}/state reaches the device as a `state` push", async () => {
  const socket = await lpConnect(uniq("lp-state"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  // Let the client park a GET first, so the push has to wake it.
  await sleep(200);
  const next = nextEvent(ch, "state");
  const newState = { locked: false, auto_relock_secs: 30 };
  const t0 = Date.now();
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, newState);
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.deepEqual(await next, newState);
  assert.ok(Date.now() - t0 < WINDOW_MS, `the push took ${Date.now() - t0} ms: a parked GET must return at once`);

  const r = await push(ch, "reset", {});
  assert.deepEqual(r.response.state, newState);
});

hub.test("long-poll device and WebSocket device exchange relay packets (JSON both ways, binary LP → WS)", async () => {
  const lpName = uniq("lp-relay");
  const wsName = uniq("ws-relay");
  const lp = await lpConnect(lpName);
  const ws = await wsConnect(wsName);
  const lpCh = lp.channel("relay");
  const wsCh = ws.channel("relay");
  assert.equal((await join(lpCh)).status, "ok");
  assert.equal((await join(wsCh)).status, "ok");

  const r = await push(wsCh, "get_devices");
  assert.ok(r.response.devices.includes(lpName), `get_devices from WS: ${JSON.stringify(r)}`);

  // WS → long-poll, JSON.
  const payload = { command: "on", color: [1, 2, 3], text: "grüß 🔒" };
  const atLp = nextEvent(lpCh, "packet");
  const s1 = await push(wsCh, "send", { target: lpName, payload });
  assert.deepEqual(s1, { status: "ok", response: {} });
  assert.deepEqual(await atLp, { sender: wsName, payload });

  // Long-poll → WS, JSON.
  const atWs = nextEvent(wsCh, "packet");
  const s2 = await push(lpCh, "send", { target: wsName, payload: ["ack", 1] });
  assert.deepEqual(s2, { status: "ok", response: {} });
  assert.deepEqual(await atWs, { sender: lpName, payload: ["ack", 1] });

  // Long-poll → WS, binary: phoenix.js base64-encodes the V2 binary push in its ndjson POST;
  // the V2 WebSocket target gets a binary push `packet:<sender>` (an ArrayBuffer).
  const bytes = Uint8Array.from([0, 1, 2, 250, 255, 10, 13, 91, 34]);
  const binAtWs = nextEvent(wsCh, `packet:${lpName}`);
  const s3 = await push(lpCh, `send:${wsName}`, bytes.buffer.slice(0));
  assert.deepEqual(s3, { status: "ok", response: {} }, "binary send from long-poll");
  const got = await binAtWs;
  assert.ok(got instanceof ArrayBuffer, `binary packet payload is ${Object.prototype.toString.call(got)}`);
  assert.deepEqual([...new Uint8Array(got)], [...bytes]);

  // WS → long-poll, binary: a long-poll session cannot carry binary frames, so the sender
  // is told (rather than the packet vanishing).
  const s4 = await push(wsCh, `send:${lpName}`, Uint8Array.from([1, 2, 3]).buffer);
  assert.deepEqual(s4, { status: "error", response: { reason: "target cannot receive binary packets" } });
  assert.equal(wsCh.state, "joined");
  assert.equal(lpCh.state, "joined");
});

hub.test("long-poll: when the hub ends a session (admin disconnect), phoenix.js gets session_gone and rejoins", async () => {
  const name = uniq("lp-gone");
  const socket = await lpConnect(name);
  const ch = socket.channel(`lock:${uniq("SN")}`);
  const joins = await joinRecordingRejoins(ch);

  const kick = await hub.api("POST", `/api/devices/${name}/disconnect`);
  assert.equal(kick.status, 204, JSON.stringify(kick));
  await waitFor(() => joins.length >= 2, 5000, "the channel to rejoin on a new session");
  // The next GET carried the dead session's token: the hub opened a new session (410 with a
  // new token), which phoenix.js >= 1.8.2 reports as "session_gone" before reconnecting.
  assert.deepEqual({ errors: socket.errorEvents, closes: socket.closeEvents }, { errors: [410], closes: [3410] });
  assert.equal(joins[1].uuid, joins[0].uuid);
  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
});

hub.test("long-poll: a session nobody polls any more is dropped (device leaves /api/devices)", async () => {
  const name = uniq("lp-expire");
  const socket = await lpConnect(name);
  const ch = socket.channel(`lock:${uniq("SN")}`);
  assert.equal((await join(ch)).status, "ok");
  assert.ok((await devices()).some((d) => d.name === name));
  // phoenix.js sends nothing on disconnect over long-poll: it just stops polling.
  await disconnect(socket);
  const t0 = Date.now();
  await waitFor(async () => !(await devices()).some((d) => d.name === name), 5 * WINDOW_MS, `${name} to be dropped`);
  // Dropped after two windows without a GET; the last GET started up to one window before
  // the client went away, so at least about one window after it.
  const took = Date.now() - t0;
  assert.ok(took >= WINDOW_MS / 2, `session dropped after only ${took} ms (window ${WINDOW_MS} ms)`);
});

hub.test("long-poll: after a hub restart the client reconnects, rejoins and gets the same uuid", async () => {
  const socket = await lpConnect(uniq("lp-restart"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const joins = await joinRecordingRejoins(ch);
  const first = joins[0];
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));

  const port = hub.port;
  const exit = await hub.stop();
  assert.ok(!exit?.forced, "hub must exit promptly on SIGTERM with long-poll sessions open");
  await waitFor(() => socket.closeEvents.length > 0, 5000, "the client to notice the hub is gone");
  await hub.start(port);

  await waitFor(() => joins.length >= 2, 10_000,
    `the channel to rejoin (close codes ${JSON.stringify(socket.closeEvents)}, channel ${ch.state})`);
  assert.ok(socket.connection.transport instanceof LongPoll, "still on long-poll");
  const second = joins[1];
  assert.equal(second.uuid, first.uuid, "uuid survives a restart");
  assert.deepEqual(second.state, { locked: false }, "intended state survives a restart");

  // The new session works both ways.
  const r = await push(ch, "reset", {});
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.equal(r.response.uuid, first.uuid);
  const next = nextEvent(ch, "state");
  const put2 = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: true });
  assert.equal(put2.status, 200, JSON.stringify(put2));
  assert.deepEqual(await next, { locked: true });
});

// ---------------------------------------------------------------------------
// Fallback: a proxy in front of the hub forwards plain HTTP (long-poll) but does not let
// WebSocket upgrades through, either refusing them (HTTP 400) or never answering them.

/** An HTTP proxy to the hub; `upgrades` is "refuse" (400) or "blackhole" (no answer). */
async function startProxy(upgrades) {
  const stats = { upgrades: 0, longpoll: 0 };
  const held = new Set();
  const server = http.createServer((req, res) => {
    if (req.url.startsWith("/socket/longpoll")) stats.longpoll += 1;
    const upstream = http.request(
      { host: "127.0.0.1", port: hub.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, sock) => {
    stats.upgrades += 1;
    if (upgrades === "refuse") {
      sock.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    } else {
      held.add(sock);
      sock.on("close", () => held.delete(sock));
      sock.on("error", () => {});
    }
  });
  await new Promise((res) => server.listen(0, "127.0.0.1", res));
  const proxy = {
    stats,
    url: `ws://127.0.0.1:${server.address().port}/socket`,
    close: () =>
      new Promise((res) => {
        for (const s of held) s.destroy();
        server.closeAllConnections();
        server.close(() => res());
      }),
  };
  proxies.push(proxy);
  return proxy;
}

/** A phoenix.js socket through `proxy` with WebSocket as primary and the LongPoll fallback. */
function fallbackSocket(proxy, name, longPollFallbackMs) {
  const socket = new Socket(proxy.url, { transport: WebSocket, longPollFallbackMs, params: { name } });
  socket.closeEvents = [];
  socket.errorEvents = [];
  socket.onClose((ev) => socket.closeEvents.push(ev && ev.code));
  socket.onError((err) => socket.errorEvents.push(err));
  sockets.push(socket);
  return socket;
}

async function assertWorksOverFallback(socket) {
  assert.equal(socket.transport, LongPoll, "the socket switched its transport to LongPoll");
  assert.ok(socket.connection.transport instanceof LongPoll);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));
  assertFreshLock(j.response, serial);
  const r = await push(ch, "reset", {});
  assert.deepEqual(r, { status: "ok", response: j.response });
  const next = nextEvent(ch, "state");
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.deepEqual(await next, { locked: false });
}

hub.test("longPollFallbackMs: WebSocket upgrade refused (HTTP 400) → falls back to long-poll at once", async () => {
  const proxy = await startProxy("refuse");
  const socket = fallbackSocket(proxy, uniq("lp-fallback"), 5000);
  const t0 = Date.now();
  const opened = new Promise((res) => socket.onOpen(res));
  socket.connect();
  let timer;
  await Promise.race([
    opened,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`no open within 4 s; errors ${JSON.stringify(socket.errorEvents)}`)), 4000);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.ok(Date.now() - t0 < 5000, "fell back on the WebSocket error, not on the 5 s timer");
  assert.ok(proxy.stats.upgrades >= 1, "the client tried the WebSocket first");
  assert.ok(socket.errorEvents.length >= 1, "the refused WebSocket was reported through onError");
  await assertWorksOverFallback(socket);
  assert.ok(proxy.stats.longpoll >= 3, `long-poll requests through the proxy: ${proxy.stats.longpoll}`);
});

hub.test("longPollFallbackMs: WebSocket upgrade never answered → falls back after the timeout", async () => {
  const proxy = await startProxy("blackhole");
  const socket = fallbackSocket(proxy, uniq("lp-fallback-bh"), 500);
  const t0 = Date.now();
  assert.equal(await tryConnect(socket, 4000), "open");
  const took = Date.now() - t0;
  assert.ok(took >= 450, `opened after ${took} ms, before the 500 ms fallback timer`);
  assert.equal(proxy.stats.upgrades, 1, "one WebSocket attempt");
  await assertWorksOverFallback(socket);
});
