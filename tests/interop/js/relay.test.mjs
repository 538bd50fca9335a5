// The device relay through both of its doors: the Phoenix `relay` topic (official
// `phoenix` client) and the raw `/relay` WebSocket (plain `ws`), one shared directory.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import { Hub, uniq, join, push, awaitPush, nextEvent, disconnect, waitFor, rawRelay } from "./helpers.mjs";

const hub = new Hub("relay");
const sockets = [];
const raws = [];

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await Promise.all(raws.map((r) => r.close()));
  await hub.cleanup();
});

/** A phoenix.js device `name` joined to `relay` (join params `meta`). */
async function relayDevice(name, meta = {}) {
  const socket = await hub.connect(name);
  sockets.push(socket);
  const ch = socket.channel("relay", meta);
  const j = await join(ch);
  assert.equal(j.status, "ok", `join relay as ${name}: ${JSON.stringify(j)}`);
  assert.deepEqual(j.response, {}, "relay join reply is {}");
  return { socket, ch, name: name.toLowerCase() };
}

/** A raw /relay device registered as `name` (extra register fields in `extra`). */
async function rawDevice(name, extra = {}) {
  const c = await rawRelay(hub);
  raws.push(c);
  const r = await c.server({ command: "register", device_name: name, ...extra });
  assert.deepEqual(r, { success: true }, `register ${name} on /relay`);
  c.name = name.toLowerCase();
  return c;
}

async function phxDevices(ch) {
  const r = await push(ch, "get_devices");
  assert.equal(r.status, "ok", `get_devices: ${JSON.stringify(r)}`);
  assert.ok(Array.isArray(r.response.devices), `get_devices reply: ${JSON.stringify(r.response)}`);
  return r.response.devices;
}

async function rawDevices(c) {
  const r = await c.server({ command: "get_devices" });
  assert.equal(r.success, true, `raw get_devices: ${JSON.stringify(r)}`);
  assert.ok(Array.isArray(r.response), `raw get_devices response is a list: ${JSON.stringify(r)}`);
  return r.response;
}

// A payload that survives the trip only if the hub forwards it untouched.
const PAYLOAD = { command: "on", color: [128, 0, 255], nested: { ok: true, n: null, f: 1.5 }, text: "grüß 🔒 \"q\"" };

hub.test("two phoenix devices exchange packets via `send` (event `packet` {sender, payload})", async () => {
  const a = await relayDevice(uniq("js-relay-a"));
  const b = await relayDevice(uniq("js-relay-b"));

  const atB = nextEvent(b.ch, "packet");
  const r = await push(a.ch, "send", { target: b.name, payload: PAYLOAD });
  assert.equal(r.status, "ok", `send a->b: ${JSON.stringify(r)}`);
  assert.deepEqual(r.response, {});
  assert.deepEqual(await atB, { sender: a.name, payload: PAYLOAD });

  // And back, with a non-object payload (the payload is "any" JSON).
  const atA = nextEvent(a.ch, "packet");
  const r2 = await push(b.ch, "send", { target: a.name, payload: ["ack", 1] });
  assert.equal(r2.status, "ok", `send b->a: ${JSON.stringify(r2)}`);
  assert.deepEqual(await atA, { sender: b.name, payload: ["ack", 1] });
});

hub.test("names are case-insensitive: the relay registers the socket name lower-cased", async () => {
  const mixed = uniq("Js-Relay-MiXed");
  const a = await relayDevice(mixed);
  const b = await relayDevice(uniq("js-relay-peer"));
  assert.ok((await phxDevices(b.ch)).includes(mixed.toLowerCase()), "lower-cased name listed");
  assert.ok(!(await phxDevices(b.ch)).includes(mixed), "original-case name not listed");

  // Sending to any spelling reaches it; the sender is named lower-case.
  const atA = nextEvent(a.ch, "packet");
  const r = await push(b.ch, "send", { target: mixed.toUpperCase(), payload: 1 });
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.deepEqual(await atA, { sender: b.name, payload: 1 });
  const atB = nextEvent(b.ch, "packet");
  await push(a.ch, "send", { target: b.name, payload: 2 });
  assert.deepEqual(await atB, { sender: mixed.toLowerCase(), payload: 2 });
});

hub.test("a raw /relay device and a phoenix device exchange packets both ways", async () => {
  const phx = await relayDevice(uniq("js-relay-phx"));
  const raw = await rawDevice(uniq("raw-relay-dev"));

  // raw -> phoenix
  const atPhx = nextEvent(phx.ch, "packet");
  const sent = await raw.packet({ target: phx.name, payload: PAYLOAD });
  assert.deepEqual(sent, { success: true }, "raw send is answered {success: true}");
  assert.deepEqual(await atPhx, { sender: raw.name, payload: PAYLOAD });

  // phoenix -> raw
  const atRaw = raw.nextPacket();
  const r = await push(phx.ch, "send", { target: raw.name, payload: { reply: "pong", n: 7 } });
  assert.equal(r.status, "ok", `phoenix send to raw device: ${JSON.stringify(r)}`);
  assert.deepEqual(await atRaw, { sender: phx.name, payload: { reply: "pong", n: 7 } });

  // raw -> raw, through the same directory
  const raw2 = await rawDevice(uniq("raw-relay-two"));
  const atRaw2 = raw2.nextPacket();
  assert.deepEqual(await raw.packet({ target: raw2.name.toUpperCase(), payload: "hi" }), { success: true });
  assert.deepEqual(await atRaw2, { sender: raw.name, payload: "hi" });
});

hub.test("get_devices from both doors lists devices from both doors; get_device_info too", async () => {
  const meta = { description: "A simple commandable LED strip", version: "1.0.1", interface: "https://example.test/led" };
  const phx = await relayDevice(uniq("js-relay-list"), meta);
  const raw = await rawDevice(uniq("raw-relay-list"), { description: "smart switch", version: "2.0" });

  for (const devices of [await phxDevices(phx.ch), await rawDevices(raw)]) {
    assert.ok(devices.includes(phx.name), `${phx.name} missing from ${JSON.stringify(devices)}`);
    assert.ok(devices.includes(raw.name), `${raw.name} missing from ${JSON.stringify(devices)}`);
  }

  // get_device_info, phoenix door, about both devices.
  const own = await push(phx.ch, "get_device_info", { device_name: phx.name });
  assert.equal(own.status, "ok", JSON.stringify(own));
  assert.deepEqual(own.response, { name: phx.name, ...meta });
  const other = await push(phx.ch, "get_device_info", { device_name: raw.name.toUpperCase() });
  assert.equal(other.status, "ok", JSON.stringify(other));
  assert.deepEqual(other.response, { name: raw.name, description: "smart switch", version: "2.0", interface: null });

  // get_device_info, raw door (also under the seed's example spelling `device_info`).
  const info = await raw.server({ command: "get_device_info", device_name: phx.name });
  assert.deepEqual(info, { success: true, response: { name: phx.name, ...meta } });
  const seedSpelling = await raw.server({ command: "device_info", device_name: raw.name });
  assert.equal(seedSpelling.success, true, JSON.stringify(seedSpelling));
  assert.equal(seedSpelling.response.name, raw.name);

  // Unknown device, both doors.
  const missing = uniq("nobody");
  const e = await push(phx.ch, "get_device_info", { device_name: missing });
  assert.deepEqual(e, { status: "error", response: { reason: "unknown device" } });
  const e2 = await raw.server({ command: "get_device_info", device_name: missing });
  assert.equal(e2.success, false, JSON.stringify(e2));
  assert.equal(typeof e2.error_message, "string");
});

hub.test("unknown target: error {reason: 'unknown target'} (phoenix) / success false (raw)", async () => {
  const phx = await relayDevice(uniq("js-relay-unknown"));
  const target = uniq("no-such-device");
  const reply = await new Promise((res, rej) => {
    phx.ch
      .push("send", { target, payload: { x: 1 } }, 3000)
      .receive("ok", (r) => rej(new Error(`send to an unknown target answered ok: ${JSON.stringify(r)}`)))
      .receive("error", res)
      .receive("timeout", () => rej(new Error("send to an unknown target: no reply")));
  });
  assert.deepEqual(reply, { reason: "unknown target" });
  assert.equal(phx.ch.state, "joined", "the channel stays joined after an error reply");

  const raw = await rawDevice(uniq("raw-relay-unknown"));
  const r = await raw.packet({ target, payload: 1 });
  assert.equal(r.success, false, JSON.stringify(r));
  assert.equal(r.error_message, "unknown target");
});

hub.test("packets of 1024 or more characters are refused; 1023 pass", async () => {
  const a = await relayDevice(uniq("js-relay-big"));
  const b = await relayDevice(uniq("js-relay-small"));

  // phoenix.js sends the `send` payload as JSON.stringify(payload) inside the frame, so
  // its length is exactly the packet's JSON length the limit applies to.
  const sendBody = (len) => {
    const body = { target: b.name, payload: "" };
    body.payload = "x".repeat(len - JSON.stringify(body).length);
    assert.equal(JSON.stringify(body).length, len);
    return body;
  };
  for (const len of [1024, 1500, 5000]) {
    const reply = await new Promise((res, rej) => {
      a.ch
        .push("send", sendBody(len), 3000)
        .receive("ok", () => rej(new Error(`a ${len}-char send was accepted`)))
        .receive("error", res)
        .receive("timeout", () => rej(new Error(`a ${len}-char send got no reply`)));
    });
    assert.deepEqual(reply, { reason: "packet too large" }, `${len}-char send`);
  }
  const atB = nextEvent(b.ch, "packet");
  const fits = sendBody(1023);
  const r = await push(a.ch, "send", fits);
  assert.equal(r.status, "ok", `a 1023-char send: ${JSON.stringify(r)}`);
  assert.deepEqual(await atB, { sender: a.name, payload: fits.payload });

  // Raw door: the whole text frame is the packet.
  const raw = await rawDevice(uniq("raw-relay-big"));
  const rawPacket = (len) => {
    const p = { target: b.name, payload: "" };
    p.payload = "y".repeat(len - JSON.stringify(p).length);
    return JSON.stringify(p);
  };
  const big = await raw.packet(rawPacket(1024));
  assert.equal(big.success, false, `1024-char raw packet: ${JSON.stringify(big)}`);
  assert.equal(big.error_message, "packet too large");
  const atB2 = nextEvent(b.ch, "packet");
  const small = await raw.packet(rawPacket(1023));
  assert.deepEqual(small, { success: true }, "1023-char raw packet");
  assert.equal((await atB2).sender, raw.name);
});

hub.test("a device that disconnects disappears from get_devices (both doors)", async () => {
  const watcher = await relayDevice(uniq("js-relay-watch"));
  const leaving = await relayDevice(uniq("js-relay-leaving"));
  const rawLeaving = await rawDevice(uniq("raw-relay-leaving"));
  const before_ = await phxDevices(watcher.ch);
  assert.ok(before_.includes(leaving.name) && before_.includes(rawLeaving.name), JSON.stringify(before_));

  await disconnect(leaving.socket);
  await rawLeaving.close();
  const after_ = await waitFor(
    async () => {
      const d = await phxDevices(watcher.ch);
      return !d.includes(leaving.name) && !d.includes(rawLeaving.name) && d;
    },
    3000,
    "disconnected devices to leave get_devices",
  );
  assert.ok(after_.includes(watcher.name), "the watcher is still listed");

  // And they are no longer reachable.
  const r = await push(watcher.ch, "send", { target: leaving.name, payload: 1 });
  assert.deepEqual(r, { status: "error", response: { reason: "unknown target" } });
  const r2 = await push(watcher.ch, "send", { target: rawLeaving.name, payload: 1 });
  assert.deepEqual(r2, { status: "error", response: { reason: "unknown target" } });
});

hub.test("leaving `relay` (socket still open) unregisters; raw `unregister` too", async () => {
  const watcher = await relayDevice(uniq("js-relay-watch2"));
  const dev = await relayDevice(uniq("js-relay-leave"));
  // phoenix.js resolves leave()'s "ok" locally at once (the channel is already
  // "leaving"), before the hub has seen the phx_leave: poll, bounded.
  const left = await awaitPush(dev.ch.leave(3000));
  assert.equal(left.status, "ok", JSON.stringify(left));
  await waitFor(
    async () => !(await phxDevices(watcher.ch)).includes(dev.name),
    3000,
    `${dev.name} to leave get_devices after leaving relay`,
  );

  const raw = await rawDevice(uniq("raw-relay-unreg"));
  assert.ok((await phxDevices(watcher.ch)).includes(raw.name));
  assert.deepEqual(await raw.server({ command: "unregister" }), { success: true });
  assert.ok(!(await phxDevices(watcher.ch)).includes(raw.name), "unregistered raw device still listed");
  // Unregistered, it may no longer send.
  const r = await raw.packet({ target: watcher.name, payload: 1 });
  assert.equal(r.success, false, JSON.stringify(r));
});

hub.test("raw /relay: register rules (before sending, reserved `server`, taken names, force)", async () => {
  const c = await rawRelay(hub);
  raws.push(c);
  const peer = await relayDevice(uniq("js-relay-peer2"));

  const unregistered = await c.packet({ target: peer.name, payload: 1 });
  assert.equal(unregistered.success, false, `send before register: ${JSON.stringify(unregistered)}`);
  assert.equal(typeof unregistered.error_message, "string");

  const reserved = await c.server({ command: "register", device_name: "Server" });
  assert.equal(reserved.success, false, `register "Server": ${JSON.stringify(reserved)}`);
  const invalid = await c.server({ command: "register", device_name: "has space" });
  assert.equal(invalid.success, false, `register "has space": ${JSON.stringify(invalid)}`);

  // A name held by a phoenix device is refused without force.
  const taken = await c.server({ command: "register", device_name: peer.name });
  assert.deepEqual(taken, { success: false, error_message: "name taken" });

  // Raw vs raw: force takes the name over and drops the old holder.
  const name = uniq("raw-relay-owner");
  const first = await rawDevice(name);
  const refused = await c.server({ command: "register", device_name: name.toUpperCase() });
  assert.deepEqual(refused, { success: false, error_message: "name taken" });
  const forced = await c.server({ command: "register", device_name: name, force: true });
  assert.deepEqual(forced, { success: true });
  let timer;
  const closed = await Promise.race([first.closed, new Promise((r) => (timer = setTimeout(() => r(null), 3000)))]);
  clearTimeout(timer);
  assert.ok(closed, "the displaced holder's connection is closed");
  assert.equal(closed.code, 1001, `close of the displaced holder: ${JSON.stringify(closed)}`);
  const atNew = c.nextPacket();
  const r = await push(peer.ch, "send", { target: name, payload: "to the new holder" });
  assert.equal(r.status, "ok", JSON.stringify(r));
  assert.deepEqual(await atNew, { sender: peer.name, payload: "to the new holder" });

  // A phoenix device cannot join `relay` under a name a raw device holds.
  const socket = await hub.connect(name);
  sockets.push(socket);
  const ch = socket.channel("relay");
  const j = await join(ch, 3000);
  ch.leave(); // stop phoenix.js from retrying the join
  assert.deepEqual(j, { status: "error", response: { reason: "name taken" } });
});

hub.test("raw /relay: malformed packets get success false and the connection survives", async () => {
  const c = await rawDevice(uniq("raw-relay-bad"));
  for (const bad of ["not json", "[1,2]", '{"target":"server"}', '{"payload":{}}', '{"target":"server","payload":"get_devices"}']) {
    const r = await c.packet(bad);
    assert.equal(r.success, false, `${bad} -> ${JSON.stringify(r)}`);
    assert.equal(typeof r.error_message, "string", `${bad} -> ${JSON.stringify(r)}`);
  }
  const unknownCmd = await c.server({ command: "self_destruct" });
  assert.equal(unknownCmd.success, false, JSON.stringify(unknownCmd));
  assert.ok(c.isOpen, "connection still open");
  assert.ok((await rawDevices(c)).includes(c.name), "still registered and answering");
});

hub.test("one registration rule on both doors: reserved names, case, force from either door", async () => {
  // A phoenix socket named `server` (any case) is refused as the raw door refuses it.
  const srvSocket = await hub.connect("Server");
  sockets.push(srvSocket);
  const srv = srvSocket.channel("relay");
  const refusedSrv = await join(srv, 3000);
  srv.leave(); // stop phoenix.js from retrying the join
  assert.deepEqual(refusedSrv, { status: "error", response: { reason: "invalid device_name" } });
  const c = await rawRelay(hub);
  raws.push(c);
  assert.deepEqual(await c.server({ command: "register", device_name: "SERVER" }), {
    success: false,
    error_message: "invalid device_name",
  });

  // Phoenix takes a raw device's name over with `force` (join params), in another case.
  const sender = await rawDevice(uniq("js-rule-sender"));
  const name = uniq("js-rule-garage");
  const holder = await rawDevice(name);
  const socket = await hub.connect(name.toUpperCase());
  sockets.push(socket);
  const plain = socket.channel("relay");
  const taken = await join(plain, 3000);
  plain.leave();
  assert.deepEqual(taken, { status: "error", response: { reason: "name taken" } });
  const ch = socket.channel("relay", { force: true });
  const j = await join(ch);
  assert.deepEqual(j, { status: "ok", response: {} }, `forced join: ${JSON.stringify(j)}`);
  // The raw holder is told the raw door's way: a notice, then close 1001.
  const notice = await holder.next((m) => m && m.error_message !== undefined, 3000, "takeover notice");
  assert.deepEqual(notice, { success: false, error_message: "name taken over by another connection" });
  let timer;
  const closed = await Promise.race([holder.closed, new Promise((r) => (timer = setTimeout(() => r(null), 3000)))]);
  clearTimeout(timer);
  assert.equal(closed && closed.code, 1001, `close of the displaced raw holder: ${JSON.stringify(closed)}`);
  const atPhx = nextEvent(ch, "packet");
  const sent = await sender.packet({ target: name, payload: "to phoenix" });
  assert.deepEqual(sent, { success: true });
  assert.deepEqual(await atPhx, { sender: sender.name, payload: "to phoenix" });

  // And back: raw takes it from the phoenix device, which gets phx_close on `relay` only.
  const closedCh = new Promise((res) => ch.onClose(() => res(true)));
  const forced = await c.server({ command: "register", device_name: name, force: true });
  assert.deepEqual(forced, { success: true });
  assert.equal(await closedCh, true, "phoenix relay channel closed");
  assert.ok(socket.isConnected(), "the phoenix socket stays connected");
  const atRaw = c.nextPacket();
  assert.deepEqual(await sender.packet({ target: name.toUpperCase(), payload: "to raw" }), { success: true });
  assert.deepEqual(await atRaw, { sender: sender.name, payload: "to raw" });
});
