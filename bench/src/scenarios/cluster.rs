//! S9: two homehub nodes on one `nats-server` and one PostgreSQL database (docs/cluster.md).
//!
//! 1. Relay at a fixed open-loop rate (`--cluster-rate`, default 5,000 msgs/s), back to back:
//!    pairs whose two devices are on node A ("same node"), then pairs with one device on each
//!    node ("cross node", every message crosses NATS), alternately, three times each; each
//!    kind's median run by p99 is kept. Reported: latency, and the CPU per message of node A, node B and
//!    nats-server, read from /proc.
//! 2. A broadcast to `events` subscribers spread over both nodes: from the nodes' own
//!    `/metrics`, how many times each event crossed NATS (once per interested node is the
//!    design: node A publishes it once and node B receives it once).
//!
//! The nodes and nats-server share the hub CPU (`--hub-cpu`); the generator has its own.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::relay::relay_step;
use super::{CtxRc, Step, int, ms};
use crate::client::Target;
use crate::hub::{HubProc, pin_to, scrape_metrics};
use crate::report::ScenarioResult;
use crate::session::{Role, Spec};
use crate::stats::{Hist, Lat, now_ns};
use crate::sys::CpuMark;

/// A private nats-server, killed when dropped.
struct Nats {
    /// Killed when dropped (`kill_on_drop`).
    _child: Child,
    pid: u32,
    url: String,
}

async fn start_nats(bin: &Path, cpu: Option<usize>, dir: &Path) -> anyhow::Result<Nats> {
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    pin_to(&mut cmd, cpu);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id().context("nats-server exited at once")?;
    let deadline = now_ns() + 10_000_000_000;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if now_ns() > deadline {
            bail!("nats-server did not listen on port {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Nats {
        _child: child,
        pid,
        url: format!("nats://127.0.0.1:{port}"),
    })
}

/// A counter of `/metrics` at `addr` (0 when absent).
async fn metric(ctx: &CtxRc, addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let m = scrape_metrics(addr, &addr.to_string(), ctx.admin_token.as_deref()).await?;
    Ok(m.into_iter()
        .find(|(k, _)| k == name)
        .map_or(0.0, |(_, v)| v))
}

/// CPU seconds each of `pids` used while `work` ran.
async fn cpu_of<T>(pids: &[u32], work: impl std::future::Future<Output = T>) -> (T, Vec<f64>) {
    let before: Vec<Option<CpuMark>> = pids.iter().map(|p| CpuMark::take(*p)).collect();
    let out = work.await;
    let secs = pids
        .iter()
        .zip(before)
        .map(|(p, b)| {
            b.zip(CpuMark::take(*p))
                .map_or(0.0, |(b, a)| b.cpu_secs_until(&a))
        })
        .collect();
    (out, secs)
}

/// One relay run at the fixed rate, with each process's CPU per message.
#[derive(Debug, Clone, Serialize)]
struct RelayRun {
    kind: &'static str,
    step: Step,
    /// µs of CPU per relayed message: node A, node B, nats-server, and their sum.
    cpu_us_per_msg_a: f64,
    cpu_us_per_msg_b: f64,
    cpu_us_per_msg_nats: f64,
    cpu_us_per_msg_total: f64,
}

async fn relay_run(
    ctx: &CtxRc,
    txs: &[mpsc::UnboundedSender<u64>],
    kind: &'static str,
    pids: &[u32; 3],
) -> RelayRun {
    let rate = ctx.set.cluster_rate;
    let label = format!("S9 relay {kind}");
    let (step, cpu) = cpu_of(
        pids,
        relay_step(ctx, txs, rate, ctx.set.steady_secs, &label),
    )
    .await;
    let per = |s: f64| (s * 1e6 / step.scheduled.max(1) as f64 * 100.0).round() / 100.0;
    RelayRun {
        kind,
        cpu_us_per_msg_a: per(cpu[0]),
        cpu_us_per_msg_b: per(cpu[1]),
        cpu_us_per_msg_nats: per(cpu[2]),
        cpu_us_per_msg_total: per(cpu.iter().sum()),
        step,
    }
}

/// Relay devices: `pairs` pairs, device `2k` on node A and `2k+1` on `b` (`None`: on A).
fn relay_specs(
    ctx: &CtxRc,
    tag: &str,
    pairs: usize,
    b: Option<&Rc<Target>>,
    txs: &mut Vec<mpsc::UnboundedSender<u64>>,
) -> Vec<Spec> {
    (0..2 * pairs)
        .map(|i| {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            Spec {
                idx: i,
                name: ctx.name(tag, i),
                topics: vec!["relay".to_owned()],
                role: Role::Relay {
                    peer: ctx.name(tag, i ^ 1).to_lowercase(),
                    cmds: rx,
                },
                reconnect: false,
                rcvbuf: None,
                intended_ns: None,
                stop: ctx.stop_rx(),
                target: if i % 2 == 1 { b.cloned() } else { None },
            }
        })
        .collect()
}

/// Of the runs of one kind, the median by p99 (the host is shared: one run may be
/// disturbed, and neither the best nor the worst is the figure to keep).
fn median_by_p99(mut runs: Vec<RelayRun>) -> RelayRun {
    runs.sort_by(|a, b| a.step.latency.p99_ms.total_cmp(&b.step.latency.p99_ms));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

pub async fn s9(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S9", "cluster: relay and broadcast across two nodes");
    let targets = [
        "cross-node relay adds ≤ 0.5 ms p50 over same-node",
        "cross-node relay adds ≤ 2 ms p99 over same-node",
        "a broadcast crosses NATS once per interested node",
    ];
    let (Some(spec), Some(nats_bin), Some(db)) = (
        ctx.hub_spec.clone(),
        ctx.set.nats_bin.clone(),
        ctx.set.cluster_database_url.clone(),
    ) else {
        for t in targets {
            r.check(t, "not run", None);
        }
        r.note(
            "S9 needs a spawned hub (--hub-bin), a nats-server (--nats-bin or \
             HOMEHUB_TEST_NATS_BIN) and a PostgreSQL database the nodes share \
             (--cluster-database-url or HOMEHUB_TEST_POSTGRES_URL); bench/run.sh provides both",
        );
        return Ok(r);
    };
    let dir = ctx.tmp_root.join("s9");
    let nats = start_nats(&nats_bin, spec.cpu, &dir.join("nats")).await?;
    let node_env = |node: &str| {
        vec![
            ("DATABASE_URL".to_owned(), db.clone()),
            ("HOMEHUB_CLUSTER".to_owned(), nats.url.clone()),
            ("HOMEHUB_NODE".to_owned(), node.to_owned()),
            ("RUST_LOG".to_owned(), "homehub=warn".to_owned()),
        ]
    };
    ctx.start_hub_with("s9-a", &node_env("a")).await?;
    let mut spec_b = spec.clone();
    spec_b.env.extend(node_env("b"));
    let mut node_b = HubProc::start(&spec_b, &dir.join("b"), "127.0.0.1:0").await?;
    let target_a = ctx.target();
    let target_b = Rc::new(Target {
        addr: node_b.addr,
        host: node_b.addr.to_string(),
        ..(*target_a).clone()
    });
    let pid_a = ctx.hub_pid().context("node A is not running")?;
    let pids = [pid_a, node_b.pid, nats.pid];
    *ctx.also_measured.borrow_mut() = vec![node_b.pid, nats.pid];
    let out = run(ctx, &mut r, &target_a, &target_b, &pids).await;
    ctx.also_measured.borrow_mut().clear();
    node_b.kill9().await;
    drop(nats);
    out?;
    Ok(r)
}

async fn run(
    ctx: &CtxRc,
    r: &mut ScenarioResult,
    a: &Rc<Target>,
    b: &Rc<Target>,
    pids: &[u32; 3],
) -> anyhow::Result<()> {
    ctx.set_phase("S9 waiting for the two nodes to see each other");
    let deadline = now_ns() + 30_000_000_000;
    loop {
        let seen_a = metric(ctx, a.addr, "homehub_cluster_nodes").await?;
        let seen_b = metric(ctx, b.addr, "homehub_cluster_nodes").await?;
        if seen_a == 2.0 && seen_b == 2.0 {
            break;
        }
        if now_ns() > deadline {
            bail!("the nodes did not form a cluster within 30 s (A sees {seen_a}, B {seen_b})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // ---- relay, same node vs across nodes --------------------------------------------
    let pairs = ctx.set.cluster_pairs.max(1);
    ctx.set_phase("S9 connect+join relay");
    let mut same_txs = Vec::new();
    let specs = relay_specs(ctx, "s9s", pairs, None, &mut same_txs);
    let mut cross_txs = Vec::new();
    let mut all = specs;
    all.extend(relay_specs(ctx, "s9x", pairs, Some(b), &mut cross_txs));
    let fleet = ctx.fleet(all, ctx.set.concurrency).await;
    r.put("relay_fleet", fleet);
    r.put("relay_pairs_per_kind", pairs);
    ctx.wait_hub_quiet(20.0).await;
    // A warm-up of each kind (connection pools, NATS subscriptions, caches), not kept.
    let rate = ctx.set.cluster_rate;
    for txs in [&same_txs, &cross_txs] {
        relay_step(ctx, txs, rate, 1.0, "S9 warm-up").await;
    }
    let (mut sames, mut crosses) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        sames.push(relay_run(ctx, &same_txs, "same node", pids).await);
        crosses.push(relay_run(ctx, &cross_txs, "cross node", pids).await);
    }
    let runs: Vec<RelayRun> = sames.iter().chain(&crosses).cloned().collect();
    let same = median_by_p99(sames);
    let cross = median_by_p99(crosses);
    let lost = |s: &Step| s.expected.saturating_sub(s.delivered);
    let (sl, cl) = (&same.step.latency, &cross.step.latency);
    let both_clean = same.step.pass && cross.step.pass;
    r.check(
        "cross-node relay adds ≤ 0.5 ms p50 over same-node",
        format!(
            "at {} msgs/s: p50 {} across vs {} on one node (+{}), {} / {} lost",
            int(rate),
            ms(cl.p50_ms),
            ms(sl.p50_ms),
            ms(cl.p50_ms - sl.p50_ms),
            lost(&cross.step),
            lost(&same.step)
        ),
        Some(both_clean && cl.p50_ms - sl.p50_ms <= 0.5),
    );
    r.check(
        "cross-node relay adds ≤ 2 ms p99 over same-node",
        format!(
            "p99 {} across vs {} on one node (+{})",
            ms(cl.p99_ms),
            ms(sl.p99_ms),
            ms(cl.p99_ms - sl.p99_ms)
        ),
        Some(both_clean && cl.p99_ms - sl.p99_ms <= 2.0),
    );
    r.check(
        "hub CPU per relayed message, same node vs cross node (reported)",
        format!(
            "same node {} µs (A {} + B {} + NATS {}); cross node {} µs (A {} + B {} + NATS {})",
            same.cpu_us_per_msg_total,
            same.cpu_us_per_msg_a,
            same.cpu_us_per_msg_b,
            same.cpu_us_per_msg_nats,
            cross.cpu_us_per_msg_total,
            cross.cpu_us_per_msg_a,
            cross.cpu_us_per_msg_b,
            cross.cpu_us_per_msg_nats
        ),
        None,
    );
    r.put("relay_same_node", &same);
    r.put("relay_cross_node", &cross);
    r.put("relay_runs", runs);
    ctx.stop_all().await;

    // ---- a broadcast to subscribers on both nodes --------------------------------------
    ctx.sh.reset_phase();
    ctx.sh.events.borrow_mut().clear();
    let per_node = ctx.set.cluster_subscribers.max(1);
    let mut specs = Vec::with_capacity(2 * per_node + 1);
    let (push, push_rx) = mpsc::unbounded_channel();
    specs.push(Spec {
        idx: 2 * per_node,
        name: ctx.name("s9p", 0),
        topics: vec![format!("lock:{}", ctx.serial("s9", 0))],
        role: Role::Pusher { cmds: push_rx },
        reconnect: false,
        rcvbuf: None,
        intended_ns: None,
        stop: ctx.stop_rx(),
        target: None,
    });
    for i in 0..2 * per_node {
        specs.push(Spec {
            idx: i,
            name: ctx.name("s9b", i),
            topics: vec!["events".to_owned()],
            role: Role::Subscriber,
            reconnect: false,
            rcvbuf: None,
            intended_ns: None,
            stop: ctx.stop_rx(),
            target: if i % 2 == 1 { Some(b.clone()) } else { None },
        });
    }
    ctx.set_phase("S9 connect+join events on both nodes");
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    r.put("broadcast_fleet", fleet);
    r.put("subscribers_per_node", per_node);
    ctx.wait_hub_quiet(20.0).await;
    let sent_kind = "homehub_cluster_messages_sent_total{kind=\"broadcast\"}";
    let recv_kind = "homehub_cluster_messages_received_total{kind=\"broadcast\"}";
    let a_sent0 = metric(ctx, a.addr, sent_kind).await?;
    let b_recv0 = metric(ctx, b.addr, recv_kind).await?;
    let a_recv0 = metric(ctx, a.addr, recv_kind).await?;
    let events = ctx.set.cluster_events.max(1);
    let receivers = fleet.ok.saturating_sub(1);
    ctx.set_phase(format!("S9 {events} events to {receivers} subscribers"));
    for seq in 0..events {
        let _ = push.send((now_ns(), seq));
        // One event at a time: each fan-out completes before the next push.
        let deadline = now_ns() + 5_000_000_000;
        while ctx
            .sh
            .events
            .borrow()
            .get(seq as usize)
            .is_none_or(|e| (e.count as u64) < receivers)
            && now_ns() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let (mut last, mut delivered) = (Hist::default(), 0u64);
    for e in ctx.sh.events.borrow().iter() {
        delivered += e.count as u64;
        if e.count as u64 >= receivers {
            last.record(e.last_ns.saturating_sub(e.sent_ns));
        }
    }
    let last: Lat = last.summary();
    let a_sent = metric(ctx, a.addr, sent_kind).await? - a_sent0;
    let b_recv = metric(ctx, b.addr, recv_kind).await? - b_recv0;
    let a_recv = metric(ctx, a.addr, recv_kind).await? - a_recv0;
    let expected = events * receivers;
    r.check(
        "a broadcast crosses NATS once per interested node",
        format!(
            "{events} events to {receivers} subscribers (half on each node): node B received \
             {} over NATS, node A {} (its own, never echoed); node A published {} (each \
             event goes to `events` and to `events:<serial>`, which no node subscribes to, so \
             NATS forwards it nowhere); {delivered} of {expected} deliveries; push → last \
             delivery p50 {}",
            int(b_recv),
            int(a_recv),
            int(a_sent),
            ms(last.p50_ms)
        ),
        Some(
            b_recv == events as f64
                && a_recv == 0.0
                && a_sent == 2.0 * events as f64
                && delivered == expected,
        ),
    );
    r.put("broadcast_push_to_last", last);
    Ok(())
}
