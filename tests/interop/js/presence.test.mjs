// Presence on `presence:devices`, read through the official client's `Presence` helper
// (`onSync`, `list`): devices appear, their metas follow lock and relay joins, raw /relay
// registrations appear with door "relay", and disconnected devices disappear.

import { before, after } from "node:test";
import assert from "node:assert/strict";
import { Presence } from "phoenix";

import { Hub, uniq, join, awaitPush, disconnect, waitFor, rawRelay } from "./helpers.mjs";

const hub = new Hub("presence");
const sockets = [];
const raws = [];

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await Promise.all(raws.map((r) => r.close()));
  await hub.cleanup();
});

async function connect(name) {
  const s = await hub.connect(name);
  sockets.push(s);
  return s;
}

/**
 * An observer device joined to `presence:devices` with a `Presence` helper. `view.byKey`
 * is the latest `presence.list()` (as a key -> metas map) seen by `onSync`; `view.until`
 * waits (bounded) until a predicate over it holds.
 */
async function observe() {
  const name = uniq("js-observer");
  const socket = await connect(name);
  const ch = socket.channel("presence:devices", {});
  const presence = new Presence(ch);
  const view = { name, ch, presence, syncs: 0, byKey: null, joins: [], leaves: [] };
  presence.onSync(() => {
    view.syncs += 1;
    view.byKey = Object.fromEntries(presence.list((key, { metas }) => [key, metas]));
  });
  presence.onJoin((key, current, joined) => view.joins.push({ key, current, joined }));
  presence.onLeave((key, current, left) => view.leaves.push({ key, current, left }));
  view.until = (pred, what, timeoutMs = 3000) =>
    waitFor(() => view.byKey && pred(view.byKey), timeoutMs, `${what}; presence list: ${JSON.stringify(view.byKey)}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", `join presence:devices: ${JSON.stringify(j)}`);
  // The first sync comes from presence_state, pushed right after the join reply.
  await view.until(() => view.syncs > 0, "the first onSync (presence_state)");
  return view;
}

/** Asserts the single meta of `key` has the documented fields and returns it. */
function onlyMeta(byKey, key) {
  const metas = byKey[key];
  assert.ok(Array.isArray(metas), `no presence for ${key}: ${JSON.stringify(byKey)}`);
  assert.equal(metas.length, 1, `one connection, one meta: ${JSON.stringify(metas)}`);
  const m = metas[0];
  assert.equal(typeof m.phx_ref, "string", `phx_ref: ${JSON.stringify(m)}`);
  assert.ok(m.phx_ref.length > 0);
  assert.ok(Number.isInteger(m.online_at), `online_at is an integer: ${JSON.stringify(m)}`);
  assert.ok(Math.abs(m.online_at - Date.now() / 1000) < 120, `online_at is unix seconds, now: ${JSON.stringify(m)}`);
  assert.ok(Array.isArray(m.locks), `locks is a list: ${JSON.stringify(m)}`);
  assert.equal(typeof m.relay, "boolean", `relay is a boolean: ${JSON.stringify(m)}`);
  return m;
}

const metaIs = (key, door, locks, relay) => (byKey) => {
  const m = byKey[key] && byKey[key].length === 1 && byKey[key][0];
  return m && m.door === door && m.relay === relay && JSON.stringify(m.locks) === JSON.stringify(locks);
};

hub.test("the observer's own join: presence_state lists itself (door phoenix, no locks, not on relay)", async () => {
  const view = await observe();
  await view.until((s) => view.name in s, "the observer itself");
  const m = onlyMeta(view.byKey, view.name);
  assert.equal(m.door, "phoenix");
  assert.deepEqual(m.locks, []);
  assert.equal(m.relay, false);
});

hub.test("a phoenix device appears, and its metas follow its lock and relay joins and leaves", async () => {
  const view = await observe();
  const name = uniq("js-pres-dev");
  const socket = await connect(name);

  await view.until(metaIs(name, "phoenix", [], false), `${name} connected, no channels`);
  const first = onlyMeta(view.byKey, name);
  assert.ok(view.joins.some((j) => j.key === name && !j.current), "onJoin fired for the new key");

  const [sn1, sn2] = [uniq("SN-B"), uniq("SN-A")].sort();
  const lock2 = socket.channel(`lock:${sn2}`);
  assert.equal((await join(lock2)).status, "ok");
  await view.until(metaIs(name, "phoenix", [sn2], false), `${name} with lock ${sn2}`);
  const lock1 = socket.channel(`lock:${sn1}`);
  assert.equal((await join(lock1)).status, "ok");
  await view.until(metaIs(name, "phoenix", [sn1, sn2], false), `${name} with locks ${sn1}, ${sn2} (sorted)`);

  const relay = socket.channel("relay");
  assert.equal((await join(relay)).status, "ok");
  await view.until(metaIs(name, "phoenix", [sn1, sn2], true), `${name} on the relay`);
  const joinedAll = onlyMeta(view.byKey, name);
  assert.notEqual(joinedAll.phx_ref, first.phx_ref, "a changed meta gets a new phx_ref");
  assert.equal(joinedAll.online_at, first.online_at, "online_at does not change with channel joins");

  assert.equal((await awaitPush(lock2.leave(3000))).status, "ok");
  await view.until(metaIs(name, "phoenix", [sn1], true), `${name} after leaving lock ${sn2}`);
  assert.equal((await awaitPush(relay.leave(3000))).status, "ok");
  await view.until(metaIs(name, "phoenix", [sn1], false), `${name} after leaving relay`);
  onlyMeta(view.byKey, name);
});

hub.test("several devices at once: each appears with its own metas", async () => {
  const view = await observe();
  const a = uniq("js-pres-lockdev");
  const b = uniq("js-pres-relaydev");
  const serial = uniq("SN");
  const [sa, sb] = await Promise.all([connect(a), connect(b)]);
  const [ja, jb] = await Promise.all([join(sa.channel(`lock:${serial}`)), join(sb.channel("relay", { version: "1" }))]);
  assert.equal(ja.status, "ok", JSON.stringify(ja));
  assert.equal(jb.status, "ok", JSON.stringify(jb));
  await view.until(
    (s) => metaIs(a, "phoenix", [serial], false)(s) && metaIs(b, "phoenix", [], true)(s),
    `${a} on lock ${serial} and ${b} on the relay`,
  );
  onlyMeta(view.byKey, a);
  onlyMeta(view.byKey, b);
  assert.ok(view.name in view.byKey, "the observer is still listed");
});

hub.test("a raw /relay registration appears with door 'relay' and leaves when it disconnects", async () => {
  const view = await observe();
  const raw = await rawRelay(hub);
  raws.push(raw);
  const name = uniq("raw-pres-dev");
  // Not present before it registers: a bare connection has no name.
  assert.ok(!(name in view.byKey));
  assert.deepEqual(await raw.server({ command: "register", device_name: name, version: "3" }), { success: true });
  await view.until(metaIs(name, "relay", [], true), `raw device ${name} registered`);
  onlyMeta(view.byKey, name);

  await raw.close();
  await view.until((s) => !(name in s), `raw device ${name} gone after its connection closed`);
  assert.ok(
    view.leaves.some((l) => l.key === name && l.current.metas.length === 0),
    "onLeave fired with no metas left for the key",
  );
});

hub.test("a raw /relay `unregister` removes it from presence while the connection stays open", async () => {
  const view = await observe();
  const raw = await rawRelay(hub);
  raws.push(raw);
  const name = uniq("raw-pres-unreg");
  assert.deepEqual(await raw.server({ command: "register", device_name: name }), { success: true });
  await view.until(metaIs(name, "relay", [], true), `raw device ${name} registered`);
  assert.deepEqual(await raw.server({ command: "unregister" }), { success: true });
  await view.until((s) => !(name in s), `raw device ${name} gone after unregister`);
  assert.ok(raw.isOpen);
});

hub.test("relay `unregister` / `register` events (channel stays joined) update the relay meta", async () => {
  // Spec §1: `register` / `unregister` events on `relay` are accepted with the seed's
  // meaning; after `unregister` the device is off the relay (get_devices no longer lists
  // it, packets to it fail), so its Presence meta must say `relay: false`.
  const view = await observe();
  const name = uniq("js-pres-unreg");
  const socket = await connect(name);
  const relay = socket.channel("relay");
  assert.equal((await join(relay)).status, "ok");
  await view.until(metaIs(name, "phoenix", [], true), `${name} on the relay`);

  const un = await awaitPush(relay.push("unregister", {}, 3000));
  assert.equal(un.status, "ok", JSON.stringify(un));
  const devices = await awaitPush(relay.push("get_devices", {}, 3000));
  assert.ok(!devices.response.devices.includes(name), `unregistered, get_devices: ${JSON.stringify(devices)}`);
  await view.until(metaIs(name, "phoenix", [], false), `${name} relay:false after unregister`);

  const re = await awaitPush(relay.push("register", {}, 3000));
  assert.equal(re.status, "ok", JSON.stringify(re));
  await view.until(metaIs(name, "phoenix", [], true), `${name} relay:true after register`);
});

hub.test("a phoenix device that disconnects disappears from the list", async () => {
  const view = await observe();
  const name = uniq("js-pres-leaving");
  const stays = uniq("js-pres-staying");
  const socket = await connect(name);
  await connect(stays);
  assert.equal((await join(socket.channel(`lock:${uniq("SN")}`))).status, "ok");
  assert.equal((await join(socket.channel("relay"))).status, "ok");
  await view.until((s) => s[name] && s[name][0].relay === true && stays in s, `${name} on the relay and ${stays}`);

  await disconnect(socket);
  await view.until((s) => !(name in s), `${name} gone after disconnecting`);
  assert.ok(stays in view.byKey, "the other device is still listed");
  assert.ok(view.name in view.byKey, "the observer is still listed");
});

hub.test("a late observer gets the current state in presence_state", async () => {
  const name = uniq("js-pres-early");
  const serial = uniq("SN");
  const socket = await connect(name);
  assert.equal((await join(socket.channel(`lock:${serial}`))).status, "ok");
  assert.equal((await join(socket.channel("relay"))).status, "ok");
  const raw = await rawRelay(hub);
  raws.push(raw);
  const rawName = uniq("raw-pres-early");
  assert.deepEqual(await raw.server({ command: "register", device_name: rawName }), { success: true });

  const view = await observe();
  // Everything is already in the first sync: no diff needed.
  assert.ok(metaIs(name, "phoenix", [serial], true)(view.byKey), `first sync: ${JSON.stringify(view.byKey)}`);
  assert.ok(metaIs(rawName, "relay", [], true)(view.byKey), `first sync: ${JSON.stringify(view.byKey)}`);
  onlyMeta(view.byKey, name);
  onlyMeta(view.byKey, rawName);
});
