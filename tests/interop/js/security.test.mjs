// The official `phoenix` JS client against the hub's security settings:
//   - HOMEHUB_AUTH=token: device tokens from `POST /api/tokens`, passed as the `token` connect
//     param or with phoenix.js's `authToken` (WebSocket and long-poll); expired, forged and
//     revoked tokens; a lock held by one device refused to another until an admin reassigns it.
//   - HOMEHUB_RATE_LIMIT=5 / HOMEHUB_RATE_BURST=5: pushes past the bucket get
//     `error {"reason":"rate limited"}`, heartbeats still pass, and the socket recovers.
//   - Origin checks (default: same host only; and an allow-list).
//   - HOMEHUB_TLS_CERT/HOMEHUB_TLS_KEY: phoenix.js over `wss://` with a self-signed certificate.
//   - V2 binary relay packets between two phoenix.js clients.
// Four hubs, started in parallel, one per kind of setting.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import {
  Hub,
  TlsHub,
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
  upgradeStatusOf,
  wsTransport,
  UUID_RE,
} from "./helpers.mjs";

const ALLOWED_ORIGIN = "https://app.example.com";

const tokenHub = new Hub("sec-token", { env: { HOMEHUB_AUTH: "token", HOMEHUB_LONGPOLL_WINDOW_MS: "1000" } });
const policyHub = new Hub("sec-policy", {
  env: { HOMEHUB_RATE_LIMIT: "5", HOMEHUB_RATE_BURST: "5", HOMEHUB_ALLOWED_ORIGINS: ALLOWED_ORIGIN },
});
const openHub = new Hub("sec-open"); // defaults: open mode, same-host origins
const tlsHub = new TlsHub("sec-tls");
const hubs = [tokenHub, policyHub, openHub, tlsHub];
const sockets = [];

before(() => Promise.all(hubs.map((h) => h.start())));
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await Promise.all(hubs.map((h) => h.cleanup()));
});

/** Issues a device token through the admin API; returns the 201 body ({token, id, ...}). */
async function issue(hub, device, ttl_secs) {
  const body = ttl_secs === undefined ? { device } : { device, ttl_secs };
  const r = await hub.api("POST", "/api/tokens", body);
  assert.equal(r.status, 201, `POST /api/tokens ${JSON.stringify(body)}: ${JSON.stringify(r)}`);
  assert.equal(typeof r.body.token, "string", JSON.stringify(r.body));
  assert.equal(typeof r.body.id, "string", JSON.stringify(r.body));
  assert.equal(r.body.device, device);
  return r.body;
}

/** A phoenix.js socket on `hub` that must open. */
async function connectOk(hub, params, opts = {}) {
  const socket = hub.socket(params, opts);
  sockets.push(socket);
  const outcome = await tryConnect(socket, 5000);
  assert.equal(outcome, "open", `socket ${JSON.stringify(params)} did not open: ${outcome}`);
  return socket;
}

/** A phoenix.js socket on `hub` that must never open: onError fires and retries fail too. */
async function assertRefused(hub, params, opts = {}, what = JSON.stringify(params)) {
  const socket = hub.socket(params, { reconnectAfterMs: () => 100, ...opts });
  let opens = 0;
  socket.onOpen(() => {
    opens += 1;
  });
  const outcome = await tryConnect(socket, 3000);
  await sleep(250); // a retry or two
  socket.disconnect();
  assert.equal(outcome, "error", `${what}: first attempt ended with ${outcome}`);
  assert.equal(opens, 0, `${what}: the connection must never open`);
}

/** The raw upgrade status for connect params `params` (and extra ws options). */
function upgradeStatus(hub, params, options) {
  const qs = new URLSearchParams({ ...params, vsn: "2.0.0" }).toString();
  return upgradeStatusOf(`${hub.socketUrl}/websocket?${qs}`, options);
}

/** Changes one character of `s` at index `i` (to another character of the base64url alphabet). */
function flipAt(s, i) {
  return s.slice(0, i) + (s[i] === "A" ? "B" : "A") + s.slice(i + 1);
}

// ---------------------------------------------------------------------------
// Token mode

tokenHub.test("token mode: a token as the `token` connect param is accepted; missing or someone else's is refused", async () => {
  const dev = uniq("sec-param");
  const t = await issue(tokenHub, dev);
  assert.match(t.token, /^hh1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, "token format hh1.<payload>.<sig>");

  const socket = await connectOk(tokenHub, { name: dev, token: t.token });
  const serial = uniq("SN");
  const j = await join(socket.channel(`lock:${serial}`));
  assert.equal(j.status, "ok", JSON.stringify(j));
  assert.match(j.response.uuid, UUID_RE);

  await assertRefused(tokenHub, { name: uniq("sec-notoken") }, {}, "no token");
  await assertRefused(tokenHub, { name: uniq("sec-other"), token: t.token }, {}, "a token issued to another device");
  assert.equal(await upgradeStatus(tokenHub, { name: uniq("sec-notoken") }), 403, "no token: HTTP 403");
  assert.equal(await upgradeStatus(tokenHub, { name: uniq("sec-other"), token: t.token }), 403, "another device's token: HTTP 403");
  assert.equal(await upgradeStatus(tokenHub, { name: dev, token: "" }), 403, "empty token: HTTP 403");
});

tokenHub.test("token mode: a token passed with phoenix.js `authToken` (Sec-WebSocket-Protocol) is accepted", async () => {
  const dev = uniq("sec-auth");
  const t = await issue(tokenHub, dev);
  const socket = await connectOk(tokenHub, { name: dev }, { authToken: t.token });
  const j = await join(socket.channel(`lock:${uniq("SN")}`));
  assert.equal(j.status, "ok", JSON.stringify(j));
  // The handshake selected "phoenix", not the token entry.
  assert.equal(socket.connection.transport.protocol, "phoenix");

  await assertRefused(tokenHub, { name: uniq("sec-auth-other") }, { authToken: t.token }, "authToken of another device");
  await assertRefused(tokenHub, { name: dev }, { authToken: "hh1.not.valid" }, "invalid authToken");
});

tokenHub.test("token mode over long-poll: `token` param and `authToken` accepted, bad token refused (403)", async () => {
  const devA = uniq("sec-lp-param");
  const devB = uniq("sec-lp-auth");
  const ta = await issue(tokenHub, devA);
  const tb = await issue(tokenHub, devB);

  const a = await connectOk(tokenHub, { name: devA, token: ta.token }, { transport: LongPoll });
  const b = await connectOk(tokenHub, { name: devB }, { transport: LongPoll, authToken: tb.token });
  for (const s of [a, b]) {
    assert.ok(s.connection.transport instanceof LongPoll);
    const ch = s.channel(`lock:${uniq("SN")}`);
    const j = await join(ch);
    assert.equal(j.status, "ok", JSON.stringify(j));
    const r = await push(ch, "reset", {});
    assert.deepEqual(r, { status: "ok", response: j.response }, "a second request on the session works");
  }

  // A refused long-poll connect: phoenix.js reports the 403 through onError.
  const bad = tokenHub.socket({ name: devA, token: flipAt(ta.token, ta.token.length - 5) }, { transport: LongPoll });
  const errors = [];
  bad.onError((e) => errors.push(e));
  let opens = 0;
  bad.onOpen(() => {
    opens += 1;
  });
  bad.connect();
  await waitFor(() => errors.length > 0, 3000, "onError for a forged token over long-poll");
  bad.disconnect();
  assert.equal(errors[0], 403, `long-poll error ${JSON.stringify(errors)}`);
  assert.equal(opens, 0);
});

/** A raw long-poll GET on `hub`: the JSON body ({status, token?, messages?}). */
async function lpGet(hub, query, headers = {}) {
  const r = await fetch(`${hub.httpUrl}/socket/longpoll?${query}`, { headers });
  assert.equal(r.status, 200, "long-poll answers are always HTTP 200");
  return r.json();
}

// Protocol reference §7.2: "A GET without a usable token (none, unverifiable, expired, or
// pointing at a dead session) creates a session"; §7.5: the client appends the session token
// after its own params (`?name=N&token=DEVICE&vsn=2.0.0&token=SESSION`, last one wins).
// So when a session dies, the next GET must open a new one (410 + token, phoenix.js then
// reports "session_gone" 3410 and rejoins). The device token is still in the URL (first
// `token`) or in the X-Phoenix-AuthToken header.
tokenHub.test("token mode over long-poll: a dead session is replaced (410), not refused as forbidden (403)", async () => {
  // What phoenix.js sees, with the device token as a param and as `authToken`.
  const seen = {};
  for (const mode of ["param", "authToken"]) {
    const dev = uniq(`sec-lp-gone-${mode}`);
    const t = await issue(tokenHub, dev);
    const params = mode === "param" ? { name: dev, token: t.token } : { name: dev };
    const opts = mode === "param" ? { transport: LongPoll } : { transport: LongPoll, authToken: t.token };
    const socket = await connectOk(tokenHub, params, opts);
    const ch = socket.channel(`lock:${uniq("SN")}`);
    const joins = await joinRecordingRejoins(ch);

    // The hub ends the session (the same happens when a client stops polling for 2 windows).
    const kick = await tokenHub.api("POST", `/api/devices/${dev}/disconnect`);
    assert.equal(kick.status, 204, JSON.stringify(kick));
    await waitFor(() => joins.length >= 2, 5000, `${mode}: the channel to rejoin`);
    seen[mode] = { errors: socket.errorEvents, closes: socket.closeEvents };
  }

  // The same at the HTTP level.
  const dev = uniq("sec-lp-raw");
  const t = await issue(tokenHub, dev);
  const q = `name=${dev}&token=${encodeURIComponent(t.token)}&vsn=2.0.0`;
  const first = await lpGet(tokenHub, `${q}&`);
  assert.equal(first.status, 410, JSON.stringify(first));
  const kick = await tokenHub.api("POST", `/api/devices/${dev}/disconnect`);
  assert.equal(kick.status, 204, JSON.stringify(kick));
  await sleep(100);
  const again = await lpGet(tokenHub, `${q}&token=${first.token}`);
  seen["GET ?name=N&token=<device token>&vsn=2.0.0&token=<dead session>"] = again.status;
  const viaHeader = await lpGet(tokenHub, `name=${dev}&vsn=2.0.0&token=${"0".repeat(32)}`, {
    "x-phoenix-authtoken": t.token,
  });
  seen["GET ?name=N&vsn=2.0.0&token=<unknown session>, X-Phoenix-AuthToken: <device token>"] = viaHeader.status;

  assert.deepEqual(
    seen,
    {
      param: { errors: [410], closes: [3410] },
      authToken: { errors: [410], closes: [3410] },
      "GET ?name=N&token=<device token>&vsn=2.0.0&token=<dead session>": 410,
      "GET ?name=N&vsn=2.0.0&token=<unknown session>, X-Phoenix-AuthToken: <device token>": 410,
    },
    "after its session ended, a long-poll client must get a new session (410; phoenix.js: " +
      "\"session_gone\", close 3410), not \"forbidden\" (403; phoenix.js: close 1008)",
  );
});

tokenHub.test("token mode: an expired token (ttl_secs 1) is refused; a fresh one for the same device works", async () => {
  const dev = uniq("sec-exp");
  const t = await issue(tokenHub, dev, 1);
  const expiresAt = Date.parse(t.expires_at);
  assert.ok(Number.isFinite(expiresAt), `expires_at ${t.expires_at}`);
  assert.ok(expiresAt - Date.now() <= 1100, `ttl 1 s, expires_at ${t.expires_at}`);
  await sleep(Math.max(0, expiresAt - Date.now()) + 100);

  await assertRefused(tokenHub, { name: dev, token: t.token }, {}, "expired token (param)");
  await assertRefused(tokenHub, { name: dev }, { authToken: t.token }, "expired token (authToken)");
  assert.equal(await upgradeStatus(tokenHub, { name: dev, token: t.token }), 403);

  const fresh = await issue(tokenHub, dev);
  await connectOk(tokenHub, { name: dev, token: fresh.token });
});

tokenHub.test("token mode: forged tokens (one character flipped, payload changed to another device) are refused", async () => {
  const dev = uniq("sec-forge");
  const victim = uniq("sec-victim");
  const t = await issue(tokenHub, dev);
  const [prefix, payload, sig] = t.token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  assert.equal(claims.sub, dev, `claims ${JSON.stringify(claims)}`);
  const reencode = (c) => Buffer.from(JSON.stringify(c)).toString("base64url");

  const forged = [
    ["signature char flipped", dev, `${prefix}.${payload}.${flipAt(sig, 10)}`],
    ["payload char flipped", dev, `${prefix}.${flipAt(payload, 8)}.${sig}`],
    ["prefix changed", dev, `hh2.${payload}.${sig}`],
    ["sub changed to another device", victim, `${prefix}.${reencode({ ...claims, sub: victim })}.${sig}`],
    ["exp extended", dev, `${prefix}.${reencode({ ...claims, exp: claims.exp + 1_000_000 })}.${sig}`],
    ["signature dropped", dev, `${prefix}.${payload}`],
  ];
  for (const [what, name, token] of forged) {
    assert.equal(await upgradeStatus(tokenHub, { name, token }), 403, `${what}: HTTP status`);
  }
  await assertRefused(tokenHub, { name: dev, token: forged[0][2] }, {}, "signature char flipped (phoenix.js)");
  await assertRefused(tokenHub, { name: victim }, { authToken: forged[3][2] }, "sub changed (phoenix.js authToken)");

  // The genuine token still works.
  await connectOk(tokenHub, { name: dev, token: t.token });
});

tokenHub.test("token mode: revoking a token disconnects the device and its reconnects are refused", async () => {
  const dev = uniq("sec-revoke");
  const t = await issue(tokenHub, dev);
  const socket = await connectOk(tokenHub, { name: dev, token: t.token }, { reconnectAfterMs: () => 100 });
  let opens = 0;
  socket.onOpen(() => {
    opens += 1;
  });
  const ch = socket.channel(`lock:${uniq("SN")}`);
  assert.equal((await join(ch)).status, "ok");

  const del = await tokenHub.api("DELETE", `/api/tokens/${t.id}`);
  assert.equal(del.status, 204, JSON.stringify(del));

  await waitFor(() => socket.closeEvents.length > 0, 3000, "the hub to disconnect the revoked device");
  assert.equal(socket.closeEvents[0], 1001, `close code ${JSON.stringify(socket.closeEvents)}`);
  // phoenix.js reconnects by itself (every 100 ms here); each attempt must be refused.
  await waitFor(() => socket.errorEvents.length >= 2, 3000, "two refused reconnect attempts");
  assert.equal(opens, 0, "a reconnect with the revoked token opened");
  assert.equal(socket.isConnected(), false);
  assert.notEqual(ch.state, "joined");
  socket.disconnect();
  assert.equal(await upgradeStatus(tokenHub, { name: dev, token: t.token }), 403);

  const list = await tokenHub.api("GET", "/api/tokens");
  assert.equal(list.status, 200, JSON.stringify(list));
  const rec = list.body.tokens.find((r) => r.id === t.id);
  assert.ok(rec, `token ${t.id} listed`);
  assert.equal(typeof rec.revoked_at, "string", `revoked_at: ${JSON.stringify(rec)}`);
  assert.ok(!("token" in rec), "the list never shows the token itself");

  assert.equal((await tokenHub.api("DELETE", "/api/tokens/no-such-id")).status, 404);

  // Revocation is per token: a new token for the same device works.
  const again = await issue(tokenHub, dev);
  await connectOk(tokenHub, { name: dev, token: again.token });
});

tokenHub.test("token mode: a lock held by one device is refused to another until the admin reassigns it", async () => {
  const devA = uniq("sec-holder-a");
  const devB = uniq("sec-holder-b");
  const [ta, tb] = [await issue(tokenHub, devA), await issue(tokenHub, devB)];
  const a = await connectOk(tokenHub, { name: devA, token: ta.token });
  const b = await connectOk(tokenHub, { name: devB, token: tb.token });
  const serial = uniq("SN");

  const chA = a.channel(`lock:${serial}`);
  const ja = await join(chA);
  assert.equal(ja.status, "ok", JSON.stringify(ja));

  const chB = b.channel(`lock:${serial}`);
  const jb = await join(chB);
  assert.deepEqual(jb, { status: "error", response: { reason: "lock held by another device" } });
  chB.leave(); // stop phoenix.js from retrying the join

  const lock = await tokenHub.api("GET", `/api/locks/${encodeURIComponent(serial)}`);
  assert.equal(lock.body.holder_device, devA, JSON.stringify(lock));

  const put = await tokenHub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/holder`, { device: devB });
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.equal(put.body.holder_device, devB, JSON.stringify(put));

  const jb2 = await join(b.channel(`lock:${serial}`));
  assert.equal(jb2.status, "ok", JSON.stringify(jb2));
  assert.equal(jb2.response.uuid, ja.response.uuid, "same lock, same uuid");

  // Now A is the other device: its new join is refused.
  chA.leave();
  const ja2 = await join(a.channel(`lock:${serial}`));
  assert.deepEqual(ja2, { status: "error", response: { reason: "lock held by another device" } });

  const missing = await tokenHub.api("PUT", `/api/locks/${uniq("SN-none")}/holder`, { device: devA });
  assert.equal(missing.status, 404, JSON.stringify(missing));
});

// ---------------------------------------------------------------------------
// Rate limit (5 pushes/s, burst 5) and origins (allow-list) on policyHub

policyHub.test("rate limit 5/s burst 5: pushes past the bucket get error {reason: 'rate limited'}, then it recovers", async () => {
  const socket = await connectOk(policyHub, { name: uniq("sec-rate") });
  const ch = socket.channel(`lock:${uniq("SN")}`);
  const j = await join(ch); // takes one token
  assert.equal(j.status, "ok", JSON.stringify(j));

  const N = 12;
  const replies = await Promise.all(Array.from({ length: N }, () => push(ch, "reset", {})));
  const oks = replies.filter((r) => r.status === "ok").length;
  const statuses = replies.map((r) => r.status).join(",");
  assert.ok(oks >= 3 && oks <= 6, `expected ~4 ok (burst 5 minus the join), got ${oks}: ${statuses}`);
  const firstErr = replies.findIndex((r) => r.status !== "ok");
  assert.equal(firstErr, oks, `the ok replies come first: ${statuses}`);
  for (const r of replies.slice(firstErr)) {
    assert.deepEqual(r, { status: "error", response: { reason: "rate limited" } }, statuses);
  }

  // Heartbeats are not limited, and the channel was not closed.
  const rtt = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error("heartbeat not answered while rate limited")), 2000);
    assert.equal(socket.ping((ms) => {
      clearTimeout(timer);
      res(ms);
    }), true);
  });
  assert.ok(rtt >= 0);
  assert.equal(ch.state, "joined");

  // One second refills the bucket to its burst of 5.
  await sleep(1100);
  const after_ = await Promise.all(Array.from({ length: 5 }, () => push(ch, "reset", {})));
  assert.deepEqual(after_.map((r) => r.status), ["ok", "ok", "ok", "ok", "ok"], "recovered after 1 s");
  assert.equal(after_[0].response.uuid, j.response.uuid);
});

policyHub.test("origins: HOMEHUB_ALLOWED_ORIGINS admits the listed origin only (WebSocket and long-poll)", async () => {
  const url = `${policyHub.socketUrl}/websocket?name=${uniq("sec-origin")}&vsn=2.0.0`;
  assert.equal(await upgradeStatusOf(url, { origin: ALLOWED_ORIGIN }), 101, "listed origin");
  assert.equal(await upgradeStatusOf(url, { origin: "http://app.example.com" }), 403, "listed host, other scheme");
  assert.equal(await upgradeStatusOf(url, { origin: "https://evil.example" }), 403, "unlisted origin");
  assert.equal(await upgradeStatusOf(url), 101, "no Origin header (a device, not a browser)");

  await connectOk(policyHub, { name: uniq("sec-origin-ok") }, { transport: wsTransport({ origin: ALLOWED_ORIGIN }) });
  await assertRefused(policyHub, { name: uniq("sec-origin-bad") }, { transport: wsTransport({ origin: "https://evil.example" }) });

  const lp = (origin) =>
    fetch(`${policyHub.httpUrl}/socket/longpoll?name=${uniq("sec-origin-lp")}&vsn=2.0.0`, {
      headers: origin ? { origin } : {},
    }).then((r) => r.json());
  assert.equal((await lp("https://evil.example")).status, 403, "long-poll from an unlisted origin");
  const ok = await lp(ALLOWED_ORIGIN);
  assert.equal(ok.status, 410, `long-poll from the listed origin opens a session: ${JSON.stringify(ok)}`);
  assert.equal(typeof ok.token, "string");
});

openHub.test("origins by default: same host only", async () => {
  const url = `${openHub.socketUrl}/websocket?name=${uniq("sec-samehost")}&vsn=2.0.0`;
  assert.equal(await upgradeStatusOf(url, { origin: `http://127.0.0.1:${openHub.port}` }), 101, "same host and port");
  assert.equal(await upgradeStatusOf(url, { origin: "http://127.0.0.1:9" }), 101, "same host, another port");
  assert.equal(await upgradeStatusOf(url, { origin: "http://evil.example" }), 403, "another host");
  await assertRefused(openHub, { name: uniq("sec-evil") }, { transport: wsTransport({ origin: "http://evil.example" }) });
});

// ---------------------------------------------------------------------------
// Binary relay packets (V2) between two phoenix.js clients

openHub.test("binary: push(`send:b`, ArrayBuffer) arrives at b as a binary `packet:a` (ArrayBuffer), and back", async () => {
  const nameA = uniq("sec-bin-a");
  const nameB = uniq("sec-bin-b");
  const a = await connectOk(openHub, { name: nameA });
  const b = await connectOk(openHub, { name: nameB });
  const chA = a.channel("relay");
  const chB = b.channel("relay");
  assert.equal((await join(chA)).status, "ok");
  assert.equal((await join(chB)).status, "ok");

  // Every byte value, including ones that are not valid UTF-8.
  const bytes = Uint8Array.from({ length: 256 }, (_, i) => i);
  const atB = nextEvent(chB, `packet:${nameA}`);
  const r = await push(chA, `send:${nameB}`, bytes.buffer.slice(0));
  assert.deepEqual(r, { status: "ok", response: {} });
  const got = await atB;
  assert.ok(got instanceof ArrayBuffer, `payload is ${Object.prototype.toString.call(got)}`);
  assert.deepEqual([...new Uint8Array(got)], [...bytes]);

  // Back, to an upper-case spelling of the target; an empty packet.
  const atA = nextEvent(chA, `packet:${nameB}`);
  const r2 = await push(chB, `send:${nameA.toUpperCase()}`, new ArrayBuffer(0));
  assert.deepEqual(r2, { status: "ok", response: {} });
  const back = await atA;
  assert.ok(back instanceof ArrayBuffer);
  assert.equal(back.byteLength, 0);

  // Unknown target and the size limit (1024 bytes and more refused).
  const r3 = await push(chA, `send:${uniq("nobody")}`, Uint8Array.from([1]).buffer);
  assert.deepEqual(r3, { status: "error", response: { reason: "unknown target" } });
  const r4 = await push(chA, `send:${nameB}`, new ArrayBuffer(1024));
  assert.deepEqual(r4, { status: "error", response: { reason: "packet too large" } });
  const atB2 = nextEvent(chB, `packet:${nameA}`);
  const r5 = await push(chA, `send:${nameB}`, new Uint8Array(1023).fill(7).buffer);
  assert.deepEqual(r5, { status: "ok", response: {} });
  assert.equal((await atB2).byteLength, 1023);
  assert.equal(chA.state, "joined");
});

// ---------------------------------------------------------------------------
// TLS

tlsHub.test("TLS: phoenix.js over wss:// (self-signed certificate via the `ca` option) joins and gets pushes", async () => {
  const socket = await connectOk(tlsHub, { name: uniq("sec-tls") });
  assert.match(socket.endPointURL(), /^wss:\/\//);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const j = await join(ch);
  assert.equal(j.status, "ok", JSON.stringify(j));
  assert.match(j.response.uuid, UUID_RE);

  const next = nextEvent(ch, "state");
  const put = await tlsHub.api("PUT", `/api/locks/${encodeURIComponent(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.deepEqual(await next, { locked: false });
  const r = await push(ch, "reset", {});
  assert.deepEqual(r.response.state, { locked: false });
});

tlsHub.test("TLS: the certificate is really checked, and plain ws:// / http:// are not served", async () => {
  // Without the CA, the client must refuse the self-signed certificate.
  await assertRefused(tlsHub, { name: uniq("sec-tls-noca") }, { transport: WebSocket }, "wss without the CA");
  // Plain HTTP on the TLS port.
  await assert.rejects(fetch(`http://127.0.0.1:${tlsHub.port}/api/locks`), "plain http:// must fail");
  const plain = new Socket(`ws://127.0.0.1:${tlsHub.port}/socket`, {
    transport: WebSocket,
    params: { name: uniq("sec-tls-plain") },
    reconnectAfterMs: () => 100,
  });
  let opens = 0;
  plain.onOpen(() => {
    opens += 1;
  });
  const outcome = await tryConnect(plain, 3000);
  plain.disconnect();
  assert.equal(outcome, "error", "plain ws:// must fail");
  assert.equal(opens, 0);
});
