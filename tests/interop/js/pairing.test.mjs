// The official `phoenix` JS client as a lock during pairing: the admin API starts a
// pairing, the hub pushes `mode:pair`, the lock answers `pair:complete`.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import { Hub, uniq, join, push, nextEvent, disconnect, sleep } from "./helpers.mjs";

const hub = new Hub("pairing");
const sockets = [];

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await hub.cleanup();
});

const MODE_PAIR_KEYS = ["expires_at", "lock", "name", "pair_id", "type"];

/** A connected lock device joined to lock:<serial>. */
async function lockDevice(prefix) {
  const socket = await hub.connect(uniq(prefix));
  sockets.push(socket);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  const j = await join(ch);
  assert.equal(j.status, "ok", `join: ${JSON.stringify(j)}`);
  return { socket, ch, serial, lock: j.response };
}

/** Starts a pairing through the admin API; resolves with {request (201 body), modePair (payload)}. */
async function startPairing(ch, serial, body) {
  const modePair = nextEvent(ch, "mode:pair");
  const res = await hub.api("POST", `/api/locks/${encodeURIComponent(serial)}/pair`, body);
  assert.equal(res.status, 201, `POST pair: ${JSON.stringify(res)}`);
  for (const k of ["pair_id", "lock", "name", "type", "expires_at"]) {
    assert.ok(k in res.body, `pair response lacks "${k}": ${JSON.stringify(res.body)}`);
  }
  const payload = await modePair;
  for (const k of MODE_PAIR_KEYS) {
    assert.ok(k in payload, `mode:pair payload lacks "${k}": ${JSON.stringify(payload)}`);
  }
  assert.equal(payload.pair_id, res.body.pair_id, "mode:pair carries the created request's pair_id");
  return { request: res.body, modePair: payload };
}

/** Does `value` (an item's/request's `lock` field) designate this lock? */
function refersTo(value, lock) {
  if (value === lock.serial || value === lock.uuid) return true;
  return value !== null && typeof value === "object" && (value.serial === lock.serial || value.uuid === lock.uuid);
}

hub.test("pairing round trip: mode:pair -> pair:complete ok {} -> listed in /api/pairings", async () => {
  const { socket, ch, serial, lock } = await lockDevice("js-pair-lock");

  // A second instance of the lock's topic gets mode:pair too; an admin watcher of
  // events:<serial> gets the completed pairing (never the lock's own topic: the shipped
  // firmware has no handler for a pair:complete push).
  const admin = await hub.connect(uniq("js-pair-admin"));
  sockets.push(admin);
  const view = admin.channel(`lock:${serial}`);
  const vj = await join(view);
  assert.equal(vj.status, "ok", JSON.stringify(vj));
  const viewModePair = nextEvent(view, "mode:pair");
  const events = admin.channel(`events:${serial}`);
  const ej = await join(events);
  assert.equal(ej.status, "ok", JSON.stringify(ej));
  let lockGotPairComplete = false;
  ch.on("pair:complete", () => { lockGotPairComplete = true; });

  const { request, modePair } = await startPairing(ch, serial, { name: "front tag", type: "tag", ttl_secs: 60 });
  assert.equal(modePair.name, "front tag");
  assert.equal(modePair.type, "tag");
  assert.equal(request.name, "front tag");
  assert.equal(request.type, "tag");
  assert.ok(refersTo(modePair.lock, lock), `mode:pair lock ${JSON.stringify(modePair.lock)} is not this lock`);
  assert.ok(!Number.isNaN(Date.parse(modePair.expires_at)) || typeof modePair.expires_at === "number",
    `expires_at is a timestamp: ${JSON.stringify(modePair.expires_at)}`);
  assert.deepEqual(await viewModePair, modePair, "mode:pair is a broadcast on the topic");

  const itemSerial = uniq("TAG");
  const viewComplete = nextEvent(events, "pair:complete");
  const r = await push(ch, "pair:complete", { ...modePair, serial: itemSerial });
  assert.equal(r.status, "ok", `pair:complete reply: ${JSON.stringify(r)}`);
  assert.deepEqual(r.response, {});

  const broadcast = await viewComplete;
  assert.equal(broadcast.serial, itemSerial, `pair:complete broadcast: ${JSON.stringify(broadcast)}`);

  const list = await hub.api("GET", "/api/pairings");
  assert.equal(list.status, 200, JSON.stringify(list));
  assert.ok(Array.isArray(list.body.requests), `requests is a list: ${JSON.stringify(list.body)}`);
  assert.ok(Array.isArray(list.body.items), `items is a list: ${JSON.stringify(list.body)}`);
  const item = list.body.items.find((i) => i.serial === itemSerial);
  assert.ok(item, `paired item ${itemSerial} not in ${JSON.stringify(list.body.items)}`);
  assert.equal(item.name, "front tag");
  assert.equal(item.type, "tag");
  assert.ok(refersTo(item.lock, lock), `item.lock ${JSON.stringify(item.lock)} is not this lock`);

  // The channel is still usable afterwards.
  const reset = await push(ch, "reset", {});
  assert.equal(reset.status, "ok", JSON.stringify(reset));
  assert.equal(socket.isConnected(), true);
  assert.equal(lockGotPairComplete, false, "pair:complete is not pushed on the lock's topic");

  // The firmware's access:request: {uuid: the lock's own UUID, device: the item's serial}.
  const granted = await push(ch, "access:request", { uuid: lock.uuid, device: itemSerial });
  assert.deepEqual(granted, { status: "ok", response: { access: true, user: "front tag" } });
  const refused = await push(ch, "access:request", { uuid: lock.uuid, device: uniq("TAG") });
  assert.deepEqual(refused, { status: "ok", response: { access: false, user: null } });
  const wrong = await push(ch, "access:request", { uuid: "00000000-0000-4000-8000-000000000000", device: itemSerial });
  assert.deepEqual(wrong, { status: "error", response: { reason: "wrong lock" } });
});

hub.test("a pairing started while the lock is offline is pushed right after its next join", async () => {
  const serial = uniq("SN");
  const name = uniq("js-pair-offline");
  const first = await hub.connect(name);
  const j = await join(first.channel(`lock:${serial}`));
  assert.equal(j.status, "ok", JSON.stringify(j));
  await disconnect(first);

  const started = await hub.api("POST", `/api/locks/${encodeURIComponent(serial)}/pair`, { name: "late tag" });
  assert.equal(started.status, 201, JSON.stringify(started));
  assert.equal(started.body.delivered, false);

  const socket = await hub.connect(name);
  sockets.push(socket);
  const ch = socket.channel(`lock:${serial}`);
  const modePair = nextEvent(ch, "mode:pair");
  const rejoined = await join(ch);
  assert.equal(rejoined.status, "ok", JSON.stringify(rejoined));
  const pushed = await modePair;
  assert.equal(pushed.pair_id, started.body.pair_id);
  const r = await push(ch, "pair:complete", { ...pushed, serial: uniq("TAG") });
  assert.equal(r.status, "ok", JSON.stringify(r));
  const list = await hub.api("GET", "/api/pairings");
  const req = list.body.requests.find((x) => x.pair_id === started.body.pair_id);
  assert.ok(req.delivered_at && req.completed_at, JSON.stringify(req));
  assert.equal(req.deliveries, 1);
});

hub.test("a lock that does not accept `state` is not pushed it; watchers and its reset reply see the change", async () => {
  const socket = await hub.connect(uniq("js-no-state"));
  sockets.push(socket);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`);
  assert.equal((await join(ch)).status, "ok");
  let pushed = false;
  ch.on("state", () => { pushed = true; });
  const watcher = socket.channel(`events:${serial}`);
  assert.equal((await join(watcher)).status, "ok");
  const seen = nextEvent(watcher, "state");
  const put = await hub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.deepEqual(await seen, { serial, state: { locked: false } });
  const reset = await push(ch, "reset", {});
  assert.deepEqual(reset.response.state, { locked: false });
  assert.equal(pushed, false, "no state push reached a lock that did not ask for it");
});

hub.test("pairing with defaults (empty POST body) still round-trips", async () => {
  const { ch, serial } = await lockDevice("js-pair-default");
  const { modePair } = await startPairing(ch, serial, {});
  const itemSerial = uniq("TAG");
  const r = await push(ch, "pair:complete", { ...modePair, serial: itemSerial });
  assert.equal(r.status, "ok", `pair:complete reply: ${JSON.stringify(r)}`);
  assert.deepEqual(r.response, {});
  const list = await hub.api("GET", "/api/pairings");
  assert.ok(list.body.items.some((i) => i.serial === itemSerial), JSON.stringify(list.body.items));
});

hub.test("tampered pair:complete is refused with an error reason and nothing is paired", async () => {
  const { ch, serial } = await lockDevice("js-pair-tamper");
  const { modePair } = await startPairing(ch, serial, { name: "back door phone", type: "mobile_phone", ttl_secs: 60 });
  assert.equal(modePair.type, "mobile_phone");

  const cases = [
    ["changed name", { ...modePair, name: "evil tag", serial: uniq("TAG-T1") }],
    ["changed type", { ...modePair, type: modePair.type === "tag" ? "mobile_phone" : "tag", serial: uniq("TAG-T2") }],
    ["changed expires_at", { ...modePair, expires_at: "2999-01-01T00:00:00Z", serial: uniq("TAG-T3") }],
    ["unknown pair_id", { ...modePair, pair_id: "00000000-0000-4000-8000-000000000000", serial: uniq("TAG-T4") }],
    ["missing serial", { ...modePair }],
  ];
  for (const [what, payload] of cases) {
    const r = await push(ch, "pair:complete", payload);
    assert.equal(r.status, "error", `${what}: expected error, got ${JSON.stringify(r)}`);
    assert.equal(typeof r.response?.reason, "string", `${what}: error has a reason: ${JSON.stringify(r.response)}`);
    assert.ok(r.response.reason.length > 0, `${what}: reason is not empty`);
  }

  const list = await hub.api("GET", "/api/pairings");
  assert.equal(list.status, 200, JSON.stringify(list));
  const tampered = list.body.items.filter((i) => String(i.serial).startsWith("TAG-T"));
  assert.deepEqual(tampered, [], "no tampered item may be recorded");

  // The channel survived all of that.
  const reset = await push(ch, "reset", {});
  assert.equal(reset.status, "ok", JSON.stringify(reset));
});

hub.test("pair:complete after the request expired is refused", async () => {
  const { ch, serial } = await lockDevice("js-pair-expired");
  const { modePair } = await startPairing(ch, serial, { name: "slow tag", type: "tag", ttl_secs: 1 });
  await sleep(2100);
  const itemSerial = uniq("TAG-EXP");
  const r = await push(ch, "pair:complete", { ...modePair, serial: itemSerial });
  assert.equal(r.status, "error", `expired request: expected error, got ${JSON.stringify(r)}`);
  assert.equal(typeof r.response?.reason, "string", JSON.stringify(r.response));
  const list = await hub.api("GET", "/api/pairings");
  assert.ok(!list.body.items.some((i) => i.serial === itemSerial), "expired pairing recorded an item");
});
