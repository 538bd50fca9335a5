// Shared helpers for the JS interop tests: start/stop a private homehub per test
// file, talk to its admin API, and wrap the official `phoenix` client in promises.
//
// Every test file creates its own Hub (own temp dir, own database, own port), so
// files can run in parallel.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join as joinPath, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { test } from "node:test";

import { Socket } from "phoenix";
import WebSocket from "ws";

export { Socket, WebSocket };

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, "..", "..", "..");

export function hubBinary() {
  return process.env.HOMEHUB_BIN || joinPath(REPO_ROOT, "target", "debug", "homehub");
}

/** A short random tag, so serials and device names never collide between tests. */
export function uniq(prefix) {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

const LISTENING_RE = /homehub listening on https?:\/\/127\.0\.0\.1:(\d+)/;
const START_TIMEOUT_MS = 20_000;
const STOP_TIMEOUT_MS = 5_000;

/**
 * SIGTERM `proc` (a child with an `exited` promise) and wait for its exit; SIGKILL after
 * STOP_TIMEOUT_MS (calling `onForce` first). Returns {code, signal}, or null without a process.
 */
async function terminate(proc, onForce = () => {}) {
  if (!proc) return null;
  if (proc.exitCode !== null || proc.signalCode !== null) return proc.exited;
  proc.kill("SIGTERM");
  let timer;
  const result = await Promise.race([
    proc.exited,
    new Promise((res) => {
      timer = setTimeout(() => res(null), STOP_TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
  if (result === null) {
    onForce();
    proc.kill("SIGKILL");
    return { ...(await proc.exited), forced: true };
  }
  return result;
}

/** SIGKILL `proc` if there is one and it still runs. */
function killNow(proc) {
  try {
    proc?.kill("SIGKILL");
  } catch {
    /* already gone */
  }
}

/**
 * One homehub process (and its restarts) on one private database.
 *
 *   const hub = new Hub("lock");
 *   before(() => hub.start());
 *   after(() => hub.cleanup());
 */
export class Hub {
  /**
   * `opts.env`: extra environment for every start of this hub (e.g.
   * `{HOMEHUB_AUTH: "token"}`), applied over the defaults below. Optional.
   */
  constructor(label = "hub", { env = {} } = {}) {
    this.label = label;
    this.env = { ...env };
    this.dir = mkdtempSync(joinPath(tmpdir(), `homehub-interop-${label}-`));
    this.dbUrl = `sqlite://${joinPath(this.dir, "homehub.db")}`;
    this.token = `interop-${randomBytes(12).toString("hex")}`;
    this.port = null;
    this.proc = null;
    this.log = []; // stderr + stdout lines of every run, for failure reports
    this.runs = 0;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Base URL for phoenix.js (`new Socket(hub.socketUrl)`); the client appends /websocket. */
  get socketUrl() {
    return `ws://127.0.0.1:${this.port}/socket`;
  }

  /**
   * Start the hub. `port` defaults to 0 (pick a free one) on the first start;
   * pass the old port to restart on the same address.
   */
  async start(port = 0) {
    if (this.proc) throw new Error("hub already running");
    const bin = hubBinary();
    if (!existsSync(bin)) {
      throw new Error(`homehub binary not found at ${bin} (run cargo build or set HOMEHUB_BIN)`);
    }
    this.runs += 1;
    const run = this.runs;
    const args = ["serve", "--bind", `127.0.0.1:${port}`, "--database-url", this.dbUrl];
    const extraEnv = Object.entries(this.env).map(([k, v]) => `${k}=${v}`).join(" ");
    this.log.push(`[run ${run}] $ ${extraEnv ? `${extraEnv} ` : ""}${bin} ${args.join(" ")}`);
    const proc = spawn(bin, args, {
      // Many hubs run at once: the Bester TCP listener (default port 2222) is disabled.
      env: { ...process.env, HOMEHUB_ADMIN_TOKEN: this.token, HOMEHUB_BESTER_BIND: "", ...this.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = proc;
    proc.exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
    createInterface({ input: proc.stderr }).on("line", (l) => this.log.push(`[run ${run} stderr] ${l}`));

    const port_ = await new Promise((res, rej) => {
      let done = false;
      const finish = (fn, v) => {
        if (!done) {
          done = true;
          clearTimeout(timer);
          fn(v);
        }
      };
      const timer = setTimeout(
        () => finish(rej, new Error(`hub did not print its listening line within ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS,
      );
      createInterface({ input: proc.stdout }).on("line", (l) => {
        this.log.push(`[run ${run} stdout] ${l}`);
        const m = LISTENING_RE.exec(l);
        if (m) finish(res, Number(m[1]));
      });
      proc.once("error", (e) => finish(rej, e));
      proc.exited.then(({ code, signal }) =>
        finish(rej, new Error(`hub exited before listening (code ${code}, signal ${signal})`)),
      );
    }).catch((e) => {
      this.kill();
      throw this.annotate(e);
    });
    if (port !== 0 && port_ !== port) {
      throw this.annotate(new Error(`hub asked to bind port ${port} but reports ${port_}`));
    }
    this.port = port_;
    return this;
  }

  /** SIGTERM and wait for the exit (SIGKILL after a grace period). Returns {code, signal}. */
  async stop() {
    const proc = this.proc;
    this.proc = null;
    return terminate(proc, () =>
      this.log.push(`hub did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM; sending SIGKILL`),
    );
  }

  kill() {
    killNow(this.proc);
    this.proc = null;
  }

  async restart() {
    const port = this.port;
    await this.stop();
    return this.start(port);
  }

  async cleanup() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Append the hub's output to an error, so a failing test shows what the server said. */
  annotate(err) {
    const tail = this.log.slice(-150).join("\n");
    if (err && typeof err === "object" && !err.hubLogAttached) {
      err.hubLogAttached = true;
      err.message = `${err.message}\n----- hub output (${this.label}, last 150 lines) -----\n${tail}\n----- end hub output -----`;
    }
    return err;
  }

  /** `test()` whose failures carry the hub's output. */
  test(name, fn, opts = {}) {
    return test(name, opts, async (t) => {
      try {
        await fn(t);
      } catch (e) {
        await sleep(200); // let the hub's last log lines arrive
        throw this.annotate(e);
      }
    });
  }

  /** Admin API call. Returns {status, body} (body parsed as JSON when possible). */
  async api(method, path, body, { token = this.token } = {}) {
    const headers = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = text === "" ? null : JSON.parse(text);
    } catch {
      /* keep the text */
    }
    return { status: res.status, body: parsed };
  }

  /**
   * A phoenix.js Socket to this hub, using `ws` as the WebSocket implementation
   * (Node 20 has no global WebSocket). Not connected yet.
   */
  socket(params, opts = {}) {
    const socket = new Socket(this.socketUrl, {
      transport: WebSocket,
      params,
      ...opts,
    });
    socket.closeEvents = [];
    socket.errorEvents = [];
    socket.onClose((ev) => socket.closeEvents.push(ev && ev.code));
    socket.onError((err) => socket.errorEvents.push(err));
    return socket;
  }

  /** A socket with a `name`, connected (resolves on open). */
  async connect(name, opts = {}) {
    const socket = this.socket({ name }, opts);
    await new Promise((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`socket ${name} did not open within 5 s`)), 5000);
      socket.onOpen(() => {
        clearTimeout(timer);
        res();
      });
      socket.connect();
    });
    return socket;
  }
}

/** Resolve with {status, response} of a Push: "ok", "error" or "timeout". */
export function awaitPush(push) {
  return new Promise((res) => {
    push
      .receive("ok", (response) => res({ status: "ok", response }))
      .receive("error", (response) => res({ status: "error", response }))
      .receive("timeout", () => res({ status: "timeout", response: null }));
  });
}

export function join(channel, timeout = 5000) {
  return awaitPush(channel.join(timeout));
}

/**
 * Joins `channel` and records every "ok" join reply: phoenix.js re-sends the same join push
 * on every rejoin (after a reconnect), so its "ok" hook runs once per successful (re)join.
 * Resolves with that growing array once the first join succeeded.
 */
export async function joinRecordingRejoins(channel, timeout = 5000) {
  const joins = [];
  await new Promise((res, rej) => {
    channel
      .join(timeout)
      .receive("ok", (resp) => {
        joins.push(resp);
        res();
      })
      .receive("error", (e) => rej(new Error(`join error ${JSON.stringify(e)}`)))
      .receive("timeout", () => rej(new Error("join timeout")));
  });
  return joins;
}

export function push(channel, event, payload = {}, timeout = 5000) {
  return awaitPush(channel.push(event, payload, timeout));
}

/** Resolve with the payload of the next `event` on `channel` (reject after timeoutMs). */
export function nextEvent(channel, event, timeoutMs = 5000) {
  return new Promise((res, rej) => {
    let ref;
    const timer = setTimeout(() => {
      channel.off(event, ref);
      rej(new Error(`no "${event}" on ${channel.topic} within ${timeoutMs} ms`));
    }, timeoutMs);
    ref = channel.on(event, (payload) => {
      clearTimeout(timer);
      channel.off(event, ref);
      res(payload);
    });
  });
}

/** Poll `cond` until it is truthy (reject after timeoutMs). */
export async function waitFor(cond, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function disconnect(socket) {
  return new Promise((res) => {
    const timer = setTimeout(res, 1000);
    socket.disconnect(() => {
      clearTimeout(timer);
      res();
    });
  });
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const LOCK_KEYS = ["config", "feature_flags", "mode", "name", "serial", "state", "uuid"];

// ---------------------------------------------------------------------------
// Plain WebSocket doors (`/relay`, `/compendium`): one JSON message per text frame.
// Appended for relay.test.mjs, presence.test.mjs and compendium.test.mjs.

/** `ws://127.0.0.1:PORT<path>` of a running hub (e.g. `wsUrl(hub, "/relay")`). */
export function wsUrl(hub, path) {
  return `ws://127.0.0.1:${hub.port}${path}`;
}

/**
 * A plain `ws` connection that parses every incoming text frame as JSON and queues it.
 * `next(pred)` takes the first queued (or future) message matching `pred`, so replies and
 * unsolicited messages (forwarded packets, DELIVERs) can be awaited independently and in
 * any order. A frame that is not JSON is queued as `{__unparsed: text}`, so tests see it.
 *
 *   const c = await JsonWs.open(wsUrl(hub, "/compendium"));
 *   const r = await c.request({ type: "INIT" });
 */
export class JsonWs {
  static open(url, timeoutMs = 5000) {
    return new Promise((res, rej) => {
      const ws = new WebSocket(url);
      const conn = new JsonWs(ws, url);
      const timer = setTimeout(() => {
        ws.terminate();
        rej(new Error(`${url} did not open within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.once("open", () => {
        clearTimeout(timer);
        res(conn);
      });
      ws.once("error", (e) => {
        clearTimeout(timer);
        rej(e);
      });
    });
  }

  constructor(ws, url) {
    this.ws = ws;
    this.url = url;
    this.inbox = [];
    this.waiters = [];
    this.received = []; // every message, for failure messages
    this.closeInfo = null;
    this.closed = new Promise((res) => {
      ws.once("close", (code, reason) => {
        this.closeInfo = { code, reason: String(reason) };
        res(this.closeInfo);
      });
    });
    ws.on("error", () => {
      /* surfaces as a close; keep node from throwing */
    });
    ws.on("message", (data, isBinary) => {
      const text = isBinary ? Buffer.from(data).toString("utf8") : data.toString();
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        msg = { __unparsed: text };
      }
      this.received.push(msg);
      this.inbox.push(msg);
      this.pump();
    });
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  pump() {
    for (const w of [...this.waiters]) {
      const i = this.inbox.findIndex(w.pred);
      if (i >= 0) {
        const [msg] = this.inbox.splice(i, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.res(msg);
      }
    }
  }

  /** Sends an object as JSON text, or a string / Buffer verbatim. */
  send(msg) {
    this.ws.send(typeof msg === "string" || Buffer.isBuffer(msg) ? msg : JSON.stringify(msg));
  }

  /** The first queued or future message matching `pred` (reject after timeoutMs). */
  next(pred = () => true, timeoutMs = 3000, what = "a message") {
    return new Promise((res, rej) => {
      const w = { pred, res };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        rej(
          new Error(
            `${this.url}: no ${what} within ${timeoutMs} ms; unconsumed: ${JSON.stringify(this.inbox)}` +
              (this.closeInfo ? `; connection closed ${JSON.stringify(this.closeInfo)}` : ""),
          ),
        );
      }, timeoutMs);
      this.waiters.push(w);
      this.pump();
    });
  }

  /** Sends `msg` and resolves with the next message matching `pred`. */
  request(msg, pred = () => true, timeoutMs = 3000, what = "a reply") {
    const reply = this.next(pred, timeoutMs, what);
    this.send(msg);
    return reply;
  }

  /** Closes (code 1000) and resolves once the close handshake is over (or after 2 s). */
  close() {
    if (this.closeInfo) return Promise.resolve(this.closeInfo);
    this.ws.close(1000);
    let timer;
    return Promise.race([
      this.closed,
      new Promise((res) => {
        timer = setTimeout(() => {
          this.ws.terminate();
          res(null);
        }, 2000);
      }),
    ]).finally(() => clearTimeout(timer));
  }
}

/** A connected raw `/relay` client (a {@link JsonWs}) with relay-protocol shortcuts. */
export async function rawRelay(hub) {
  const c = await JsonWs.open(wsUrl(hub, "/relay"));
  const isResponse = (m) => m && typeof m === "object" && "success" in m;
  /** Sends a packet and resolves with the `{success, ...}` answer to it. */
  c.packet = (pkt) => c.request(pkt, isResponse, 3000, "relay response");
  c.server = (payload) => c.packet({ target: "server", payload });
  /** The next forwarded `{sender, payload}` packet. */
  c.nextPacket = (timeoutMs = 3000) =>
    c.next((m) => m && typeof m === "object" && "sender" in m, timeoutMs, "forwarded packet");
  return c;
}

// ---------------------------------------------------------------------------
// Appended for longpoll.test.mjs and security.test.mjs: the LongPoll transport, hubs with
// extra settings (`new Hub(label, {env})`), `ws` transports with extra options (TLS `ca`,
// `origin`), a TLS hub with a self-signed certificate, and connection-outcome helpers.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import https from "node:https";
import { LongPoll } from "phoenix";

export { LongPoll };

/**
 * A `ws` WebSocket class for phoenix.js's `transport` option that adds `options` to every
 * connection it opens (e.g. `{ca}` for a self-signed certificate, `{origin}`, `{headers}`).
 */
export function wsTransport(options) {
  return class ConfiguredWebSocket extends WebSocket {
    constructor(url, protocols, opts = {}) {
      super(url, protocols, { ...opts, ...options });
    }
  };
}

/**
 * Connects `socket` (not connected yet) and resolves with how the first attempt ended:
 * "open", "error" (onError before any open) or "timeout". The socket stays as it is.
 */
export function tryConnect(socket, timeoutMs = 3000) {
  return new Promise((res) => {
    let done = false;
    const finish = (v) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        res(v);
      }
    };
    const timer = setTimeout(() => finish("timeout"), timeoutMs);
    socket.onOpen(() => finish("open"));
    socket.onError(() => finish("error"));
    socket.connect();
  });
}

/**
 * The HTTP status of a raw WebSocket upgrade to `url` (101 when it opens), with extra `ws`
 * options (`protocols` is the subprotocol list). Lets a test see the 403 a browser-like
 * client hides.
 */
export function upgradeStatusOf(url, { protocols, ...options } = {}) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url, protocols, options);
    ws.on("unexpected-response", (_req, response) => {
      res(response.statusCode);
      ws.terminate();
    });
    ws.on("open", () => {
      res(101);
      ws.close();
    });
    ws.on("error", (e) => {
      if (!/Unexpected server response/.test(String(e && e.message))) rej(e);
    });
  });
}

/**
 * Writes a self-signed certificate for 127.0.0.1/localhost (P-256, valid 2 days) into
 * `dir` with the `openssl` command. Returns {certPath, keyPath, cert (Buffer, PEM)}.
 */
export function selfSignedCert(dir) {
  const certPath = joinPath(dir, "cert.pem");
  const keyPath = joinPath(dir, "key.pem");
  execFileSync(
    "openssl",
    [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", "/CN=127.0.0.1",
      "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  return { certPath, keyPath, cert: readFileSync(certPath) };
}

/**
 * A Hub that serves only `https://`/`wss://` with a fresh self-signed certificate
 * (`HOMEHUB_TLS_CERT`/`HOMEHUB_TLS_KEY`). `hub.ca` is the certificate to trust;
 * `hub.socket()`/`hub.connect()` use a `ws` transport that trusts it, `hub.api()` goes over
 * https with it. Needs `openssl` on the PATH.
 */
export class TlsHub extends Hub {
  constructor(label = "tls", { env = {} } = {}) {
    super(label, { env });
    const { certPath, keyPath, cert } = selfSignedCert(this.dir);
    this.ca = cert;
    this.env = { ...this.env, HOMEHUB_TLS_CERT: certPath, HOMEHUB_TLS_KEY: keyPath };
  }

  get httpUrl() {
    return `https://127.0.0.1:${this.port}`;
  }

  get socketUrl() {
    return `wss://127.0.0.1:${this.port}/socket`;
  }

  socket(params, opts = {}) {
    return super.socket(params, { transport: wsTransport({ ca: this.ca }), ...opts });
  }

  /** Admin API over https (Node's fetch cannot be given a CA without undici). */
  api(method, path, body, { token = this.token } = {}) {
    const headers = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const data = body === undefined ? undefined : JSON.stringify(body);
    if (data !== undefined) headers["content-type"] = "application/json";
    return new Promise((res, rej) => {
      const req = https.request(`${this.httpUrl}${path}`, { method, headers, ca: this.ca }, (resp) => {
        let text = "";
        resp.setEncoding("utf8");
        resp.on("data", (d) => {
          text += d;
        });
        resp.on("end", () => {
          let parsed = text;
          try {
            parsed = text === "" ? null : JSON.parse(text);
          } catch {
            /* keep the text */
          }
          res({ status: resp.statusCode, body: parsed });
        });
      });
      req.on("error", rej);
      if (data !== undefined) req.write(data);
      req.end();
    });
  }
}

// ---------------------------------------------------------------------------
// Appended for cluster.test.mjs: a private NATS server, fresh PostgreSQL databases, cluster
// nodes (`clusterHub`) and a tiny TCP balancer in front of several hubs.

import net from "node:net";
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const execFileP = promisify(execFile);

/** A TCP port that was free a moment ago (listen on port 0, read it, close). */
export function freePort() {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.unref();
    srv.once("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

/** Resolves true once a TCP connection to 127.0.0.1:`port` is accepted, false on refusal. */
export function tcpAccepts(port, timeoutMs = 1000) {
  return new Promise((res) => {
    const s = net.connect({ host: "127.0.0.1", port });
    const done = (v) => {
      clearTimeout(timer);
      s.destroy();
      res(v);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

const NATS_START_TIMEOUT_MS = 10_000;

/**
 * A private `nats-server` (HOMEHUB_TEST_NATS_BIN) on a free loopback port. `start()` after
 * `stop()` brings it back on the same port, so clients configured with `url` reconnect.
 *
 *   const nats = new Nats();
 *   await nats.start();            // nats.url === "nats://127.0.0.1:PORT"
 *   await nats.stop(); await nats.start();
 *   await nats.cleanup();
 */
export class Nats {
  constructor(label = "nats") {
    this.label = label;
    this.port = null;
    this.proc = null;
    this.log = [];
    this.runs = 0;
  }

  static binary() {
    const bin = process.env.HOMEHUB_TEST_NATS_BIN;
    if (!bin) {
      throw new Error(
        "HOMEHUB_TEST_NATS_BIN is not set: the cluster tests need a nats-server binary " +
          "(scripts/test.sh finds or installs one, see scripts/nats.sh)",
      );
    }
    if (!existsSync(bin)) throw new Error(`HOMEHUB_TEST_NATS_BIN=${bin} does not exist`);
    return bin;
  }

  get url() {
    if (this.port === null) throw new Error("NATS was never started: no port yet");
    return `nats://127.0.0.1:${this.port}`;
  }

  async start() {
    if (this.proc) throw new Error("NATS already running");
    const bin = Nats.binary();
    if (this.port === null) this.port = await freePort();
    this.runs += 1;
    const run = this.runs;
    const args = ["-a", "127.0.0.1", "-p", String(this.port)];
    this.log.push(`[nats run ${run}] $ ${bin} ${args.join(" ")}`);
    const proc = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    proc.exited = new Promise((res) => proc.once("exit", (code, signal) => res({ code, signal })));
    proc.once("error", (e) => this.log.push(`[nats run ${run}] spawn error: ${e.message}`));
    for (const stream of [proc.stdout, proc.stderr]) {
      createInterface({ input: stream }).on("line", (l) => this.log.push(`[nats run ${run}] ${l}`));
    }
    let exited = null;
    proc.exited.then((r) => {
      exited = r;
    });
    const deadline = Date.now() + NATS_START_TIMEOUT_MS;
    for (;;) {
      if (exited) {
        this.proc = null;
        throw new Error(`nats-server exited at start (${JSON.stringify(exited)}):\n${this.log.join("\n")}`);
      }
      if (await tcpAccepts(this.port, 500)) return this;
      if (Date.now() > deadline) {
        this.kill();
        throw new Error(`nats-server did not accept on ${this.port} within ${NATS_START_TIMEOUT_MS} ms:\n${this.log.join("\n")}`);
      }
      await sleep(50);
    }
  }

  /** SIGTERM (SIGKILL after 5 s) and wait for the exit. */
  async stop() {
    const proc = this.proc;
    this.proc = null;
    return terminate(proc);
  }

  kill() {
    killNow(this.proc);
    this.proc = null;
  }

  async cleanup() {
    await this.stop();
  }
}

function postgresServerUrl() {
  const url = process.env.HOMEHUB_TEST_POSTGRES_URL;
  if (!url) {
    throw new Error(
      "HOMEHUB_TEST_POSTGRES_URL is not set: the cluster tests need a PostgreSQL server " +
        "(scripts/test.sh starts a private one, see scripts/postgres.sh and docs/testing.md)",
    );
  }
  return url;
}

function psqlBinary() {
  const dir = process.env.HOMEHUB_TEST_POSTGRES_BIN;
  if (dir && existsSync(joinPath(dir, "psql"))) return joinPath(dir, "psql");
  return "psql";
}

async function psql(serverUrl, sql) {
  try {
    await execFileP(psqlBinary(), [serverUrl, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql], { timeout: 20_000 });
  } catch (e) {
    throw new Error(`psql ${JSON.stringify(sql)} on ${serverUrl} failed: ${e.message}\n${e.stderr || ""}`);
  }
}

/**
 * Creates a uniquely named database on the server at HOMEHUB_TEST_POSTGRES_URL
 * (`postgres://user@host:port/db`) with `psql`, and returns its URL (the same URL with
 * the new database's name as its path).
 */
export async function freshPostgresDatabase(prefix = "homehub_js") {
  const serverUrl = postgresServerUrl();
  const name = `${prefix}_${randomBytes(6).toString("hex")}`.toLowerCase();
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name ${name}`);
  await psql(serverUrl, `CREATE DATABASE ${name}`);
  const u = new URL(serverUrl);
  u.pathname = `/${name}`;
  return u.toString();
}

/** Drops a database made by {@link freshPostgresDatabase} (best effort, for `after`). */
export async function dropPostgresDatabase(dbUrl) {
  const name = new URL(dbUrl).pathname.replace(/^\//, "");
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) return;
  try {
    await psql(postgresServerUrl(), `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } catch {
    /* the throw-away server goes away anyway */
  }
}

/**
 * A Hub that is node `node` of the cluster on `natsUrl`, on the shared PostgreSQL
 * database `dbUrl` (`HOMEHUB_CLUSTER`, `HOMEHUB_NODE`, plus `env`).
 */
export function clusterHub(node, { natsUrl, dbUrl, env = {} }) {
  const hub = new Hub(`node-${node}`, { env: { HOMEHUB_CLUSTER: natsUrl, HOMEHUB_NODE: node, ...env } });
  hub.dbUrl = dbUrl;
  return hub;
}

/**
 * A tiny TCP balancer on a free loopback port: each new connection goes to the first
 * backend port of the list (`setBackends`) that accepts it; a backend that refuses is
 * skipped. When either side of a forwarded connection ends, so does the other.
 */
export class Balancer {
  constructor(backends = []) {
    this.backends = [...backends];
    this.server = null;
    this.port = null;
    this.conns = new Set();
    this.forwarded = []; // backend port of each forwarded connection, in order
  }

  setBackends(ports) {
    this.backends = [...ports];
  }

  get socketUrl() {
    return `ws://127.0.0.1:${this.port}/socket`;
  }

  start() {
    return new Promise((res, rej) => {
      this.server = net.createServer((client) => this.forward(client));
      this.server.once("error", rej);
      this.server.listen(0, "127.0.0.1", () => {
        this.port = this.server.address().port;
        res(this);
      });
    });
  }

  forward(client) {
    client.pause();
    this.conns.add(client);
    client.on("error", () => {});
    client.once("close", () => this.conns.delete(client));
    const backends = [...this.backends];
    const attempt = (i) => {
      if (client.destroyed) return;
      if (i >= backends.length) {
        client.destroy();
        return;
      }
      const up = net.connect({ host: "127.0.0.1", port: backends[i] });
      let connected = false;
      up.once("connect", () => {
        connected = true;
        this.forwarded.push(backends[i]);
        this.conns.add(up);
        up.once("close", () => {
          this.conns.delete(up);
          client.destroy();
        });
        client.once("close", () => up.destroy());
        client.pipe(up);
        up.pipe(client);
        client.resume();
      });
      up.on("error", () => {
        if (!connected) attempt(i + 1);
        else client.destroy();
      });
    };
    attempt(0);
  }

  async stop() {
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    if (this.server) {
      await new Promise((res) => this.server.close(() => res()));
      this.server = null;
    }
  }
}

/**
 * Parses Prometheus text: `metric(text, 'homehub_cluster_connected')` or with labels
 * `metric(text, 'homehub_cluster_messages_received_total', {kind: "broadcast"})`.
 * Returns the number, or undefined when the series is absent.
 */
export function metric(text, name, labels = {}) {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(",");
  for (const line of String(text).split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = (m[2] || "")
      .split(",")
      .filter(Boolean)
      .sort()
      .join(",");
    if (got === want) return Number(m[3]);
  }
  return undefined;
}
