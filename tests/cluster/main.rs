//! The cluster: several real hub processes on one real `nats-server` and one PostgreSQL
//! database, driven by real clients on different nodes (docs/cluster.md). Each test starts
//! its own NATS server (from `HOMEHUB_TEST_NATS_BIN`, which `./scripts/test.sh` finds or
//! installs) on a free port, its own database and its own nodes, so tests run in parallel
//! and may stop NATS or SIGKILL a node without touching each other.

#[allow(dead_code)]
#[path = "../bester/common.rs"]
mod bester;
#[allow(dead_code, unused_imports)]
#[path = "../hub/common.rs"]
mod common;
#[path = "../support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use common::{HubProcess, TestClient, reply_of};
use support::{eventually, eventually_within, metric_value};

const TOKEN: &str = "cluster-admin-token";

/// A private `nats-server` on a free port; killed when dropped.
struct Nats {
    port: u16,
    /// Extra arguments (TLS).
    args: Vec<String>,
    child: Option<Child>,
}

impl Nats {
    fn start() -> Nats {
        Nats::start_with(Vec::new())
    }

    fn start_with(args: Vec<String>) -> Nats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nats = Nats {
            port,
            args,
            child: None,
        };
        nats.start_again();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    fn start_again(&mut self) {
        assert!(self.child.is_none(), "NATS is already running");
        let bin = std::env::var("HOMEHUB_TEST_NATS_BIN").unwrap_or_else(|_| {
            panic!(
                "HOMEHUB_TEST_NATS_BIN is not set: run the tests with ./scripts/test.sh, which \
                 finds or installs nats-server, or point it at a nats-server binary"
            )
        });
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One hub process that is a node of the cluster.
struct Node {
    name: String,
    process: Option<HubProcess>,
}

impl Node {
    fn start(nats: &Nats, db: &str, name: &str, extra: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = nats.url();
        let mut env = vec![
            ("HOMEHUB_CLUSTER", url.as_str()),
            ("HOMEHUB_NODE", name),
            ("HOMEHUB_ADMIN_TOKEN", TOKEN),
        ];
        env.extend_from_slice(extra);
        let process = HubProcess::start_with(dir, db, &env);
        Node {
            name: name.to_owned(),
            process: Some(process),
        }
    }

    fn process(&self) -> &HubProcess {
        self.process.as_ref().expect("the node is running")
    }

    fn addr(&self) -> String {
        self.process().addr.clone()
    }

    fn kill_9(&mut self) {
        if let Some(p) = self.process.take() {
            let _ = p.kill_9();
        }
    }

    /// The Bester listener's address, from the node's log.
    async fn bester_addr(&self) -> std::net::SocketAddr {
        eventually("the node logs its Bester address", async || {
            self.process()
                .log()
                .lines()
                .filter(|l| l.contains("bester listening"))
                .find_map(|l| {
                    l.split("addr=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
        })
        .await
    }

    async fn socket(&self, name: &str) -> TestClient {
        TestClient::connect(&format!(
            "ws://{}/socket/websocket?vsn=2.0.0&name={name}",
            self.addr()
        ))
        .await
    }

    async fn raw_relay(&self) -> TestClient {
        TestClient::connect(&format!("ws://{}/relay", self.addr())).await
    }

    async fn compendium(&self) -> TestClient {
        TestClient::connect(&format!("ws://{}/compendium", self.addr())).await
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, self.http(path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("admin request");
        let status = res.status().as_u16();
        let text = res.text().await.expect("admin body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(self.http("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    async fn ready(&self) -> u16 {
        reqwest::get(self.http("/health/ready"))
            .await
            .expect("GET /health/ready")
            .status()
            .as_u16()
    }

    /// The node names this node sees in `/api/cluster`.
    async fn sees(&self) -> Vec<String> {
        let (status, body) = self.admin(Method::GET, "/api/cluster", None).await;
        assert_eq!(status, 200, "{body}");
        let mut names: Vec<String> = body["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }
}

/// A NATS server, a fresh PostgreSQL database and `names.len()` nodes on them, each seeing
/// every other before the test goes on.
async fn cluster(names: &[&str]) -> (Nats, String, Vec<Node>) {
    cluster_with(names, &[]).await
}

/// [`cluster`] with `extra` in every node's environment.
async fn cluster_with(names: &[&str], extra: &[(&str, &str)]) -> (Nats, String, Vec<Node>) {
    // reqwest's TLS needs the process's rustls provider, as in the hub.
    homehub::net::listener::install_crypto_provider();
    let nats = Nats::start();
    let db = support::postgres::fresh_postgres_database().await;
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node::start(&nats, &db, n, extra))
        .collect();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    for node in &nodes {
        eventually(&format!("{} sees every node", node.name), async || {
            (node.sees().await == want).then_some(())
        })
        .await;
    }
    (nats, db, nodes)
}

/// A Phoenix socket named `name` on `node`, joined to `relay` (join_ref "r").
async fn relay_device(node: &Node, name: &str) -> TestClient {
    let mut c = node.socket(name).await;
    let r = c.join("relay", "r", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    c
}

/// A raw `/relay` device registered as `name`.
async fn raw_device(node: &Node, name: &str) -> TestClient {
    let mut c = node.raw_relay().await;
    let r = c
        .request(
            json!({"target": "server", "payload": {"command": "register", "device_name": name}}),
        )
        .await;
    assert_eq!(r, json!({"success": true}), "register {name}");
    c
}

async fn send(c: &mut TestClient, r: &str, target: &str, payload: Value) -> Value {
    let f = c
        .push(
            "r",
            r,
            "relay",
            "send",
            json!({"target": target, "payload": payload}),
        )
        .await;
    f[4].clone()
}

/// A heartbeat round trip: the hub has dealt with everything this socket sent before.
async fn sync(c: &mut TestClient) {
    let r = c.push("hb", "hb", "phoenix", "heartbeat", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
}

#[tokio::test]
async fn a_relay_send_reaches_a_device_on_another_node_with_the_same_replies() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut x = relay_device(a, "rx-x").await;
    let mut y = relay_device(b, "rx-y").await;
    let mut z = raw_device(b, "rx-z").await;

    let payload = json!({"hello": "across", "n": [1, 2, 3]});
    assert_eq!(
        send(&mut x, "1", "rx-y", payload.clone()).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        y.recv_event("packet").await,
        json!(["r", null, "relay", "packet", {"sender": "rx-x", "payload": payload}])
    );

    // A raw /relay device on node b, from a Phoenix device on node a, and back.
    assert_eq!(
        send(&mut x, "2", "rx-z", json!({"to": "raw"})).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        z.recv().await,
        json!({"sender": "rx-x", "payload": {"to": "raw"}})
    );
    z.send(json!({"target": "rx-x", "payload": {"back": true}}))
        .await;
    assert_eq!(
        x.recv_event("packet").await,
        json!(["r", null, "relay", "packet", {"sender": "rx-z", "payload": {"back": true}}])
    );

    // A target connected nowhere: `unknown target`, at once (no node answers the request).
    let started = Instant::now();
    assert_eq!(
        send(&mut x, "3", "rx-nobody", json!({})).await,
        json!({"status": "error", "response": {"reason": "unknown target"}})
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "unknown target took {took:?}"
    );
}

#[tokio::test]
async fn relay_listings_and_device_info_cover_every_node() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let mut x = relay_device(&nodes[0], "ls-x").await;
    let mut strip = nodes[1].socket("ls-strip").await;
    let r = strip
        .join(
            "relay",
            "r",
            json!({"description": "LED strip", "version": "1.0.1", "interface": "led.md"}),
        )
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let mut raw = raw_device(&nodes[1], "ls-raw").await;

    let r = x.push("r", "1", "relay", "get_devices", json!({})).await;
    assert_eq!(
        r[4],
        json!({"status": "ok", "response": {"devices": ["ls-raw", "ls-strip", "ls-x"]}})
    );
    let r = x
        .push(
            "r",
            "2",
            "relay",
            "get_device_info",
            json!({"device_name": "LS-Strip"}),
        )
        .await;
    assert_eq!(
        r[4],
        json!({"status": "ok", "response": {"name": "ls-strip", "description": "LED strip",
                                             "version": "1.0.1", "interface": "led.md"}})
    );
    let r = x
        .push(
            "r",
            "3",
            "relay",
            "get_device_info",
            json!({"device_name": "ls-ghost"}),
        )
        .await;
    assert_eq!(
        r[4],
        json!({"status": "error", "response": {"reason": "unknown device"}})
    );
    // The raw door asks the same questions of the whole cluster.
    let r = raw
        .request(
            json!({"target": "server", "payload": {"command": "get_device_info",
                                                          "device_name": "ls-x"}}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["response"]["name"], "ls-x", "{r}");
}

#[tokio::test]
async fn a_compendium_route_reaches_an_address_held_on_another_node() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let mut phone = nodes[1].compendium().await;
    let r = phone.request(json!({"type": "INIT"})).await;
    assert_eq!(r["type"], "INITRESP", "{r}");
    let addr = r["EpheWssAddr"].as_str().expect("address").to_owned();

    let mut pc = nodes[0].compendium().await;
    let msg = json!({"hello": "phone", "nested": {"n": [1, 2]}});
    let route = json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": msg});
    // At once: INITRESP comes only when the address is routable from every node.
    pc.send(route).await;
    assert_eq!(phone.recv().await, json!({"type": "DELIVER", "msg": msg}));
    let r = pc.request(json!({"type": "INIT"})).await;
    assert_eq!(r["type"], "INITRESP", "the sender got {r}");
}

/// The number of topic broadcasts `node` has received from other nodes.
async fn broadcasts_received(node: &Node) -> f64 {
    node.metric("homehub_cluster_messages_received_total{kind=\"broadcast\"}")
        .await
}

#[tokio::test]
async fn a_broadcast_crosses_only_to_nodes_with_subscribers_once_each() {
    let (_nats, _db, nodes) = cluster(&["a", "b", "c"]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    let mut watchers = Vec::new();
    for (i, name) in ["w1", "w2", "w3"].iter().enumerate() {
        let mut w = b.socket(&format!("bc-{name}")).await;
        let r = w.join("events", &format!("{i}"), json!({})).await;
        assert_eq!(reply_of(&r).0, "ok");
        watchers.push(w);
    }
    let mut lock = a.socket("bc-lock").await;
    let r = lock.join("lock:BC1", "1", json!({})).await;
    // No wait: node b's join replies only once the NATS server has its `events` interest.
    assert_eq!(reply_of(&r).0, "ok", "{r}");

    let (b0, c0) = (broadcasts_received(b).await, broadcasts_received(c).await);
    for n in 0..5 {
        let r = lock
            .push("1", &format!("e{n}"), "lock:BC1", "event", json!({"n": n}))
            .await;
        assert_eq!(reply_of(&r).0, "ok", "{r}");
        for w in &mut watchers {
            assert_eq!(
                w.recv_event("event").await,
                json!([null, null, "events", "event", {"from": "bc-lock", "message": {"n": n}}])
            );
        }
    }
    assert_eq!(
        broadcasts_received(b).await - b0,
        5.0,
        "node b (3 subscribers) receives each broadcast once"
    );
    assert_eq!(
        broadcasts_received(c).await - c0,
        0.0,
        "node c (no subscriber) receives none"
    );

    // After the last subscriber on b leaves, b stops receiving them too.
    for w in watchers {
        w.hang_up().await;
    }
    let b1 = broadcasts_received(b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = lock
        .push("1", "late", "lock:BC1", "event", json!({"late": true}))
        .await;
    assert_eq!(reply_of(&r).0, "ok");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broadcasts_received(b).await, b1);
}

#[tokio::test]
async fn an_admin_state_change_on_one_node_reaches_the_lock_on_another() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let mut lock = nodes[1].socket("st-lock").await;
    let r = lock
        .join("lock:ST1", "1", json!({"accepts": ["state"]}))
        .await;
    // Pushed at once after the join reply: the lock's node already has the subscription.
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let (status, body) = nodes[0]
        .admin(
            Method::PUT,
            "/api/locks/ST1/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        lock.recv_event("state").await,
        json!(["1", null, "lock:ST1", "state", {"locked": false}])
    );
    // So does a pairing request (`mode:pair`), and the lock completes it through node b.
    let (status, pairing) = nodes[0]
        .admin(
            Method::POST,
            "/api/locks/ST1/pair",
            Some(json!({"name": "blue tag", "type": "tag"})),
        )
        .await;
    assert_eq!(status, 201, "{pairing}");
    let mode_pair = lock.recv_event("mode:pair").await;
    assert_eq!(mode_pair[4]["pair_id"], pairing["pair_id"], "{mode_pair}");
    let mut complete = mode_pair[4].clone();
    complete["serial"] = json!("TAG-ST1");
    let r = lock
        .push("1", "pc", "lock:ST1", "pair:complete", complete)
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    // Node a's admin API shows the lock online, in the listing and on its own.
    assert_eq!(body["online"], true, "{body}");
    let (_, listed) = nodes[0].admin(Method::GET, "/api/locks", None).await;
    let online: Vec<&Value> = listed
        .as_array()
        .expect("locks")
        .iter()
        .filter(|l| l["serial"] == "ST1")
        .map(|l| &l["online"])
        .collect();
    assert_eq!(online, [&json!(true)], "{listed}");
    lock.hang_up().await;
    eventually("the lock shows offline on node a", async || {
        let (_, one) = nodes[0].admin(Method::GET, "/api/locks/ST1", None).await;
        (one["online"] == false).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_drifting_lock_on_another_node_is_pushed_again_until_it_reports_there() {
    let (_nats, _db, nodes) = cluster_with(&["a", "b"], &[("HOMEHUB_STATE_DRIFT_MS", "300")]).await;
    let mut lock = nodes[1].socket("dr-lock").await;
    let r = lock
        .join("lock:DR1", "1", json!({"accepts": ["state"]}))
        .await;
    assert_eq!(reply_of(&r).0, "ok", "{r}");
    let (status, body) = nodes[0]
        .admin(
            Method::PUT,
            "/api/locks/DR1/state",
            Some(json!({"locked": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Node a took the change: it pushes again, through node b, while the lock is silent.
    for _ in 0..3 {
        let f = lock.recv_event("state").await;
        assert_eq!(f[4], json!({"locked": false}), "{f}");
    }
    for node in &nodes {
        let (_, one) = node.admin(Method::GET, "/api/locks/DR1", None).await;
        assert_eq!(one["drifting"], true, "{one}");
    }
    // The report reaches node b's store; node a sees it there and stops.
    let f = lock
        .push("1", "rp", "lock:DR1", "report", json!({"locked": false}))
        .await;
    assert_eq!(reply_of(&f).0, "ok", "{f}");
    let (_, one) = nodes[0].admin(Method::GET, "/api/locks/DR1", None).await;
    assert_eq!(
        (&one["drifting"], &one["agrees"]),
        (&json!(false), &json!(true)),
        "{one}"
    );
    lock.expect_silence(2_000).await;
}

/// Joins `presence:devices`; returns the `presence_state` payload.
async fn watch_presence(c: &mut TestClient) -> Value {
    let r = c.join("presence:devices", "p", json!({})).await;
    assert_eq!(reply_of(&r).0, "ok");
    let push = c.recv_event("presence_state").await;
    push[4].clone()
}

/// Receives `presence_diff`s until `done` says the accumulated joins and leaves are in.
async fn diffs_until(c: &mut TestClient, mut done: impl FnMut(&Value, &Value) -> bool) {
    let mut joins = json!({});
    let mut leaves = json!({});
    while !done(&joins, &leaves) {
        let f = c.recv_event("presence_diff").await;
        for (acc, part) in [(&mut joins, &f[4]["joins"]), (&mut leaves, &f[4]["leaves"])] {
            for (k, v) in part.as_object().expect("a map") {
                acc[k] = v.clone();
            }
        }
    }
}

#[tokio::test]
async fn presence_spans_nodes_and_a_killed_node_leaves_within_5_s() {
    let (_nats, _db, mut nodes) = cluster(&["a", "b", "c"]).await;
    let mut on_b = nodes[1].socket("pr-on-b").await;
    sync(&mut on_b).await;

    // A watcher that joins later gets every node's entries in its presence_state.
    let mut watcher = nodes[0].socket("pr-watcher").await;
    let state = eventually("node b's device in node a's presence_state", async || {
        let mut w = nodes[0].socket("pr-probe").await;
        let state = watch_presence(&mut w).await;
        state.get("pr-on-b").is_some().then_some(state)
    })
    .await;
    let meta = &state["pr-on-b"]["metas"][0];
    assert_eq!(meta["door"], "phoenix", "{state}");
    assert!(meta["phx_ref"].as_str().is_some_and(|r| !r.is_empty()));
    watch_presence(&mut watcher).await;

    // A device connecting on c arrives as a diff.
    let mut on_c = nodes[2].socket("pr-on-c").await;
    sync(&mut on_c).await;
    diffs_until(&mut watcher, |joins, _| joins.get("pr-on-c").is_some()).await;

    // SIGKILL node c: its entry leaves everywhere within 5 s.
    let killed = Instant::now();
    nodes[2].kill_9();
    let limit = Duration::from_secs(5);
    tokio::time::timeout(
        limit,
        diffs_until(&mut watcher, |_, leaves| leaves.get("pr-on-c").is_some()),
    )
    .await
    .unwrap_or_else(|_| panic!("no leave for node c's device within {limit:?}"));
    assert!(killed.elapsed() <= limit);
    // Node b's device stays.
    let mut again = nodes[0].socket("pr-probe2").await;
    let state = watch_presence(&mut again).await;
    assert!(state.get("pr-on-b").is_some(), "{state}");
    assert!(state.get("pr-on-c").is_none(), "{state}");

    // A node that starts now asks the others for their state: its watchers see them.
    let late = Node::start(&_nats, &_db, "d", &[]);
    let state = eventually(
        "the new node's presence_state has the others' devices",
        async || {
            let mut w = late.socket("pr-late").await;
            let state = watch_presence(&mut w).await;
            (state.get("pr-on-b").is_some() && state.get("pr-watcher").is_some()).then_some(state)
        },
    )
    .await;
    assert!(state.get("pr-on-c").is_none(), "{state}");
}

#[tokio::test]
async fn one_name_one_socket_across_the_cluster() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let mut old = nodes[0].socket("one-d").await;
    sync(&mut old).await;
    let mut new = nodes[1].socket("one-d").await;
    sync(&mut new).await;
    // The socket on node a is closed by its node.
    old.expect_close().await;
    // And the device is listed once, on node b, by either node.
    for node in &nodes {
        eventually("one-d listed once, on b", async || {
            let (_, body) = node.admin(Method::GET, "/api/devices", None).await;
            let on: Vec<&Value> = body["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .filter(|d| d["name"] == "one-d")
                .map(|d| &d["node"])
                .collect();
            (on == [&json!("b")]).then_some(())
        })
        .await;
    }
    sync(&mut new).await;

    // Raw relay names follow the one rule across nodes too: a name held on node a is
    // refused on node b, and `force` takes it over, telling and closing the old holder.
    let mut first = raw_device(&nodes[0], "one-raw").await;
    let mut second = nodes[1].raw_relay().await;
    let register = |force: bool| {
        json!({"target": "server",
               "payload": {"command": "register", "device_name": "one-raw", "force": force}})
    };
    assert_eq!(
        second.request(register(false)).await,
        json!({"success": false, "error_message": "name taken"})
    );
    assert_eq!(
        second.request(register(true)).await,
        json!({"success": true})
    );
    assert_eq!(
        first.recv().await,
        json!({"success": false, "error_message": "name taken over by another connection"})
    );
    first.expect_close().await;
}

#[tokio::test]
async fn the_admin_api_of_any_node_sees_and_disconnects_the_whole_cluster() {
    let (_nats, _db, nodes) = cluster(&["a", "b"]).await;
    let mut on_a = nodes[0].socket("adm-on-a").await;
    sync(&mut on_a).await;
    let mut on_b = nodes[1].socket("adm-on-b").await;
    sync(&mut on_b).await;

    let (status, body) = nodes[0].admin(Method::GET, "/api/devices", None).await;
    assert_eq!(status, 200, "{body}");
    let node_of = |name: &str| {
        body["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|d| d["name"] == name)
            .map(|d| d["node"].clone())
    };
    assert_eq!(node_of("adm-on-a"), Some(json!("a")), "{body}");
    assert_eq!(node_of("adm-on-b"), Some(json!("b")), "{body}");

    // Each node's load arrives with its heartbeats.
    let body = eventually("each node's connections in /api/cluster", async || {
        let (status, body) = nodes[1].admin(Method::GET, "/api/cluster", None).await;
        assert_eq!(status, 200, "{body}");
        let all_loaded = body["nodes"].as_array().is_some_and(|ns| {
            ns.iter()
                .all(|n| n["connections"].as_u64().is_some_and(|c| c >= 1))
        });
        all_loaded.then_some(body)
    })
    .await;
    assert_eq!(body["clustered"], true);
    assert_eq!(body["node"], "b");
    assert_eq!(body["connected"], true);
    let nodes_seen = body["nodes"].as_array().expect("nodes");
    assert_eq!(nodes_seen.len(), 2, "{body}");
    for n in nodes_seen {
        assert_eq!(n["state"], "up", "{body}");
        assert_eq!(n["this_node"], n["name"] == "b", "{body}");
    }

    // Disconnect from node a a device held by node b: 204, and its socket closes.
    let (status, body) = nodes[0]
        .admin(Method::POST, "/api/devices/adm-on-b/disconnect", None)
        .await;
    assert_eq!(status, 204, "{body}");
    on_b.expect_close().await;
    let (status, _) = nodes[0]
        .admin(Method::POST, "/api/devices/adm-nobody/disconnect", None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_revoked_token_disconnects_its_device_on_every_node() {
    let (_nats, _db, nodes) = cluster_with(&["a", "b"], &[("HOMEHUB_AUTH", "token")]).await;
    let (status, issued) = nodes[0]
        .admin(
            Method::POST,
            "/api/tokens",
            Some(json!({"device": "tok-dev"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().expect("token").to_owned();
    let id = issued["id"].as_str().expect("id").to_owned();
    // The device connects to node b with the token (node b learns it from the database).
    let mut dev = TestClient::connect(&format!(
        "ws://{}/socket/websocket?vsn=2.0.0&name=tok-dev&token={token}",
        nodes[1].addr()
    ))
    .await;
    sync(&mut dev).await;
    let (status, body) = nodes[0]
        .admin(Method::DELETE, &format!("/api/tokens/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    dev.expect_close().await;
}

#[tokio::test]
async fn a_token_revoked_during_a_nats_outage_is_enforced_when_the_nodes_reconnect() {
    let (mut nats, _db, nodes) = cluster_with(&["a", "b"], &[("HOMEHUB_AUTH", "token")]).await;
    let (status, issued) = nodes[1]
        .admin(
            Method::POST,
            "/api/tokens",
            Some(json!({"device": "cut-dev"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().expect("token").to_owned();
    let id = issued["id"].as_str().expect("id").to_owned();
    let mut dev = TestClient::connect(&format!(
        "ws://{}/socket/websocket?vsn=2.0.0&name=cut-dev&token={token}",
        nodes[0].addr()
    ))
    .await;
    sync(&mut dev).await;

    nats.stop();
    eventually("node b notices NATS is gone", async || {
        (nodes[1].metric("homehub_cluster_connected").await == 0.0).then_some(())
    })
    .await;
    // Revoked in the store, but node a cannot be told: the caller learns it (503), and a
    // retry after the outage would close the connections.
    let (status, body) = nodes[1]
        .admin(Method::DELETE, &format!("/api/tokens/{id}"), None)
        .await;
    assert_eq!(status, 503, "{body}");
    sync(&mut dev).await;

    // Node a reads the revocations it missed when it reconnects, and closes the socket.
    nats.start_again();
    dev.expect_close().await;
    // And refuses the token from now on.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket/websocket?vsn=2.0.0&name=cut-dev&token={token}",
        nodes[0].addr()
    ))
    .await;
    assert!(refused.is_err(), "a revoked token was admitted");
}

#[tokio::test]
async fn a_nats_outage_keeps_local_service_fails_readiness_and_recovers() {
    let (mut nats, _db, nodes) = cluster(&["a", "b"]).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut x = relay_device(a, "out-x").await;
    let mut local = relay_device(a, "out-local").await;
    let mut y = relay_device(b, "out-y").await;
    assert_eq!(a.ready().await, 200);
    assert_eq!(a.metric("homehub_cluster_connected").await, 1.0);

    nats.stop();
    for node in &nodes {
        eventually("the node notices NATS is gone", async || {
            (node.metric("homehub_cluster_connected").await == 0.0).then_some(())
        })
        .await;
        assert_eq!(node.ready().await, 503);
    }
    // Cross-node: an error reply, never a false ok.
    assert_eq!(
        send(&mut x, "1", "out-y", json!({"lost": true})).await,
        json!({"status": "error", "response": {"reason": "fabric unavailable"}})
    );
    // Local traffic goes on.
    assert_eq!(
        send(&mut x, "2", "out-local", json!({"local": 1})).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        local.recv_event("packet").await,
        json!(["r", null, "relay", "packet", {"sender": "out-x", "payload": {"local": 1}}])
    );
    sync(&mut y).await;

    nats.start_again();
    for node in &nodes {
        eventually_within(
            Duration::from_secs(15),
            "the node is ready again",
            async || (node.ready().await == 200).then_some(()),
        )
        .await;
        assert_eq!(node.metric("homehub_cluster_connected").await, 1.0);
    }
    // The subscriptions are back without a restart: both ways across nodes again.
    eventually("cross-node relay works again", async || {
        let r = send(&mut x, "3", "out-y", json!({"back": 1})).await;
        (r["status"] == "ok").then_some(())
    })
    .await;
    assert_eq!(
        y.recv_event("packet").await,
        json!(["r", null, "relay", "packet", {"sender": "out-x", "payload": {"back": 1}}])
    );
    assert_eq!(
        send(&mut y, "4", "out-x", json!({"reply": 1})).await,
        json!({"status": "ok", "response": {}})
    );
    // The lost packet was refused, so nothing but the new one arrives.
    let f = x.recv_event("packet").await;
    assert_eq!(f[4]["payload"], json!({"reply": 1}), "{f}");
}

#[tokio::test]
async fn nodes_reach_a_tls_nats_server_with_the_configured_ca_and_only_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("a certificate");
    let (cert_path, key_path) = (dir.path().join("nats.pem"), dir.path().join("nats.key"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let nats = Nats::start_with(vec![
        "--tls".into(),
        "--tlscert".into(),
        cert_path.display().to_string(),
        "--tlskey".into(),
        key_path.display().to_string(),
    ]);
    let db = support::postgres::fresh_postgres_database().await;
    homehub::net::listener::install_crypto_provider();
    let ca = cert_path.display().to_string();
    let tls = [("HOMEHUB_CLUSTER_TLS_CA", ca.as_str())];
    let nodes = [
        Node::start(&nats, &db, "a", &tls),
        Node::start(&nats, &db, "b", &tls),
    ];
    for node in &nodes {
        eventually("the TLS cluster forms", async || {
            (node.sees().await == ["a", "b"]).then_some(())
        })
        .await;
    }
    let mut x = relay_device(&nodes[0], "tls-x").await;
    let mut y = relay_device(&nodes[1], "tls-y").await;
    assert_eq!(
        send(&mut x, "1", "tls-y", json!({"over": "tls"})).await,
        json!({"status": "ok", "response": {}})
    );
    assert_eq!(
        y.recv_event("packet").await,
        json!(["r", null, "relay", "packet", {"sender": "tls-x", "payload": {"over": "tls"}}])
    );

    // A node that does not trust the server's certificate never joins: it serves its own
    // clients and says it is not ready.
    let stranger = Node::start(&nats, &db, "c", &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stranger.ready().await, 503);
    assert_eq!(stranger.metric("homehub_cluster_connected").await, 0.0);
    assert_eq!(nodes[0].sees().await, ["a", "b"]);
}

#[test]
fn a_cluster_on_sqlite_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}", dir.path().join("homehub.db").display());
    let out = Command::new(env!("CARGO_BIN_EXE_homehub"))
        .args(["serve", "--bind", "127.0.0.1:0", "--bester-bind", ""])
        .args(["--database-url", &db])
        .env("HOMEHUB_CLUSTER", "nats://127.0.0.1:1")
        .stdin(Stdio::null())
        .output()
        .expect("run the hub");
    assert!(!out.status.success(), "the hub started: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("postgres://"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{out:?}"
    );
}

#[tokio::test]
async fn bester_send_clients_reaches_users_and_relay_devices_on_other_nodes() {
    use bester::{BesterClient, status};
    // Node a runs the documented example handler `upper`, which answers `sendClients` to
    // the names in `to`.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("upper.sock");
    let config = dir.path().join("bester.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bester_upper.py");
    std::fs::write(
        &config,
        json!({"handlers": {"upper": {"socket": socket, "command": ["python3", script]}}})
            .to_string(),
    )
    .expect("write bester.json");
    let config = config.display().to_string();
    let (_nats, _db, nodes) =
        cluster_with(&["a", "b"], &[("HOMEHUB_BESTER_CONFIG", config.as_str())]).await;
    let (status_code, body) = nodes[0]
        .admin(
            Method::POST,
            "/api/bester/users",
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
    assert_eq!(status_code, 201, "{body}");
    let (status_code, body) = nodes[0]
        .admin(
            Method::POST,
            "/api/bester/users",
            Some(json!({"username": "bob", "password": "correct horse"})),
        )
        .await;
    assert_eq!(status_code, 201, "{body}");

    let mut alice = BesterClient::connect(nodes[0].bester_addr().await).await;
    let r = alice.authenticate("alice", "correct horse").await;
    assert_eq!(status(&r), "ok", "{r}");
    let mut bob = BesterClient::connect(nodes[1].bester_addr().await).await;
    let r = bob.authenticate("bob", "correct horse").await;
    assert_eq!(status(&r), "ok", "{r}");
    let mut lamp = raw_device(&nodes[1], "bs-lamp").await;

    // listClients on node a sees bob, logged in on node b (his node subscribes to his
    // name asynchronously after the login).
    eventually("bob listed on node a", async || {
        let r = alice.call("list_clients", json!(null)).await;
        (r["payload"]["data"]["clients"] == json!(["alice", "bob"])).then_some(())
    })
    .await;
    let r = alice
        .call(
            "upper",
            json!({"text": "hi", "to": ["bob", "bs-lamp", "nobody"]}),
        )
        .await;
    assert_eq!(status(&r), "undelivered", "{r}");
    assert_eq!(
        r["payload"]["data"]["delivered"],
        json!(["bob", "bs-lamp"]),
        "{r}"
    );
    assert_eq!(
        r["payload"]["data"]["undelivered"],
        json!({"nobody": "not connected"}),
        "{r}"
    );
    let got = bob.recv_delivery().await;
    assert_eq!(got["header"]["from"], "alice", "{got}");
    assert_eq!(got["payload"]["data"], json!({"text": "HI"}), "{got}");
    assert_eq!(
        lamp.recv().await,
        json!({"sender": "bester:alice", "payload": {"type": "upper", "data": {"text": "HI"}}})
    );

    // Removing bob on node a closes his connection on node b.
    let (status_code, _) = nodes[0]
        .admin(Method::DELETE, "/api/bester/users/bob", None)
        .await;
    assert_eq!(status_code, 204);
    bob.expect_closed().await;
    // Stopped, not killed: node a stops the handler process it started.
    for mut node in nodes {
        if let Some(p) = node.process.take() {
            p.terminate();
        }
    }
}

#[tokio::test]
async fn an_unreadable_nats_credentials_file_stops_the_node_at_start() {
    let db = support::postgres::fresh_postgres_database().await;
    let out = Command::new(env!("CARGO_BIN_EXE_homehub"))
        .args(["serve", "--bind", "127.0.0.1:0", "--bester-bind", ""])
        .args(["--database-url", &db])
        .env("HOMEHUB_CLUSTER", "nats://127.0.0.1:1")
        .env("HOMEHUB_CLUSTER_CREDENTIALS", "/nonexistent/homehub.creds")
        .stdin(Stdio::null())
        .output()
        .expect("run the hub");
    assert!(!out.status.success(), "the hub started: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/homehub.creds"), "{stderr}");
}
