//! S1 (idle joined sockets: memory per connection, idle CPU) and S7 (soak: heartbeats plus
//! 1,000 relays/s: heartbeat cost and memory growth).

use std::cell::RefCell;
use std::rc::Rc;

use tokio::sync::mpsc;

use super::{CtxRc, int, lock_spec, ms, pct};
use crate::pace;
use crate::report::ScenarioResult;
use crate::session::Role;
use crate::stats::{now_ns, round1};
use crate::sys;

pub async fn s1(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S1", "idle");
    let n = ctx.set.connections;
    ctx.start_hub("s1").await?;
    ctx.set_phase("S1 baseline");
    ctx.wait_hub_quiet(3.0).await;
    let rss0 = ctx.hub_rss_kib();
    let gen_rss0 = sys::rss_kib(std::process::id());
    ctx.sh.reset_phase();
    ctx.set_phase("S1 connect+join");
    let specs = (0..n).map(|i| lock_spec(ctx, "s1", "s1", i)).collect();
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    ctx.set_phase("S1 settle");
    ctx.wait_hub_quiet(20.0).await;
    let rss1 = ctx.hub_rss_kib();
    let gen_rss1 = sys::rss_kib(std::process::id());
    ctx.set_phase("S1 idle window");
    let hb0 = ctx.sh.c.heartbeats.get();
    let m = ctx.meter();
    pace::sleep_secs(ctx.set.idle_secs).await;
    let usage = m.finish();
    let hbs = ctx.sh.c.heartbeats.get() - hb0;
    let rss2 = ctx.hub_rss_kib();
    let open = ctx.sh.c.open.get();

    r.put("fleet", fleet);
    r.put("usage_idle_window", &usage);
    r.put("heartbeats_in_window", hbs);
    r.put("hub_rss_baseline_kib", rss0);
    r.put("hub_rss_joined_kib", rss1);
    r.put("hub_rss_after_window_kib", rss2);
    r.put("open_at_end", open);
    r.put(
        "generator_kib_per_connection",
        gen_rss0
            .zip(gen_rss1)
            .filter(|_| fleet.ok > 0)
            .map(|(a, b)| (b.saturating_sub(a) as f64 / fleet.ok as f64 * 100.0).round() / 100.0),
    );
    r.put("errors", ctx.sh.errors_snapshot());

    let per_conn = match (rss0, rss2) {
        (Some(a), Some(b)) if fleet.ok > 0 => Some(b.saturating_sub(a) as f64 / fleet.ok as f64),
        _ => None,
    };
    r.put(
        "hub_kib_per_connection",
        per_conn.map(|v| (v * 100.0).round() / 100.0),
    );
    r.check(
        "hub memory ≤ 8 KiB per connection above baseline",
        match (per_conn, rss0, rss2) {
            (Some(p), Some(a), Some(b)) => format!(
                "{p:.1} KiB/conn (RSS {:.1} → {:.1} MiB with {} sockets)",
                a as f64 / 1024.0,
                b as f64 / 1024.0,
                int(fleet.ok as f64)
            ),
            _ => "n/a (no process metrics)".to_owned(),
        },
        per_conn.map(|p| p <= 8.0),
    );
    r.check(
        "idle CPU ≤ 0.5 % of a core",
        format!(
            "{} over {:.0} s ({} heartbeats answered)",
            pct(usage.hub_cpu_pct),
            usage.secs,
            int(hbs as f64)
        ),
        usage
            .hub_cpu_pct
            .filter(|_| ctx.set.idle_secs >= ctx.set.heartbeat_secs)
            .map(|c| c <= 0.5),
    );
    if fleet.failed > 0 || open < fleet.ok {
        r.note(format!(
            "{} joins failed, {} of {} sockets still open at the end",
            fleet.failed, open, fleet.ok
        ));
    }
    if ctx.set.idle_secs < ctx.set.heartbeat_secs {
        r.note(format!(
            "the idle window ({:.0} s) is shorter than the heartbeat interval ({:.0} s): the CPU figure covers at most part of a heartbeat round and is not judged",
            ctx.set.idle_secs, ctx.set.heartbeat_secs
        ));
    }
    Ok(r)
}

pub async fn s7(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S7", "soak");
    let n = ctx.set.connections;
    let pairs = ctx.set.soak_pairs.min(n / 2);
    ctx.start_hub("s7").await?;
    ctx.sh.reset_phase();
    ctx.set_phase("S7 connect+join");
    let mut txs = Vec::new();
    let specs = (0..n)
        .map(|i| {
            let mut s = lock_spec(ctx, "s7", "s7", i);
            s.reconnect = true;
            if i < 2 * pairs {
                let (tx, rx) = mpsc::unbounded_channel();
                txs.push(tx);
                s.topics.push("relay".to_owned());
                s.role = Role::Relay {
                    peer: ctx.name("s7", i ^ 1).to_lowercase(),
                    cmds: rx,
                };
            }
            s
        })
        .collect();
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    ctx.set_phase("S7 settle");
    ctx.wait_hub_quiet(20.0).await;

    // Heartbeats alone.
    ctx.set_phase("S7 heartbeats only");
    let hb0 = ctx.sh.c.heartbeats.get();
    let m = ctx.meter();
    pace::sleep_secs(ctx.set.idle_secs).await;
    let hb_usage = m.finish();
    let hbs = ctx.sh.c.heartbeats.get() - hb0;

    // Heartbeats + relays.
    ctx.sh.reset_phase();
    ctx.set_phase(format!("S7 soak {} relays/s", int(ctx.set.soak_relay_rate)));
    let samples: Rc<RefCell<Vec<(f64, u64)>>> = Rc::default();
    let start = now_ns() + 2_000_000;
    let end = start + (ctx.set.soak_secs * 1e9) as u64;
    let sampler = {
        let (ctx, samples) = (ctx.clone(), samples.clone());
        tokio::task::spawn_local(async move {
            while now_ns() < end {
                if let Some(k) = ctx.hub_rss_kib() {
                    samples
                        .borrow_mut()
                        .push(((now_ns().saturating_sub(start)) as f64 / 1e9, k));
                }
                pace::sleep_secs(1.0).await;
            }
        })
    };
    let m = ctx.meter();
    let k = txs.len().max(1) as u64;
    let scheduled = pace::open_loop(ctx.set.soak_relay_rate, start, end, |i, t| {
        if let Some(tx) = txs.get((i % k) as usize) {
            let _ = tx.send(t);
        }
    })
    .await;
    let drain_until = now_ns() + 2_000_000_000;
    while ctx.sh.c.recv.get() < scheduled && now_ns() < drain_until {
        pace::sleep_secs(0.005).await;
    }
    let soak_usage = m.finish();
    let _ = sampler.await;
    let lat = ctx.sh.lat.borrow().summary();
    let delivered = ctx.sh.c.recv.get();
    let samples = samples.borrow().clone();

    // Memory growth: after the first 10 % of the soak (warm-up) to the end.
    let warm = ctx.set.soak_secs * 0.1;
    let rss_warm = samples.iter().find(|(t, _)| *t >= warm).map(|s| s.1);
    let rss_end = samples.last().map(|s| s.1);
    let growth = rss_warm
        .zip(rss_end)
        .map(|(a, b)| 100.0 * (b as f64 - a as f64) / a as f64);

    r.put("fleet", fleet);
    r.put("relay_pairs", pairs);
    r.put("usage_heartbeats_only", &hb_usage);
    r.put("heartbeats_in_window", hbs);
    r.put("usage_soak", &soak_usage);
    r.put("relays_scheduled", scheduled);
    r.put("relays_delivered", delivered);
    r.put("relay_latency", lat);
    r.put("rss_samples_s_kib", &samples);
    r.put("rss_growth_pct", growth.map(round1));
    r.put("closes", ctx.sh.c.closes.get());
    r.put("errors", ctx.sh.errors_snapshot());

    r.check(
        "heartbeats alone cost ≤ 0.5 % of a core",
        format!(
            "{} over {:.0} s ({} heartbeats from {} sockets)",
            pct(hb_usage.hub_cpu_pct),
            hb_usage.secs,
            int(hbs as f64),
            int(fleet.ok as f64)
        ),
        hb_usage
            .hub_cpu_pct
            .filter(|_| ctx.set.idle_secs >= ctx.set.heartbeat_secs)
            .map(|c| c <= 0.5),
    );
    r.check(
        "memory growth ≤ 1 %",
        match (rss_warm, rss_end, growth) {
            (Some(a), Some(b), Some(g)) => format!(
                "{g:+.2} % ({:.1} → {:.1} MiB over {:.0} s of soak)",
                a as f64 / 1024.0,
                b as f64 / 1024.0,
                ctx.set.soak_secs * 0.9
            ),
            _ => "n/a (no process metrics)".to_owned(),
        },
        growth.map(|g| g <= 1.0),
    );
    r.check(
        "1,000 relays/s with 0 loss (soak)",
        format!(
            "{} of {} delivered, p50 {}, p99 {}, hub CPU {}",
            int(delivered as f64),
            int(scheduled as f64),
            ms(lat.p50_ms),
            ms(lat.p99_ms),
            pct(soak_usage.hub_cpu_pct)
        ),
        Some(delivered >= scheduled && ctx.sh.c.replies_err.get() == 0),
    );
    if ctx.set.soak_secs < 1800.0 {
        r.note(format!(
            "soak ran {:.0} s, not the 30 min of the issue (use --soak-secs 1800)",
            ctx.set.soak_secs
        ));
    }
    Ok(r)
}
