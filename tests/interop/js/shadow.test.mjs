// The official `phoenix` JS client as a lock that takes `state` pushes (issue 16, part A):
// a lock that does not report the pushed state is pushed it again on a growing pause and
// shown drifting; its `report` ends it; `If-Match` guards admin writes.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import { Hub, uniq, join, push, disconnect, sleep, waitFor } from "./helpers.mjs";

// Drift after 250 ms, pushes again after 250, 500, 1,000 ms.
const hub = new Hub("shadow", { env: { HOMEHUB_STATE_DRIFT_MS: "250", HOMEHUB_STATE_RETRY_MAX_MS: "1000" } });
const sockets = [];

before(() => hub.start());
after(async () => {
  await Promise.all(sockets.map(disconnect));
  await hub.cleanup();
});

/** A lock joined with {accepts: ["state"]}; every `state` push it gets is recorded. */
async function stateLock(prefix) {
  const socket = await hub.connect(uniq(prefix));
  sockets.push(socket);
  const serial = uniq("SN");
  const ch = socket.channel(`lock:${serial}`, { accepts: ["state"] });
  const pushes = [];
  ch.on("state", (s) => pushes.push({ at: Date.now(), state: s }));
  const j = await join(ch);
  assert.equal(j.status, "ok", `join: ${JSON.stringify(j)}`);
  return { ch, serial, pushes };
}

const lockPath = (serial) => `/api/locks/${encodeURIComponent(serial)}`;

hub.test("a silent lock is pushed `state` again on a growing pause and drifts until it reports", async () => {
  const { ch, serial, pushes } = await stateLock("js-drift");
  const put = await hub.api("PUT", `${lockPath(serial)}/state`, { locked: false });
  assert.equal(put.status, 200, JSON.stringify(put));
  assert.equal(put.body.intended_version, 2);

  await waitFor(() => pushes.length >= 4, 5000, "four `state` pushes");
  for (const p of pushes) assert.deepEqual(p.state, { locked: false });
  const gaps = pushes.slice(1, 4).map((p, i) => p.at - pushes[i].at);
  assert.ok(gaps[0] >= 200 && gaps[1] >= 400 && gaps[2] >= 800, `pauses ${gaps}`);
  assert.ok(gaps[1] > gaps[0] && gaps[2] > gaps[1], `the pause grows: ${gaps}`);
  const shown = await hub.api("GET", lockPath(serial));
  assert.equal(shown.body.drifting, true, JSON.stringify(shown.body));
  assert.equal(shown.body.agrees, false);

  // The lock applies the state and says so.
  const r = await push(ch, "report", { locked: false });
  assert.equal(r.status, "ok", JSON.stringify(r));
  const after = await hub.api("GET", lockPath(serial));
  assert.equal(after.body.drifting, false, JSON.stringify(after.body));
  assert.equal(after.body.agrees, true);
  const count = pushes.length;
  await sleep(1500);
  assert.equal(pushes.length, count, "no more pushes after the report");
});

hub.test("If-Match: a stale version is refused with 409 and the current version", async () => {
  const { serial } = await stateLock("js-ifmatch");
  const tag = (await hub.api("GET", lockPath(serial))).body.intended_version;
  const ok = await fetch(`${hub.httpUrl}${lockPath(serial)}/state`, {
    method: "PUT",
    headers: { authorization: `Bearer ${hub.token}`, "content-type": "application/json", "if-match": `"${tag}"` },
    body: JSON.stringify({ locked: false }),
  });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("etag"), `"${tag + 1}"`);
  const stale = await fetch(`${hub.httpUrl}${lockPath(serial)}/state`, {
    method: "PUT",
    headers: { authorization: `Bearer ${hub.token}`, "content-type": "application/json", "if-match": `"${tag}"` },
    body: JSON.stringify({ locked: true }),
  });
  assert.equal(stale.status, 409);
  assert.equal((await stale.json()).intended_version, tag + 1);
  const now = await hub.api("GET", lockPath(serial));
  assert.deepEqual(now.body.intended_state, { locked: false });
});
