// The Compendium relay `/compendium` with plain `ws` clients: INIT/INITRESP,
// ROUTE/DELIVER, ERR codes, and connections that survive bad input.

import { before, after } from "node:test";
import assert from "node:assert/strict";

import { Hub, JsonWs, wsUrl, waitFor } from "./helpers.mjs";

const hub = new Hub("compendium");
const conns = [];

before(() => hub.start());
after(async () => {
  await Promise.all(conns.map((c) => c.close()));
  await hub.cleanup();
});

async function open() {
  const c = await JsonWs.open(wsUrl(hub, "/compendium"));
  conns.push(c);
  return c;
}

const ADDR_RE = /^[0-9a-f]{32}$/;
const is = (type) => (m) => m && m.type === type;

/** INIT → INITRESP; returns the address. */
async function init(c) {
  const r = await c.request({ type: "INIT" }, is("INITRESP"), 3000, "INITRESP");
  assert.deepEqual(Object.keys(r).sort(), ["EpheWssAddr", "type"], `INITRESP: ${JSON.stringify(r)}`);
  assert.match(r.EpheWssAddr, ADDR_RE, "a 128-bit address as 32 hex digits");
  return r.EpheWssAddr;
}

/** Sends `msg` and expects the next message to be ERR with `code`. */
async function expectErr(c, msg, code) {
  const r = await c.request(msg, () => true, 3000, `ERR ${code}`);
  const shown = typeof msg === "string" ? msg : JSON.stringify(msg);
  assert.equal(r.type, "ERR", `${shown.slice(0, 200)} -> ${JSON.stringify(r).slice(0, 300)}`);
  assert.equal(r.errCode, code, `${shown.slice(0, 200)} -> ${JSON.stringify(r).slice(0, 300)}`);
  assert.equal(typeof r.errMsg, "string");
  assert.ok(r.errMsg.length > 0, "errMsg is not empty");
  return r;
}

/**
 * Asserts that nothing was sent to `c` since its last consumed message, without sleeping:
 * the next INIT's reply must be the very next message.
 */
async function assertNothingPending(c, why) {
  const r = await c.request({ type: "INIT" }, () => true, 3000, "INITRESP");
  assert.equal(r.type, "INITRESP", `${why}: unexpected message ${JSON.stringify(r)}`);
  return r.EpheWssAddr;
}

hub.test("INIT → INITRESP with a fresh 32-hex-digit address, different every time", async () => {
  const a = await open();
  const b = await open();
  const addrs = [await init(a), await init(b), await init(a)];
  assert.equal(new Set(addrs).size, 3, `addresses repeat: ${addrs}`);
});

hub.test("ROUTE → the holder receives DELIVER {msg}; the sender gets nothing back", async () => {
  const pc = await open();
  const phone = await open();
  const pcAddr = await init(pc);
  const phoneAddr = await init(phone);

  const msg = { hello: "phone", n: 1, nested: { list: [1, "two", null], t: true }, text: "grüß 🔑" };
  const delivered = phone.next(is("DELIVER"), 3000, "DELIVER");
  phone.send({ type: "ROUTE", EpheWssAddr: pcAddr, msg: { wrong: "way" } }); // phone -> pc first
  pc.send({ type: "ROUTE", EpheWssAddr: phoneAddr, msg });
  assert.deepEqual(await delivered, { type: "DELIVER", msg }, "DELIVER carries exactly msg");
  assert.deepEqual(await pc.next(is("DELIVER")), { type: "DELIVER", msg: { wrong: "way" } });

  // No acknowledgement to either sender: the next message each sees is its own INITRESP.
  await assertNothingPending(pc, "after ROUTE, the sender");
  await assertNothingPending(phone, "after ROUTE, the sender");
});

hub.test("ROUTE to an upper-case spelling of the address and to oneself", async () => {
  const a = await open();
  const b = await open();
  const addr = await init(a);
  await init(b);
  b.send({ type: "ROUTE", EpheWssAddr: addr.toUpperCase(), msg: { upper: true } });
  assert.deepEqual(await a.next(is("DELIVER")), { type: "DELIVER", msg: { upper: true } });
  a.send({ type: "ROUTE", EpheWssAddr: addr, msg: { self: 1 } });
  assert.deepEqual(await a.next(is("DELIVER")), { type: "DELIVER", msg: { self: 1 } });
});

hub.test("ERR 404 for an address nobody holds, and after the holder disconnects", async () => {
  const holder = await open();
  const sender = await open();
  const addr = await init(holder);

  await expectErr(sender, { type: "ROUTE", EpheWssAddr: "0".repeat(32), msg: {} }, 404);

  // Works while the holder is connected...
  sender.send({ type: "ROUTE", EpheWssAddr: addr, msg: { before: "close" } });
  assert.deepEqual(await holder.next(is("DELIVER")), { type: "DELIVER", msg: { before: "close" } });

  // ... and the address dies with its connection. (The hub learns about the close
  // asynchronously, so retry until the answer is 404, bounded.)
  await holder.close();
  await waitFor(
    async () => {
      const r = await sender.request({ type: "ROUTE", EpheWssAddr: addr, msg: { after: "close" } }, () => true, 300).catch(
        () => null, // delivered to the dying connection: no answer
      );
      return r && r.type === "ERR" && r.errCode === 404;
    },
    3000,
    "ERR 404 for the closed holder's address",
  );
});

hub.test("a second INIT replaces the address: the old one stops routing", async () => {
  const a = await open();
  const b = await open();
  const oldAddr = await init(a);
  const newAddr = await init(a);
  assert.notEqual(newAddr, oldAddr);
  await expectErr(b, { type: "ROUTE", EpheWssAddr: oldAddr, msg: { to: "old" } }, 404);
  b.send({ type: "ROUTE", EpheWssAddr: newAddr, msg: { to: "new" } });
  assert.deepEqual(await a.next(is("DELIVER")), { type: "DELIVER", msg: { to: "new" } });
});

hub.test("malformed JSON and ill-typed fields get ERR 400; the connection survives", async () => {
  const c = await open();
  const addr = await init(c);
  const cases = [
    "this is not json",
    '{"type":"INIT"',
    "[1,2,3]",
    '"INIT"',
    "null",
    "{}",
    { type: 5 },
    { type: null },
    { type: ["INIT"] },
    { type: "ROUTE", msg: {} },
    { type: "ROUTE", EpheWssAddr: addr },
    { type: "ROUTE", EpheWssAddr: 12345, msg: {} },
    { type: "ROUTE", EpheWssAddr: "xyz", msg: {} },
    { type: "ROUTE", EpheWssAddr: `${addr}00`, msg: {} },
    { type: "ROUTE", EpheWssAddr: "g".repeat(32), msg: {} },
    { type: "ROUTE", EpheWssAddr: addr, msg: "a string" },
    { type: "ROUTE", EpheWssAddr: addr, msg: [1, 2] },
    { type: "ROUTE", EpheWssAddr: addr, msg: null },
    { type: "ROUTE", EpheWssAddr: addr, msg: 42 },
  ];
  for (const bad of cases) await expectErr(c, bad, 400);
  assert.ok(c.isOpen, "connection still open after bad input");
  // Nothing was delivered to our own address by any of the bad ROUTEs, and INIT still works.
  const again = await assertNothingPending(c, "after ERR 400s");
  assert.match(again, ADDR_RE);
  c.send({ type: "ROUTE", EpheWssAddr: again, msg: { still: "works" } });
  assert.deepEqual(await c.next(is("DELIVER")), { type: "DELIVER", msg: { still: "works" } });
});

hub.test("unknown types and server-only types get ERR 405; client ERR/ERROR is accepted silently", async () => {
  const c = await open();
  await init(c);
  await expectErr(c, { type: "HELLO" }, 405);
  await expectErr(c, { type: "init" }, 405);
  await expectErr(c, { type: "INITRESP", EpheWssAddr: "0".repeat(32) }, 405);
  await expectErr(c, { type: "DELIVER", msg: {} }, 405);
  // A client may report an error, as `ERR` (what the original server sent) or `ERROR`
  // (the seed's example); neither is answered.
  c.send({ type: "ERR", errCode: 1, errMsg: "client trouble" });
  c.send({ type: "ERROR", errCode: 0, errMsg: "" });
  await assertNothingPending(c, "after client ERR/ERROR");
});

hub.test("an oversize message gets ERR 413 and the connection survives", async () => {
  const a = await open();
  const b = await open();
  const addr = await init(a);
  await init(b);
  // Default cap HOMEHUB_COMPENDIUM_MAX_BYTES = 65536.
  const big = { type: "ROUTE", EpheWssAddr: addr, msg: { blob: "z".repeat(70_000) } };
  await expectErr(b, big, 413);
  assert.ok(b.isOpen, "sender still connected");
  const newAddr = await assertNothingPending(a, "the oversize ROUTE must not be delivered; target");
  // A large message under the cap is delivered intact.
  const large = { blob: "q".repeat(60_000) };
  b.send({ type: "ROUTE", EpheWssAddr: newAddr, msg: large });
  assert.deepEqual(await a.next(is("DELIVER")), { type: "DELIVER", msg: large });
});
