//! S2 (join storm against known locks) and S3 (first-seen locks): each join is a new
//! device doing connect → upgrade → `phx_join` on `lock:<serial>` → reply, and staying
//! connected. Two passes each: closed loop (`--concurrency` in flight) for the maximum
//! rate, then open loop at the target rate for connect-to-reply latency measured from
//! the intended start.

use super::{CtxRc, int, lock_spec, ms, pct};
use crate::ctx::{FleetOut, Usage};
use crate::report::ScenarioResult;
use crate::stats::Lat;
use crate::sys::{self, ListenStats};

struct Pass {
    fleet: FleetOut,
    listen: ListenStats,
    latency: Lat,
    usage: Usage,
    errors: std::collections::BTreeMap<String, u64>,
}

async fn pass(
    ctx: &CtxRc,
    label: &str,
    name_tag: &str,
    serial_tag: &str,
    open_rate: Option<f64>,
) -> Pass {
    let n = ctx.set.connections;
    ctx.sh.reset_phase();
    ctx.set_phase(label.to_owned());
    let specs = (0..n)
        .map(|i| lock_spec(ctx, name_tag, serial_tag, i))
        .collect();
    let m = ctx.meter();
    let l0 = sys::listen_stats();
    let fleet = match open_rate {
        Some(rate) => ctx.fleet_open_loop(specs, rate).await,
        None => ctx.fleet(specs, ctx.set.concurrency).await,
    };
    let usage = m.finish();
    let listen = sys::listen_stats().since(&l0);
    let latency = ctx.sh.join_lat.borrow().summary();
    let errors = ctx.sh.errors_snapshot();
    ctx.set_phase(format!("{label}: closing"));
    ctx.stop_all().await;
    ctx.wait_hub_quiet(20.0).await;
    Pass {
        fleet,
        listen,
        latency,
        usage,
        errors,
    }
}

fn put_pass(r: &mut ScenarioResult, key: &str, p: &Pass) {
    r.put(
        key,
        serde_json::json!({
            "fleet": p.fleet, "latency": p.latency, "usage": p.usage, "errors": p.errors,
            "kernel_listen_queue": p.listen,
        }),
    );
}

pub async fn s2(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S2", "join storm, known locks");
    ctx.start_hub("s2").await?;
    let warm = pass(ctx, "S2 warm-up (creating locks)", "s2w", "s2", None).await;
    let max = pass(ctx, "S2 closed loop", "s2m", "s2", None).await;
    let rate = ctx.set.join_rate;
    let open = pass(
        ctx,
        &format!("S2 open loop {}/s", int(rate)),
        "s2o",
        "s2",
        Some(rate),
    )
    .await;
    put_pass(&mut r, "warmup", &warm);
    put_pass(&mut r, "closed_loop", &max);
    put_pass(&mut r, "open_loop", &open);
    r.put("open_loop_rate", rate);
    r.put("concurrency", ctx.set.concurrency);
    judge(&mut r, &max, &open, rate, 15_000.0, 50.0);
    if warm.fleet.failed > 0 {
        r.note(format!("{} warm-up joins failed", warm.fleet.failed));
    }
    Ok(r)
}

pub async fn s3(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S3", "first-seen locks");
    ctx.start_hub("s3").await?;
    let max = pass(ctx, "S3 closed loop (new locks)", "s3m", "s3m", None).await;
    let rate = ctx.set.first_seen_rate;
    let open = pass(
        ctx,
        &format!("S3 open loop {}/s (new locks)", int(rate)),
        "s3o",
        "s3o",
        Some(rate),
    )
    .await;
    put_pass(&mut r, "closed_loop", &max);
    put_pass(&mut r, "open_loop", &open);
    r.put("open_loop_rate", rate);
    r.put("concurrency", ctx.set.concurrency);
    judge(&mut r, &max, &open, rate, 5_000.0, 25.0);
    Ok(r)
}

fn judge(r: &mut ScenarioResult, max: &Pass, open: &Pass, rate: f64, min_rate: f64, p99: f64) {
    r.check(
        &format!("≥ {} joins/s", int(min_rate)),
        format!(
            "{} joins/s closed loop (hub CPU {}); {} joins/s achieved open loop at {}/s",
            int(max.fleet.per_sec),
            pct(max.usage.hub_cpu_pct),
            int(open.fleet.per_sec),
            int(rate)
        ),
        Some(max.fleet.per_sec >= min_rate),
    );
    r.check(
        &format!("p99 connect-to-reply ≤ {p99:.0} ms"),
        format!(
            "p99 {} (p50 {}, max {}) open loop at {}/s",
            ms(open.latency.p99_ms),
            ms(open.latency.p50_ms),
            ms(open.latency.max_ms),
            int(rate)
        ),
        Some(open.latency.count > 0 && open.latency.p99_ms <= p99),
    );
    let failures = max.fleet.failed + open.fleet.failed;
    if min_rate >= 15_000.0 {
        r.check(
            "0 failures",
            format!(
                "{failures} failed of {}",
                int((2 * (max.fleet.ok + max.fleet.failed)) as f64)
            ),
            Some(failures == 0),
        );
    } else if failures > 0 {
        r.note(format!("{failures} joins failed"));
    }
    for (name, p) in [("closed loop", max), ("open loop", open)] {
        if p.listen.listen_overflows + p.listen.listen_drops > 0 {
            r.note(format!(
                "{name}: the hub's accept queue overflowed ({} overflows, {} SYNs dropped): those clients waited for a SYN retransmit (1 s)",
                p.listen.listen_overflows, p.listen.listen_drops
            ));
        }
    }
    for (k, v) in max.errors.iter().chain(open.errors.iter()) {
        r.note(format!("error: {k} × {v}"));
    }
}
