// A cluster of hub nodes (HOMEHUB_CLUSTER on one private NATS, one shared PostgreSQL
// database) seen through the official `phoenix` client, with the client on one node and
// its peer on another: relay packets, broadcasts, admin pushes, Presence, one socket per
// name, the admin API's cluster-wide view, node loss behind a balancer, a NATS outage,
// and the refusal of a cluster on SQLite.
//
// Needs HOMEHUB_TEST_NATS_BIN and HOMEHUB_TEST_POSTGRES_URL (scripts/test.sh sets both).

import { before, after, test } from "node:test";
import assert from "node:assert/strict";
import { Presence } from "phoenix";

import {
  Hub,
  Nats,
  Balancer,
  Socket,
  WebSocket,
  clusterHub,
  freshPostgresDatabase,
  dropPostgresDatabase,
  metric,
  uniq,
  join,
  joinRecordingRejoins,
  push,
  nextEvent,
  disconnect,
  waitFor,
  sleep,
  rawRelay,
  UUID_RE,
} from "./helpers.mjs";

const NODE_NAMES = ["a", "b", "c"];
const nats = new Nats("cluster");
const nodes = {}; // name -> Hub
let dbUrl = null;
const sockets = [];
const raws = [];
const balancers = [];

/** A phoenix socket that never reconnects by itself (for sockets the hub is meant to close). */
const NO_RECONNECT = { reconnectAfterMs: () => 3_600_000 };

// ---- set-up --------------------------------------------------------------------------

async function clusterView(hub) {
  const r = await hub.api("GET", "/api/cluster");
  return r.status === 200 ? r.body : null;
}

/** Waits until every running node reaches NATS and sees every running node. */
async function clusterFormed(timeoutMs = 20_000) {
  const up = NODE_NAMES.filter((n) => nodes[n] && nodes[n].proc);
  await waitFor(
    async () => {
      for (const n of up) {
        const v = await clusterView(nodes[n]).catch(() => null);
        if (!v || !v.connected) return false;
        const seen = new Set(v.nodes.map((x) => x.name));
        if (!up.every((m) => seen.has(m))) return false;
      }
      return true;
    },
    timeoutMs,
    `nodes ${up.join(", ")} to see each other`,
  );
}

/** (Re)starts the named nodes that are not running, and waits for the cluster to form. */
async function ensureUp(...names) {
  const down = names.filter((n) => !nodes[n].proc);
  await Promise.all(down.map((n) => nodes[n].start()));
  await clusterFormed();
}

/** SIGKILLs a node's process and waits for it to be gone. */
async function killNode(name) {
  const hub = nodes[name];
  const proc = hub.proc;
  assert.ok(proc, `node ${name} is not running`);
  hub.log.push(`----- test: SIGKILL node ${name} -----`);
  proc.kill("SIGKILL");
  hub.proc = null;
  await proc.exited;
}

before(
  async () => {
    await nats.start();
    dbUrl = await freshPostgresDatabase();
    for (const n of NODE_NAMES) nodes[n] = clusterHub(n, { natsUrl: nats.url, dbUrl });
    // The first node creates the schema; the others then open a ready database.
    await nodes.a.start();
    await Promise.all([nodes.b.start(), nodes.c.start()]);
    await clusterFormed();
  },
  { timeout: 60_000 },
);

after(
  async () => {
    await Promise.all(sockets.map(disconnect));
    await Promise.all(raws.map((r) => r.close()));
    await Promise.all(balancers.map((b) => b.stop()));
    await Promise.all(NODE_NAMES.filter((n) => nodes[n]).map((n) => nodes[n].cleanup()));
    await nats.cleanup();
    if (dbUrl) await dropPostgresDatabase(dbUrl);
  },
  { timeout: 60_000 },
);

/** `test()` whose failures carry the output of every node and of NATS. */
function ctest(name, fn, opts = {}) {
  return test(name, { timeout: 45_000, ...opts }, async (t) => {
    try {
      await fn(t);
    } catch (e) {
      await sleep(200); // let the nodes' last log lines arrive
      const logs = NODE_NAMES.filter((n) => nodes[n])
        .map((n) => `----- node ${n} (last 60 lines) -----\n${nodes[n].log.slice(-60).join("\n")}`)
        .join("\n");
      if (e && typeof e === "object") {
        e.message = `${e.message}\n${logs}\n----- nats (last 20 lines) -----\n${nats.log.slice(-20).join("\n")}\n----- end -----`;
      }
      throw e;
    }
  });
}

// ---- small helpers -------------------------------------------------------------------

async function connectOn(hub, name, opts = {}) {
  const s = await hub.connect(name, opts);
  sockets.push(s);
  return s;
}

/** A phoenix.js device `name` on `hub` joined to `relay`. */
async function relayDevice(hub, name, opts = {}) {
  const socket = await connectOn(hub, name, opts);
  const ch = socket.channel("relay", {});
  const j = await join(ch);
  assert.deepEqual(j, { status: "ok", response: {} }, `join relay as ${name} on ${hub.label}`);
  return { socket, ch, name: name.toLowerCase() };
}

/** Pushes `send` and resolves with {status, response} (timeout: status "timeout"). */
const send = (dev, target, payload) => push(dev.ch, "send", { target, payload }, 5000);

async function metricsOf(hub) {
  const r = await hub.api("GET", "/metrics");
  assert.equal(r.status, 200, `GET /metrics on ${hub.label}: ${JSON.stringify(r)}`);
  return r.body;
}

async function receivedBroadcasts(hub) {
  const v = metric(await metricsOf(hub), "homehub_cluster_messages_received_total", { kind: "broadcast" });
  assert.ok(Number.isFinite(v), `${hub.label} has no homehub_cluster_messages_received_total{kind="broadcast"}`);
  return v;
}

async function clusterConnected(hub) {
  return metric(await metricsOf(hub), "homehub_cluster_connected");
}

async function readyStatus(hub) {
  const res = await fetch(`${hub.httpUrl}/health/ready`);
  await res.text();
  return res.status;
}

async function devicesOf(hub) {
  const r = await hub.api("GET", "/api/devices");
  assert.equal(r.status, 200, `GET /api/devices on ${hub.label}: ${JSON.stringify(r)}`);
  assert.ok(Array.isArray(r.body.devices), JSON.stringify(r.body));
  return r.body.devices;
}

/** Resolves with the code of the socket's next close (rejects after timeoutMs). */
function nextClose(socket, timeoutMs = 5000) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`socket was not closed within ${timeoutMs} ms`)), timeoutMs);
    socket.onClose((ev) => {
      clearTimeout(timer);
      res(ev && ev.code);
    });
  });
}

const PAYLOAD = { command: "on", color: [1, 2, 3], nested: { ok: true, n: null }, text: "grüß 🔒" };

// ---- 1. relay ------------------------------------------------------------------------

ctest("relay across nodes: phoenix device on a -> phoenix device on b, and back", async () => {
  await ensureUp("a", "b");
  const x = await relayDevice(nodes.a, uniq("js-cl-x"));
  const y = await relayDevice(nodes.b, uniq("js-cl-y"));

  const atY = nextEvent(y.ch, "packet");
  const r = await send(x, y.name, PAYLOAD);
  assert.deepEqual(r, { status: "ok", response: {} }, "send a->b is answered ok {}");
  assert.deepEqual(await atY, { sender: x.name, payload: PAYLOAD });

  const atX = nextEvent(x.ch, "packet");
  const back = await send(y, x.name.toUpperCase(), ["ack", 1]);
  assert.deepEqual(back, { status: "ok", response: {} }, "send b->a (target in upper case)");
  assert.deepEqual(await atX, { sender: y.name, payload: ["ack", 1] });
});

ctest("relay across nodes: a target connected nowhere -> error 'unknown target' in < 500 ms", async () => {
  await ensureUp("a", "b", "c");
  const x = await relayDevice(nodes.a, uniq("js-cl-lonely"));
  const target = uniq("js-cl-nobody");
  const t0 = Date.now();
  const r = await send(x, target, { x: 1 });
  const elapsed = Date.now() - t0;
  assert.deepEqual(r, { status: "error", response: { reason: "unknown target" } });
  assert.ok(elapsed < 500, `unknown target took ${elapsed} ms to be refused`);
  assert.equal(x.ch.state, "joined");
});

ctest("relay across nodes: raw /relay device on b <-> phoenix device on a", async () => {
  await ensureUp("a", "b");
  const phx = await relayDevice(nodes.a, uniq("js-cl-phx"));
  const raw = await rawRelay(nodes.b);
  raws.push(raw);
  const rawName = uniq("raw-cl-dev");
  assert.deepEqual(await raw.server({ command: "register", device_name: rawName }), { success: true });

  const atPhx = nextEvent(phx.ch, "packet");
  assert.deepEqual(await raw.packet({ target: phx.name, payload: PAYLOAD }), { success: true }, "raw send b->a");
  assert.deepEqual(await atPhx, { sender: rawName, payload: PAYLOAD });

  const atRaw = raw.nextPacket(5000);
  const r = await send(phx, rawName, { reply: "pong" });
  assert.deepEqual(r, { status: "ok", response: {} }, "phoenix send a->raw on b");
  assert.deepEqual(await atRaw, { sender: phx.name, payload: { reply: "pong" } });

  // And the raw door is told about unknown targets the same way.
  const unknown = await raw.packet({ target: uniq("js-cl-nobody"), payload: 1 });
  assert.deepEqual(unknown, { success: false, error_message: "unknown target" });
});

// ---- 2. broadcasts -------------------------------------------------------------------

ctest("a lock's `event` on a reaches an `events` watcher on b; NATS carries it only to b", async () => {
  await ensureUp("a", "b", "c");
  const watcher = await connectOn(nodes.b, uniq("js-cl-watch"));
  const events = watcher.channel("events");
  assert.deepEqual(await join(events), { status: "ok", response: {} });

  const lockName = uniq("js-cl-lockhost");
  const lockSocket = await connectOn(nodes.a, lockName);
  const serial = uniq("SN");
  const lock = lockSocket.channel(`lock:${serial}`, {});
  const j = await join(lock);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const b0 = await receivedBroadcasts(nodes.b);
  const c0 = await receivedBroadcasts(nodes.c);

  const messages = [{ kind: "unlock", user: "alice" }, { kind: "lock", n: 2 }];
  for (const message of messages) {
    const got = nextEvent(events, "event");
    const r = await push(lock, "event", message);
    assert.deepEqual(r, { status: "ok", response: {} }, "the lock's `event` push is answered ok {}");
    assert.deepEqual(await got, { from: lockName, message }, "the watcher on b gets {from, message}");
  }

  await waitFor(async () => (await receivedBroadcasts(nodes.b)) >= b0 + messages.length, 3000, "b's counter");
  await sleep(300); // a late duplicate would show now
  assert.equal(
    (await receivedBroadcasts(nodes.b)) - b0,
    messages.length,
    "node b (one `events` watcher, not on events:<serial>) receives exactly one broadcast per event",
  );
  assert.equal((await receivedBroadcasts(nodes.c)) - c0, 0, "node c (no watcher) receives none");
});

// ---- 3. admin push -------------------------------------------------------------------

ctest("PUT /api/locks/S/state on node a pushes `state` to the lock joined on node b", async () => {
  await ensureUp("a", "b");
  const socket = await connectOn(nodes.b, uniq("js-cl-statelock"));
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));

  const next = nextEvent(ch, "state");
  const newState = { locked: false, auto_relock_secs: 15 };
  const put = await nodes.a.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, newState);
  assert.equal(put.status, 200, `PUT state on a: ${JSON.stringify(put)}`);
  assert.deepEqual(await next, newState, "the lock on b gets the new intended state");

  // The store is shared: the lock's `reset` on b reads what a wrote.
  const reset = await push(ch, "reset", {});
  assert.equal(reset.status, "ok", JSON.stringify(reset));
  assert.deepEqual(reset.response.state, newState);
  assert.equal(reset.response.uuid, j.response.uuid);
});

// ---- 5. one name, one socket ---------------------------------------------------------

ctest("one name, one socket cluster-wide: D on b closes D on a; D stays on b", async () => {
  await ensureUp("a", "b");
  const name = uniq("js-cl-dup");
  const onA = await connectOn(nodes.a, name, NO_RECONNECT);
  await waitFor(
    async () => (await devicesOf(nodes.b)).some((d) => d.name === name && d.node === "a"),
    3000,
    `${name} on node a, seen from b`,
  );
  const closedA = nextClose(onA);
  const onB = await connectOn(nodes.b, name, NO_RECONNECT);
  assert.equal(await closedA, 1001, "the older socket (node a) is closed with 1001");

  await sleep(500);
  assert.ok(onB.isConnected(), "the newer socket (node b) stays connected");
  assert.deepEqual(onB.closeEvents, [], "the newer socket was never closed");
  const listed = (await devicesOf(nodes.a)).filter((d) => d.name === name);
  assert.equal(listed.length, 1, `one connection named ${name}: ${JSON.stringify(listed)}`);
  assert.equal(listed[0].node, "b");
});

// ---- 6. admin API --------------------------------------------------------------------

ctest("admin API on node a: devices of every node, /api/cluster, disconnect on another node", async () => {
  await ensureUp("a", "b", "c");
  const da = uniq("js-cl-dev-a");
  const db = uniq("js-cl-dev-b");
  await connectOn(nodes.a, da, NO_RECONNECT);
  const sb = await connectOn(nodes.b, db, NO_RECONNECT);

  const devices = await devicesOf(nodes.a);
  const a1 = devices.filter((d) => d.name === da);
  const b1 = devices.filter((d) => d.name === db);
  assert.equal(a1.length, 1, `${da} listed once: ${JSON.stringify(devices)}`);
  assert.equal(b1.length, 1, `${db} listed once: ${JSON.stringify(devices)}`);
  assert.equal(a1[0].node, "a");
  assert.equal(b1[0].node, "b");
  assert.equal(b1[0].door, "phoenix");

  const view = await waitFor(
    async () => {
      const v = await clusterView(nodes.a);
      const b = v && v.nodes.find((n) => n.name === "b");
      return b && b.connections >= 1 && v;
    },
    4000,
    "node b's connections in a's /api/cluster",
  );
  assert.equal(view.clustered, true);
  assert.equal(view.node, "a");
  assert.equal(view.connected, true);
  assert.deepEqual(view.nodes.map((n) => n.name), ["a", "b", "c"], JSON.stringify(view.nodes));
  for (const n of view.nodes) {
    // `last_heartbeat_ms` is absent for the answering node itself (src/core/fabric.rs).
    const keys = ["connections", "name", "started_at", "state", "this_node"];
    if (n.name !== "a") keys.splice(1, 0, "last_heartbeat_ms");
    assert.deepEqual(Object.keys(n).sort(), keys, JSON.stringify(n));
    assert.equal(n.this_node, n.name === "a", JSON.stringify(n));
    assert.equal(n.state, "up", JSON.stringify(n));
    assert.ok(Number.isInteger(n.connections) && n.connections >= 0, JSON.stringify(n));
    assert.ok(!Number.isNaN(Date.parse(n.started_at)), `started_at: ${JSON.stringify(n)}`);
    if (!n.this_node) {
      // Nodes heartbeat every third of the 3 s node timeout; a silent one is dropped.
      assert.ok(Number.isInteger(n.last_heartbeat_ms) && n.last_heartbeat_ms < 5000, JSON.stringify(n));
    }
  }
  assert.ok(view.nodes.find((n) => n.name === "a").connections >= 1, "a counts its own connection");

  const closed = nextClose(sb);
  const r = await nodes.a.api("POST", `/api/devices/${db}/disconnect`);
  assert.equal(r.status, 204, `disconnect ${db} (on b) from a: ${JSON.stringify(r)}`);
  assert.equal(await closed, 1001, "the device's socket on b is closed with 1001");
  await waitFor(
    async () => !(await devicesOf(nodes.a)).some((d) => d.name === db),
    3000,
    `${db} to leave a's /api/devices`,
  );

  const missing = await nodes.a.api("POST", `/api/devices/${uniq("js-cl-nobody")}/disconnect`);
  assert.equal(missing.status, 404, JSON.stringify(missing));
});

// ---- 4. Presence ---------------------------------------------------------------------

ctest("Presence on a shows devices of b and c; SIGKILL c -> a gets the leave within 5 s", async () => {
  await ensureUp("a", "b", "c");
  const observer = await connectOn(nodes.a, uniq("js-cl-observer"));
  const ch = observer.channel("presence:devices", {});
  const presence = new Presence(ch);
  let byKey = null;
  const diffs = [];
  presence.onSync(() => {
    byKey = Object.fromEntries(presence.list((key, { metas }) => [key, metas]));
  });
  ch.on("presence_diff", (d) => diffs.push(d));
  const until = (pred, what, timeoutMs = 5000) =>
    waitFor(() => byKey && pred(byKey), timeoutMs, `${what}; presence: ${JSON.stringify(byKey)}`);
  assert.equal((await join(ch)).status, "ok");

  const onB = uniq("js-cl-pres-b");
  const onC = uniq("js-cl-pres-c");
  const onC2 = uniq("js-cl-pres-c2");
  await connectOn(nodes.b, onB);
  const c1 = await connectOn(nodes.c, onC);
  const c2 = await connectOn(nodes.c, onC2);
  assert.equal((await join(c1.channel("relay"))).status, "ok");
  await until(
    (s) => s[onB] && s[onC] && s[onC2] && s[onC][0].relay === true,
    "devices of b and c (and c's relay join) in a's presence",
  );
  assert.equal(byKey[onC].length, 1, JSON.stringify(byKey[onC]));
  assert.equal(byKey[onC][0].door, "phoenix");

  // Node c dies without a word; its sockets must not stay listed.
  const diffsBefore = diffs.length;
  const t0 = Date.now();
  await killNode("c");
  c1.disconnect(); // only stops their reconnect attempts to the dead node
  c2.disconnect();
  await until((s) => !(onC in s) && !(onC2 in s), "c's devices to leave a's presence", 5000);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed <= 5000, `leave after ${elapsed} ms`);
  const leaves = diffs.slice(diffsBefore).flatMap((d) => Object.keys(d.leaves || {}));
  assert.ok(leaves.includes(onC) && leaves.includes(onC2), `presence_diff leaves: ${JSON.stringify(diffs.slice(diffsBefore))}`);
  assert.ok(onB in byKey, "b's device is still listed");
  assert.ok(observer.isConnected());

  await ensureUp("c"); // a new process of node c, for the tests after this one
});

// ---- 7. node loss behind a balancer --------------------------------------------------

ctest("node loss behind a balancer: the lock reconnects to a and gets the same uuid", async () => {
  await ensureUp("a", "b");
  const bal = new Balancer([nodes.b.port, nodes.a.port]);
  balancers.push(bal);
  await bal.start();
  const name = uniq("js-cl-lb-lock");
  const socket = new Socket(bal.socketUrl, {
    transport: WebSocket,
    params: { name },
    reconnectAfterMs: () => 200,
    rejoinAfterMs: () => 200,
  });
  sockets.push(socket);
  await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("socket through the balancer did not open in 5 s")), 5000);
    socket.onOpen(() => {
      clearTimeout(timer);
      res();
    });
    socket.connect();
  });
  const serial = uniq("SN-LB");
  const ch = socket.channel(`lock:${serial}`, {});
  const joins = await joinRecordingRejoins(ch);
  assert.match(joins[0].uuid, UUID_RE);
  assert.equal(joins[0].serial, serial);
  const viaB = (await devicesOf(nodes.a)).filter((d) => d.name === name);
  assert.deepEqual(viaB.map((d) => d.node), ["b"], `the socket went through b: ${JSON.stringify(viaB)}`);

  await killNode("b");
  bal.setBackends([nodes.a.port]);
  await waitFor(() => joins.length >= 2, 10_000, "the lock's rejoin after node b died");
  assert.equal(joins[1].uuid, joins[0].uuid, "same uuid from the other node (shared store)");
  assert.equal(joins[1].serial, serial);
  assert.ok(bal.forwarded.at(-1) === nodes.a.port, `last connection went to a: ${JSON.stringify(bal.forwarded)}`);
  const onA = (await devicesOf(nodes.a)).filter((d) => d.name === name);
  assert.equal(onA.length, 1, JSON.stringify(onA));
  assert.equal(onA[0].node, "a");
  assert.ok(onA[0].topics.includes(`lock:${serial}`), JSON.stringify(onA[0]));
  const reset = await push(ch, "reset", {});
  assert.equal(reset.status, "ok", JSON.stringify(reset));
  assert.equal(reset.response.uuid, joins[0].uuid);

  await disconnect(socket);
  await ensureUp("b");
});

// ---- 8. NATS outage ------------------------------------------------------------------

ctest("a 10 s NATS outage: not ready, cross-node sends fail, local ones work; all back after", async () => {
  await ensureUp("a", "b");
  const x = await relayDevice(nodes.a, uniq("js-cl-out-x"));
  const z = await relayDevice(nodes.a, uniq("js-cl-out-z"));
  const y = await relayDevice(nodes.b, uniq("js-cl-out-y"));
  const atY0 = nextEvent(y.ch, "packet");
  assert.deepEqual(await send(x, y.name, "before"), { status: "ok", response: {} });
  assert.deepEqual(await atY0, { sender: x.name, payload: "before" });
  assert.equal(await readyStatus(nodes.a), 200, "ready before the outage");

  const t0 = Date.now();
  await nats.stop();
  for (const n of ["a", "b"]) {
    await waitFor(
      async () => (await readyStatus(nodes[n])) === 503 && (await clusterConnected(nodes[n])) === 0,
      5000,
      `node ${n}: /health/ready 503 and homehub_cluster_connected 0`,
    );
  }
  const ready = await fetch(`${nodes.a.httpUrl}/health/ready`).then((r) => r.json());
  assert.deepEqual(ready, { ready: false, database: true, cluster: false });

  const cross = await send(x, y.name, "during");
  assert.deepEqual(cross, { status: "error", response: { reason: "fabric unavailable" } }, "cross-node send in the outage");
  const atZ = nextEvent(z.ch, "packet");
  assert.deepEqual(await send(x, z.name, "local"), { status: "ok", response: {} }, "same-node send in the outage");
  assert.deepEqual(await atZ, { sender: x.name, payload: "local" });

  await sleep(Math.max(0, 10_000 - (Date.now() - t0)));
  await nats.start();
  for (const n of ["a", "b"]) {
    await waitFor(
      async () => (await readyStatus(nodes[n])) === 200 && (await clusterConnected(nodes[n])) === 1,
      12_000,
      `node ${n}: /health/ready 200 and homehub_cluster_connected 1 after NATS is back`,
    );
  }

  // The sockets stayed connected through the outage and are reachable across nodes again.
  assert.deepEqual(x.socket.closeEvents, [], "x stayed connected");
  assert.deepEqual(y.socket.closeEvents, [], "y stayed connected");
  const atY = nextEvent(y.ch, "packet");
  assert.deepEqual(await send(x, y.name, "after"), { status: "ok", response: {} }, "cross-node send a->b after");
  assert.deepEqual(await atY, { sender: x.name, payload: "after" });
  const atX = nextEvent(x.ch, "packet");
  assert.deepEqual(await send(y, x.name, "after-back"), { status: "ok", response: {} }, "cross-node send b->a after");
  assert.deepEqual(await atX, { sender: y.name, payload: "after-back" });
}, { timeout: 60_000 });

// ---- 9. SQLite refused ---------------------------------------------------------------

ctest("a cluster node on SQLite is refused at start, naming PostgreSQL", async () => {
  const hub = new Hub("cluster-sqlite", { env: { HOMEHUB_CLUSTER: nats.url, HOMEHUB_NODE: "s" } });
  assert.match(hub.dbUrl, /^sqlite:/);
  try {
    const err = await hub.start().then(
      () => null,
      (e) => e,
    );
    assert.ok(err, "a cluster node on SQLite started and listened");
    assert.match(err.message, /hub exited before listening \(code [1-9]\d*,/, "non-zero exit before listening");
    assert.match(hub.log.join("\n"), /postgres/i, "the refusal mentions PostgreSQL");
  } finally {
    await hub.cleanup();
  }
});
